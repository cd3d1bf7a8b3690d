"""The PyTorch reference as a :class:`~mobilevlm.generation.backend.LanguageBackend`.

Generation itself is :func:`mobilevlm.generation.decode_loop.generate`, shared with
every runtime backend, so the reference defines the behaviour the backends
must match; this adapter only runs the modules and keeps transformers' cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilevlm.generation import decode_loop
from mobilevlm.generation.backend import EmbeddingBackend, PixelEncoder
from mobilevlm.generation.preprocess import ImageInput
from mobilevlm.generation.result import GenerationResult
from mobilevlm.generation.sampling import GenerationConfig


class TorchBackend(EmbeddingBackend, PixelEncoder, decode_loop.GeneratingBackend):
    """Runs a :class:`~mobilevlm.reference.model.MobileVLM` (any module with its methods):
    the :class:`~mobilevlm.runtime.engine.Engine` contract, so a Pipeline can run it."""

    variant = "torch"
    vision_key = None  # a checkpoint's embeddings are not kept on disk

    def __init__(self, model: nn.Module, random_weights: bool = False) -> None:
        self.model = model
        self.random_weights = random_weights  # the checkpoint says so (a test model)
        self.config = model.config
        self.tokenizer = model.tokenizer
        self._past = None

    @property
    def context_length(self) -> int:
        return self.config.llm.max_position_embeddings

    def runtime_info(self) -> dict[str, Any]:
        """What runs, in the runtime's terms (see ``LoadedBundle.runtime_info``)."""
        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        return {
            "backend": "torch",
            "precision": precision.get(self.model.dtype, str(self.model.dtype)),
            "vision_provider": "torch (CPU)",
            "prefill_provider": "torch (CPU)",
            "decoder_provider": "torch (CPU)",
            "context": self.context_length,
        }

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        m = self.model
        x = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(m.dtype)
        return m.encode_images(x)[0].float().numpy()

    def release_vision(self) -> None:
        """Nothing to release: the reference's modules stay in the model."""

    def release_cache(self) -> None:
        self.reset()  # the past tensors are all it holds

    def close(self) -> None:
        self.reset()

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
    model: nn.Module,
    image: ImageInput | None,
    prompt: str,
    config: GenerationConfig,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Answer one prompt with the torch reference (the shared decode loop's ``generate``)."""
    return decode_loop.generate(TorchBackend(model), image, prompt, config, on_text)
