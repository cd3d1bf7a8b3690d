"""The benchmark and evaluation harness: variants of a bundle and their peers (transformers,
llama-cpp-python, llama.cpp's mtmd) measured side by side, each in a fresh process. It sits
above the runtime and imports it; the runtime never imports it."""
