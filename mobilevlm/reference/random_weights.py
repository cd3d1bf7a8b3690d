"""Random weights at any geometry: seeded noise for a model of the real architecture.

The scale and vision benches measure MobileVLM_V2-1.7B's geometry without its
weights (there is no model hub here), and the tests build tiny models; both
need weights that keep activations at a sane scale and a real tokenizer.
"""

from __future__ import annotations

import torch

from mobilevlm.generation.tokenizer import Tokenizer

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: What color is the circle? What shape is the red object?",
    "How many shapes are there? Where is the blue square? Is there a green star?",
    "red green blue yellow orange purple pink brown circle square triangle star hexagon",
    "top left, top, top right, left, center, right, bottom left, bottom, bottom right",
    "yes no zero one two three four five 0 1 2 3 4 5 6 7 8 9 You are a helpful assistant.",
]


def tiny_tokenizer(vocab_size: int = 320, add_bos: bool = True) -> Tokenizer:
    """A byte-level BPE trained in milliseconds on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return Tokenizer(tok, "<tiny-random>")


def random_init_(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Seeded noise in every parameter; norm scales stay near one so activations keep scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = "Norm" in type(module).__name__
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=gen) * std
                base = 1.0 if is_norm and name == "weight" else 0.0
                param.copy_(noise + base)
    return model
