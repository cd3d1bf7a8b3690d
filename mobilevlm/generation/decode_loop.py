"""The decode loop every backend shares: prompt ids -> prefill -> decode -> sample -> text.

A backend (:mod:`mobilevlm.generation.backend`) only runs the model; prompt
rendering, tokenization, token choice (:class:`~mobilevlm.generation.sampling.Sampler`),
stop handling and streaming (:class:`~mobilevlm.generation.streaming.TextStream`)
happen here, once, in numpy. So the backends cannot differ in behaviour, only in numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence

import numpy as np

from mobilevlm.config import ModelConfig
from mobilevlm.errors import ContextOverflowError, PromptError
from mobilevlm.generation.backend import LanguageBackend
from mobilevlm.generation.preprocess import ImageInput
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.generation.result import GenerationResult, GenerationStats
from mobilevlm.generation.sampling import GenerationConfig, Sampler
from mobilevlm.generation.streaming import TextStream
from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID, Tokenizer

Prompt = str | Sequence[Turn]  # one question, or a conversation ending in a user turn
Cancel = Callable[[], bool] | None  # polled before every token; True stops generation


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


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def prompt_ids(
    config: ModelConfig, tokenizer: Tokenizer | None, question: str, with_image: bool = True
) -> list[int]:
    """Token ids of a one-turn prompt in the model's template (IMAGE_TOKEN_ID for the image)."""
    return conversation_ids(config, tokenizer, question, with_image)


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
    image_encode_ms: float = 0.0,
) -> Generator[str, None, GenerationResult]:
    """Answer ``prompt`` about ``image`` piece by piece: yields each final piece of text as
    it is produced and returns the :class:`GenerationResult`. ``image_embeds`` (already
    encoded) stands in for ``image``; ``cancel`` stops it after the current token;
    ``input_ids`` (the prompt already tokenized, as a conversation keeps it) stand in for
    ``prompt``; ``image_encode_ms`` is the time ``image_embeds`` took to compute (0 when
    they came from a cache), counted in the stats and the total."""
    start = time.perf_counter() - image_encode_ms / 1000.0
    stats = GenerationStats(image_encode_ms=image_encode_ms)
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
    stats.cached_tokens = stats.prefill_tokens - backend.last_prefill

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
