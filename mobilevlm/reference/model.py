"""The multimodal model: vision tower -> projector -> image embeddings spliced into the LLM input.

Parameter names of :class:`MobileVLM` are the project's own checkpoint names:
``vision_tower.*``, ``projector.*``, ``language_model.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mobilevlm.config import ModelConfig
from mobilevlm.errors import PromptError
from mobilevlm.generation.decode_loop import prompt_ids
from mobilevlm.generation.preprocess import ImageInput, preprocess
from mobilevlm.generation.result import GenerationResult
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID, Tokenizer
from mobilevlm.reference.backend import generate
from mobilevlm.reference.language_model import build_language_model
from mobilevlm.reference.projectors import build_projector
from mobilevlm.reference.vision_tower import build_vision_tower


class MobileVLM(nn.Module):
    """A loaded vision-language model with its tokenizer: what checkpoint loading returns."""

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.vision_tower = build_vision_tower(config.vision)
        self.projector = build_projector(config.projector)
        self.language_model = build_language_model(config.llm)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.language_model.parameters()).dtype

    def pixel_values(self, image: ImageInput) -> torch.Tensor:
        """(1, 3, S, S) pixel values of one image, in the model's dtype."""
        return torch.from_numpy(preprocess(image, self.config.preprocess))[None].to(self.dtype)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, num_image_tokens, llm_hidden) image embeddings."""
        return self.projector(self.vision_tower(pixel_values))

    def embed(self, input_ids: Sequence[int], image_embeds: torch.Tensor | None) -> torch.Tensor:
        """LLM input embeddings (1, L, hidden) with ``image_embeds`` (M, hidden) replacing the
        single IMAGE_TOKEN_ID of ``input_ids``; L = len(input_ids) - 1 + M."""
        ids = list(input_ids)
        slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
        table = self.language_model.get_input_embeddings()
        if image_embeds is None:
            if slots:
                raise PromptError("the prompt has an image placeholder but no image was given")
            return table(torch.tensor([ids]))
        if len(slots) != 1:
            raise PromptError(f"expected exactly one image placeholder, found {len(slots)}")
        at = slots[0]
        before = table(torch.tensor([ids[:at]], dtype=torch.long))
        after = table(torch.tensor([ids[at + 1 :]], dtype=torch.long))
        return torch.cat([before, image_embeds[None].to(before.dtype), after], dim=1)

    def forward(
        self, input_ids: Sequence[int], pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (1, L, vocab) of a prompt with at most one image (teacher forcing)."""
        image_embeds = None if pixel_values is None else self.encode_images(pixel_values)[0]
        embeds = self.embed(input_ids, image_embeds)
        return self.language_model(inputs_embeds=embeds, use_cache=False).logits

    def prompt_ids(self, question: str, with_image: bool = True) -> list[int]:
        """Token ids of a one-turn prompt in the model's template."""
        return prompt_ids(self.config, self.tokenizer, question, with_image)

    def generate(
        self,
        image: ImageInput | None,
        prompt: str,
        config: GenerationConfig | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (or text only when ``image`` is None)."""
        return generate(self, image, prompt, config or GenerationConfig(), on_text=on_text)
