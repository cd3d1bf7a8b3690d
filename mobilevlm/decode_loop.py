"""The generation loop every backend shares: prompt -> splice -> prefill -> decode -> text.

A backend (the torch reference, ONNX Runtime, llama.cpp) only has to encode
an image, prefill a prompt (token ids with the image embeddings at the
placeholder) and decode one token at a time while keeping its own KV cache;
prompt rendering, tokenization, token choice
(:class:`~mobilevlm.sampling.Sampler`), stop handling and streaming
(:class:`~mobilevlm.streaming.TextStream`) happen here, once, in numpy. So
the backends cannot differ in behaviour, only in numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from mobilevlm.config import ModelConfig
from mobilevlm.errors import ContextOverflowError, PromptError
from mobilevlm.preprocess import ImageInput
from mobilevlm.prompts import Turn, get_template
from mobilevlm.result import GenerationResult, GenerationStats
from mobilevlm.sampling import GenerationConfig, Sampler
from mobilevlm.streaming import TextStream
from mobilevlm.tokenizer import IMAGE_TOKEN_ID, Tokenizer


class LanguageBackend(Protocol):
    config: ModelConfig
    tokenizer: Tokenizer | None

    @property
    def context_length(self) -> int:
        """Positions the KV cache holds."""

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """(num_image_tokens, hidden) float32 image embeddings."""

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        """Make the KV cache hold exactly this prompt (IMAGE_TOKEN_ID marks where
        ``image_embeds`` go); logits (vocab,) of its last position. A backend may keep a
        cached prefix that matches. The array may be reused by the next call."""

    def decode(self, token: int) -> np.ndarray:
        """Append one token; logits (vocab,) of its position (reused by the next call)."""


class GeneratingBackend:
    """The ``generate`` method every loaded model offers, over its backend methods."""

    def generate(
        self,
        image: ImageInput | None,
        prompt: str,
        config: GenerationConfig | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (or text only when ``image`` is None);
        ``on_text`` receives each piece of the answer as it is produced."""
        return generate(self, image, prompt, config or GenerationConfig(), on_text)


class EmbeddingBackend(GeneratingBackend):
    """A backend whose LLM takes input embeddings: it prefills the spliced prompt from an
    empty cache. Subclasses provide ``embed_tokens``, ``reset`` and ``prefill``."""

    def embed_tokens(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), hidden) float32 input embeddings."""
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the KV cache."""
        raise NotImplementedError

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (seq, hidden) to the cache; logits (vocab,) of the last position."""
        raise NotImplementedError

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        self.reset()
        return self.prefill(splice(input_ids, image_embeds, self.embed_tokens))


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def prompt_ids(
    config: ModelConfig, tokenizer: Tokenizer | None, question: str, with_image: bool = True
) -> list[int]:
    """Token ids of a one-turn prompt in the model's template (IMAGE_TOKEN_ID for the image)."""
    if tokenizer is None:
        raise PromptError("this model has no tokenizer")
    text = get_template(config.template).render(
        [Turn(question)], system=config.system_prompt, with_image=with_image
    )
    return tokenizer.encode_prompt(text)


def image_slot(input_ids: Sequence[int], image_embeds: np.ndarray | None) -> int | None:
    """Index of the one image placeholder in ``input_ids`` (None when there is no image)."""
    slots = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_ID]
    if image_embeds is None:
        if slots:
            raise PromptError("the prompt has an image placeholder but no image was given")
        return None
    if len(slots) != 1:
        raise PromptError(f"expected exactly one image placeholder, found {len(slots)}")
    return slots[0]


def splice(
    input_ids: Sequence[int],
    image_embeds: np.ndarray | None,
    embed_tokens: Callable[[Sequence[int]], np.ndarray],
) -> np.ndarray:
    """(L, hidden) LLM input: token embeddings with ``image_embeds`` where IMAGE_TOKEN_ID is."""
    ids = list(input_ids)
    at = image_slot(ids, image_embeds)
    if at is None:
        return embed_tokens(ids)
    parts = [embed_tokens(ids[:at]), image_embeds.astype(np.float32), embed_tokens(ids[at + 1 :])]
    return np.concatenate(parts, axis=0)


def stop_token_ids(
    config: ModelConfig, tokenizer: Tokenizer, stop_strings: Sequence[str]
) -> set[int]:
    """EOS ids of the LLM plus stop strings that are single tokens (e.g. ``<|im_end|>``)."""
    ids = set(config.llm.eos_token_ids)
    for s in stop_strings:
        token = tokenizer.token_to_id(s)
        if token is not None:
            ids.add(token)
    return ids


def generate(
    backend: LanguageBackend,
    image: ImageInput | None,
    prompt: str,
    config: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer one prompt; ``on_text`` receives each final piece of text as it is produced."""
    start = time.perf_counter()
    stats = GenerationStats()
    model_config, tokenizer = backend.config, backend.tokenizer
    input_ids = prompt_ids(model_config, tokenizer, prompt, with_image=image is not None)
    text_ids = [t for t in input_ids if t != IMAGE_TOKEN_ID]
    stats.prompt_tokens = len(text_ids)

    image_embeds = None
    if image is not None:
        t0 = time.perf_counter()
        image_embeds = backend.encode_image(image)
        stats.image_tokens = image_embeds.shape[0]
        stats.image_encode_ms = _ms_since(t0)

    context = backend.context_length
    if stats.prefill_tokens >= context:
        raise ContextOverflowError(
            f"the prompt needs {stats.prefill_tokens} positions "
            f"({stats.image_tokens} image + {stats.prompt_tokens} text); "
            f"the context holds {context}"
        )

    stop_strings = get_template(model_config.template).stop_strings + config.stop_strings
    stops = stop_token_ids(model_config, tokenizer, stop_strings)
    sampler = Sampler(config, model_config.llm.vocab_size, text_ids)
    stream = TextStream(tokenizer, stop_strings)

    t0 = time.perf_counter()
    logits = backend.prefill_prompt(input_ids, image_embeds)
    stats.prefill_ms = _ms_since(t0)

    generated: list[int] = []
    position = stats.prefill_tokens
    t0 = time.perf_counter()
    while True:
        if len(generated) >= config.max_new_tokens:
            stats.stop_reason = "max_new_tokens"
            break
        if position >= context:
            stats.stop_reason = "context_full"
            break
        if generated:  # the first token comes from the prefill's logits
            logits = backend.decode(generated[-1])
            position += 1
        token = sampler(logits)
        generated.append(token)
        if token in stops:
            stats.stop_reason = "eos"
            break
        piece = stream.push(token)
        if piece and on_text:
            on_text(piece)
        if stream.stopped:
            stats.stop_reason = "stop_string"
            break
    stats.decode_ms = _ms_since(t0) if len(generated) > 1 else 0.0
    tail = stream.finish()
    if tail and on_text:
        on_text(tail)

    stats.generated_tokens = len(generated)
    stats.total_ms = _ms_since(start)
    return GenerationResult(text=stream.text, token_ids=generated, stats=stats)
