"""The ONNX Runtime engine: vision graph, embedding table, decoder with its KV cache, and
the execution providers that run them."""
