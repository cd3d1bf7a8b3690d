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

import hashlib
import time
from collections.abc import Callable, Generator, Sequence
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
        prompt: Prompt,
        config: GenerationConfig | None = None,
        on_text: Callable[[str], None] | None = None,
        **options,
    ) -> GenerationResult:
        """Answer ``prompt`` (a question, or a conversation ending in a user turn) about
        ``image`` (None: text only); ``on_text`` receives each piece of the answer as it is
        produced. ``options``: those of :func:`stream`."""
        return generate(self, image, prompt, config or GenerationConfig(), on_text, **options)


class CachingBackend(GeneratingBackend):
    """A backend that keeps its KV cache between prompts: a prompt that begins with what the
    cache holds (the last prompt and answer, as the next turn of a conversation does) runs
    only its new positions. Image rows are identified by a hash of their embeddings.
    Subclasses provide ``_truncate(length)``, ``_run_tokens(ids)``,
    ``_run_embeddings(rows)`` (each returning the last position's logits) and ``_step``."""

    _history: list[int | str] | None = None  # one entry a cached position; None: unknown
    last_prefill = 0  # positions the last prompt actually ran

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        ids = list(input_ids)
        at = image_slot(ids, image_embeds)
        items: list[int | str] = list(ids)
        segments = [("tokens", 0, len(items))]
        if at is not None:
            n = len(image_embeds)
            key = hashlib.sha1(np.ascontiguousarray(image_embeds).tobytes()).hexdigest()
            items[at : at + 1] = [f"image:{key}:{i}" for i in range(n)]
            segments = [("tokens", 0, at), ("image", at, at + n), ("tokens", at + n, len(items))]
        keep = 0
        for old, new in zip(self._history or (), items[:-1], strict=False):  # the last runs
            if old != new:
                break
            keep += 1
        self._truncate(keep)
        self._history = items[:keep]
        self.last_prefill = len(items) - keep
        logits = None
        for kind, start, end in segments:
            begin = max(keep, start)
            if begin >= end:
                continue
            if kind == "image":
                logits = self._run_embeddings(image_embeds[begin - start : end - start])
            else:
                logits = self._run_tokens(items[begin:end])
            self._history = items[:end]
        return logits

    def decode(self, token: int) -> np.ndarray:
        logits = self._step(token)
        if self._history is not None:
            self._history.append(token)
        return logits

    def reset(self) -> None:
        """Empty the KV cache."""
        self._truncate(0)
        self._history = []

    def _truncate(self, length: int) -> None:
        raise NotImplementedError

    def _run_tokens(self, ids: list) -> np.ndarray:
        raise NotImplementedError

    def _run_embeddings(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step(self, token: int) -> np.ndarray:
        raise NotImplementedError


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
    return conversation_ids(config, tokenizer, question, with_image)


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


Prompt = str | Sequence[Turn]  # one question, or a conversation ending in a user turn
Cancel = Callable[[], bool] | None  # polled before every token; True stops generation


def conversation_ids(
    config: ModelConfig,
    tokenizer: Tokenizer | None,
    prompt: Prompt,
    with_image: bool = True,
    system: str | None = None,
) -> list[int]:
    """Token ids of a question or a conversation in the model's template."""
    if isinstance(prompt, str):
        prompt = [Turn(prompt)]
    if tokenizer is None:
        raise PromptError("this model has no tokenizer")
    system = config.system_prompt if system is None else system
    text = get_template(config.template).render(prompt, system=system, with_image=with_image)
    return tokenizer.encode_prompt(text)


def stream(
    backend: LanguageBackend,
    image: ImageInput | None,
    prompt: Prompt,
    config: GenerationConfig,
    *,
    image_embeds: np.ndarray | None = None,
    system: str | None = None,
    cancel: Cancel = None,
    input_ids: Sequence[int] | None = None,
) -> Generator[str, None, GenerationResult]:
    """Answer ``prompt`` about ``image`` piece by piece: yields each final piece of text as
    it is produced and returns the :class:`GenerationResult`. ``image_embeds`` (already
    encoded) stands in for ``image``; ``cancel`` stops it after the current token;
    ``input_ids`` (the prompt already tokenized, as a conversation keeps it) stand in for
    ``prompt``."""
    start = time.perf_counter()
    stats = GenerationStats()
    model_config, tokenizer = backend.config, backend.tokenizer
    with_image = image is not None or image_embeds is not None
    if input_ids is None:
        input_ids = conversation_ids(model_config, tokenizer, prompt, with_image, system)
    input_ids = list(input_ids)
    text_ids = [t for t in input_ids if t != IMAGE_TOKEN_ID]
    stats.prompt_tokens = len(text_ids)

    if image_embeds is None and image is not None:
        t0 = time.perf_counter()
        image_embeds = backend.encode_image(image)
        stats.image_encode_ms = _ms_since(t0)
    if image_embeds is not None:
        stats.image_tokens = image_embeds.shape[0]

    context = backend.context_length
    if stats.prefill_tokens >= context:
        raise ContextOverflowError(
            f"the prompt needs {stats.prefill_tokens} positions "
            f"({stats.image_tokens} image + {stats.prompt_tokens} text); "
            f"the context holds {context}"
        )

    stop_strings = get_template(model_config.template).stop_strings + config.stop_strings
    stops = stop_token_ids(model_config, tokenizer, stop_strings)
    banned = sorted(stops) if config.ignore_eos else []
    if config.ignore_eos:
        stops, stop_strings = set(), ()
    sampler = Sampler(config, model_config.llm.vocab_size, text_ids)
    text = TextStream(tokenizer, stop_strings)

    t0 = time.perf_counter()
    logits = backend.prefill_prompt(input_ids, image_embeds)
    stats.prefill_ms = _ms_since(t0)
    stats.cached_tokens = stats.prefill_tokens - getattr(
        backend, "last_prefill", stats.prefill_tokens
    )

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
        if cancel is not None and cancel():
            stats.stop_reason = "cancelled"
            break
        if generated:  # the first token comes from the prefill's logits
            logits = backend.decode(generated[-1])
            position += 1
        if banned:
            logits = logits.copy()
            logits[banned] = -np.inf
        token = sampler(logits)
        generated.append(token)
        if token in stops:
            stats.stop_reason = "eos"
            break
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            stats.stop_reason = "stop_string"
            break
    stats.decode_ms = _ms_since(t0) if len(generated) > 1 else 0.0
    tail = text.finish()
    if tail:
        yield tail

    stats.generated_tokens = len(generated)
    stats.total_ms = _ms_since(start)
    return GenerationResult(text=text.text, token_ids=generated, stats=stats)


def generate(
    backend: LanguageBackend,
    image: ImageInput | None,
    prompt: Prompt,
    config: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
    **options,
) -> GenerationResult:
    """Answer ``prompt``; ``on_text`` receives each final piece of text as it is produced.
    ``options``: those of :func:`stream`."""
    pieces = stream(backend, image, prompt, config, **options)
    while True:
        try:
            piece = next(pieces)
        except StopIteration as done:
            return done.value
        if on_text:
            on_text(piece)
