"""The PyTorch reference as a :class:`~mobilevlm.decode_loop.LanguageBackend`.

Generation itself is :func:`mobilevlm.decode_loop.generate`, shared with
every runtime backend, so the reference defines the behaviour the backends
must match; this adapter only runs the modules and keeps transformers' cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mobilevlm import decode_loop
from mobilevlm.preprocess import ImageInput
from mobilevlm.result import GenerationResult
from mobilevlm.sampling import GenerationConfig

if TYPE_CHECKING:
    from mobilevlm.model import MobileVLM


class TorchBackend(decode_loop.EmbeddingBackend):
    def __init__(self, model: MobileVLM) -> None:
        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self._past = None

    @property
    def context_length(self) -> int:
        return self.config.llm.max_position_embeddings

    @torch.inference_mode()
    def encode_image(self, image: ImageInput) -> np.ndarray:
        m = self.model
        return m.encode_images(m.pixel_values(image))[0].float().numpy()

    @torch.inference_mode()
    def embed_tokens(self, ids: Sequence[int]) -> np.ndarray:
        table = self.model.language_model.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long)).float().numpy()

    def reset(self) -> None:
        self._past = None

    @torch.inference_mode()
    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(embeds))[None].to(self.model.dtype)
        return self._run(inputs_embeds=x)

    @torch.inference_mode()
    def decode(self, token: int) -> np.ndarray:
        return self._run(input_ids=torch.tensor([[token]]))

    def _run(self, **inputs) -> np.ndarray:
        out = self.model.language_model(**inputs, past_key_values=self._past, use_cache=True)
        self._past = out.past_key_values
        return out.logits[0, -1].float().numpy()


def generate(
    model: MobileVLM,
    image: ImageInput | None,
    prompt: str,
    config: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer one prompt with the torch reference (see :func:`mobilevlm.decode_loop.generate`)."""
    return decode_loop.generate(TorchBackend(model), image, prompt, config, on_text)
