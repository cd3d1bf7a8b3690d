"""Checkpoint -> ONNX / GGUF bundles (torch side)."""
