"""The on-device runtime (torch-free): bundle loading, backends, sampling, the CLI.

Nothing here imports torch or transformers; the base install (numpy, pillow,
onnxruntime, tokenizers, safetensors) is all it needs. The CLI reaches the
torch reference and the exporter only through lazy imports of the
``mobilevlm`` modules that define them, so it still starts without torch.
"""
