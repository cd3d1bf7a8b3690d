"""The LLM: a LLaMA-architecture causal LM (transformers' LlamaForCausalLM)."""

from __future__ import annotations

from mobilevlm.config import LLMConfig


def build_language_model(config: LLMConfig):
    """A randomly initialised ``LlamaForCausalLM`` of the given geometry (weights load later)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**config.to_dict()))
