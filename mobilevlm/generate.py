"""Generation with the torch reference: encode, splice, prefill, then decode token by token.

Token choice is :class:`mobilevlm.sampling.Sampler` (numpy) and text release
is :class:`mobilevlm.streaming.TextStream`, the same pieces every runtime
backend uses, so the reference defines the behaviour the backends must match.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mobilevlm.errors import ContextOverflowError
from mobilevlm.preprocess import ImageInput
from mobilevlm.prompts import get_template
from mobilevlm.result import GenerationResult, GenerationStats
from mobilevlm.sampling import GenerationConfig, Sampler
from mobilevlm.streaming import TextStream
from mobilevlm.tokenizer import IMAGE_TOKEN_ID

if TYPE_CHECKING:
    from mobilevlm.model import MobileVLM


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def stop_token_ids(model: MobileVLM, stop_strings: tuple[str, ...]) -> set[int]:
    """EOS ids of the LLM plus stop strings that are single tokens (e.g. ``<|im_end|>``)."""
    ids = set(model.config.llm.eos_token_ids)
    for s in stop_strings:
        token = model.tokenizer.token_to_id(s)
        if token is not None:
            ids.add(token)
    return ids


@torch.inference_mode()
def generate(
    model: MobileVLM,
    image: ImageInput | None,
    prompt: str,
    config: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer one prompt; ``on_text`` receives each final piece of text as it is produced."""
    start = time.perf_counter()
    stats = GenerationStats()
    input_ids = model.prompt_ids(prompt, with_image=image is not None)
    text_ids = [t for t in input_ids if t != IMAGE_TOKEN_ID]
    stats.prompt_tokens = len(text_ids)

    image_embeds = None
    if image is not None:
        t0 = time.perf_counter()
        image_embeds = model.encode_images(model.pixel_values(image))[0]
        stats.image_tokens = image_embeds.shape[0]
        stats.image_encode_ms = _ms_since(t0)

    context = model.config.llm.max_position_embeddings
    if stats.prefill_tokens >= context:
        raise ContextOverflowError(
            f"the prompt needs {stats.prefill_tokens} positions "
            f"({stats.image_tokens} image + {stats.prompt_tokens} text); "
            f"the context holds {context}"
        )

    stop_strings = get_template(model.config.template).stop_strings + config.stop_strings
    stops = stop_token_ids(model, stop_strings)
    sampler = Sampler(config, model.config.llm.vocab_size, text_ids)
    stream = TextStream(model.tokenizer, stop_strings)
    lm = model.language_model

    t0 = time.perf_counter()
    out = lm(inputs_embeds=model.embed(input_ids, image_embeds), use_cache=True)
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
            out = lm(
                input_ids=torch.tensor([[generated[-1]]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            position += 1
        token = sampler(out.logits[0, -1].float().numpy())
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
