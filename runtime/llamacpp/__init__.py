"""The llama.cpp engine (llama-cpp-python): the GGUF LLM, fed the ONNX vision graph's
embeddings (hybrid) or llama.cpp's own mtmd with the mmproj."""
