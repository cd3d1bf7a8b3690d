"""The peers the harness measures the runtime against, on the same files and prompts:
transformers' eager generate on the reference's weights (torch) and llama-cpp-python's own
multimodal chat."""
