"""The vision encoder and projector as one ONNX graph: pixel values -> image embeddings.

Exported with torch.onnx from the reference modules themselves, so the
graph computes exactly what the reference does; the batch axis is dynamic,
the image side is fixed by the model's geometry.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from mobilevlm.model import MobileVLM

log = logging.getLogger(__name__)

PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"
OPSET = 17


class VisionEncoder(nn.Module):
    """(B, 3, S, S) pixel values -> (B, image_tokens, llm_hidden): tower, then projector."""

    def __init__(self, model: MobileVLM) -> None:
        super().__init__()
        self.vision_tower = model.vision_tower
        self.projector = model.projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values))


def export_vision(model: MobileVLM, path: Path) -> Path:
    """Write the fp32 vision graph to ``path`` (weights inline: a vision tower is small)."""
    size = model.config.preprocess.image_size
    encoder = VisionEncoder(model).float().eval()
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in shapes
        torch.onnx.export(
            encoder,
            (example,),
            str(path),
            input_names=[PIXEL_VALUES],
            output_names=[IMAGE_EMBEDS],
            dynamic_axes={PIXEL_VALUES: {0: "batch"}, IMAGE_EMBEDS: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return path
