"""The transformers peer: ``LlamaForCausalLM.generate`` with eager attention, on the weights of
the torch reference, fed the same image embeddings and prompt as every other variant.

It is what a user who never exported anything would run, so the bench measures
the runtime against it. Its stats come from the generation streamer's clock:
the first token marks the end of the prefill, the last one the end of decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import transformers  # noqa: F401  (imported with torch, before a load is timed)

from mobilevlm.generation.decode_loop import Prompt, conversation_ids, stop_token_ids
from mobilevlm.generation.preprocess import ImageInput
from mobilevlm.generation.prompts import get_template
from mobilevlm.generation.result import GenerationResult, GenerationStats
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.reference.model import MobileVLM


class _Clock:
    """A transformers streamer that only notes when each generated token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if value.numel():  # the first call carries the (empty) prompt ids
            self.times.append(time.perf_counter())
            self.tokens += value.reshape(-1).tolist()

    def end(self) -> None:
        pass


class TransformersEager:
    def __init__(self, model: MobileVLM) -> None:
        self.model = model.eval()
        self.config = model.config
        self.tokenizer = model.tokenizer
        model.language_model.set_attn_implementation("eager")

    def reset(self) -> None:
        """Nothing is kept between calls: generate starts from an empty cache."""

    @torch.inference_mode()
    def generate(
        self,
        image: ImageInput | None,
        prompt: Prompt,
        config: GenerationConfig | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        config = config or GenerationConfig()
        model, stats = self.model, GenerationStats()
        start = time.perf_counter()
        ids = conversation_ids(self.config, self.tokenizer, prompt, image is not None)
        image_embeds = None
        if image is not None:
            image_embeds = model.encode_images(model.pixel_values(image))[0]
            stats.image_encode_ms = (time.perf_counter() - start) * 1000.0
            stats.image_tokens = image_embeds.shape[0]
        stats.prompt_tokens = len(ids) - (image is not None)
        embeds = model.embed(ids, image_embeds)
        template = get_template(self.config.template)
        stops = sorted(stop_token_ids(self.config, self.tokenizer, template.stop_strings))
        clock = _Clock()
        t0 = time.perf_counter()
        model.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.max_new_tokens if config.ignore_eos else 0,
            do_sample=not config.greedy,
            temperature=config.temperature or None,
            top_k=config.top_k or None,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
            eos_token_id=stops,
            pad_token_id=stops[0],
            streamer=clock,
        )
        tokens = clock.tokens
        if clock.times:
            stats.prefill_ms = (clock.times[0] - t0) * 1000.0
            stats.decode_ms = (clock.times[-1] - clock.times[0]) * 1000.0
        stats.generated_tokens = len(tokens)
        answer = tokens[:-1] if tokens and tokens[-1] in stops else tokens
        stats.stop_reason = "eos" if len(answer) < len(tokens) else "max_new_tokens"
        text = self.tokenizer.decode(answer)
        if on_text:
            on_text(text)
        stats.total_ms = (time.perf_counter() - start) * 1000.0
        return GenerationResult(text=text, token_ids=tokens, stats=stats)
