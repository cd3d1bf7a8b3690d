"""The torch-free stages of generation, one file each, in the order the data flows:
preprocess -> tokenizer / prompts -> splice -> backend (prefill, decode) -> decode_loop
(sampling, streaming) -> result. Every backend, the torch reference included, runs them."""
