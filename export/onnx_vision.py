"""The vision encoder and projector as one ONNX graph: pixel values -> image embeddings.

Exported with torch.onnx from the reference modules themselves, so the
graph computes exactly what the reference does; the batch axis is dynamic,
the image side is fixed by the model's geometry. A CLIP tower is exported
with transformers' eager attention, whose pattern onnxruntime's transformer
optimizer recognizes, and then fused by it (Attention, SkipLayerNormalization,
QuickGelu); a CNN tower needs only the session's own optimizations.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mobilevlm.config import ClipVisionConfig
from mobilevlm.export.quantize import quiet_loggers
from mobilevlm.reference.model import MobileVLM
from mobilevlm.runtime.ort.graph_io import IMAGE_EMBEDS, PIXEL_VALUES

log = logging.getLogger(__name__)

OPSET = 17
BATCH_AXES = {PIXEL_VALUES: {0: "batch"}, IMAGE_EMBEDS: {0: "batch"}}


class VisionEncoder(nn.Module):
    """(B, 3, S, S) pixel values -> (B, image_tokens, llm_hidden): tower, then projector."""

    def __init__(self, model: MobileVLM) -> None:
        super().__init__()
        self.vision_tower = model.vision_tower
        self.projector = model.projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values))


@contextmanager
def _eager_attention(model: MobileVLM) -> Iterator[None]:
    config = getattr(getattr(model.vision_tower, "vision_model", None), "config", None)
    if config is None:
        yield
        return
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = saved


def export_vision(model: MobileVLM, path: Path, for_npu: bool = False) -> Path:
    """Write the fp32 vision graph to ``path`` (weights inline: a vision tower is small).
    ``for_npu``: one image per call (static shapes, as NPU compilers need) and no fusion
    into onnxruntime's contrib ops, which are CPU/GPU kernels that no NPU provider takes."""
    size = model.config.preprocess.image_size
    encoder = VisionEncoder(model).float().eval()
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings(), torch.inference_mode(), _eager_attention(model):
        warnings.simplefilter("ignore")  # tracer warnings about python ints in shapes
        torch.onnx.export(
            encoder,
            (example,),
            str(path),
            input_names=[PIXEL_VALUES],
            output_names=[IMAGE_EMBEDS],
            dynamic_axes=None if for_npu else BATCH_AXES,
            opset_version=OPSET,
            dynamo=False,
        )
    vision = model.config.vision
    if isinstance(vision, ClipVisionConfig) and not for_npu:
        _fuse_transformer(path, vision)
    return path


def _fuse_transformer(path: Path, config: ClipVisionConfig) -> None:
    """Attention, SkipLayerNormalization and QuickGelu by onnxruntime's optimizer. Its
    symbolic shape inference is off: it copies the whole model, weights included, on each
    of its five runs (ViT-L/14-336: a 12.6 GiB peak, 13 s); the fused graph of a CLIP tower
    is the same without it (node for node, weight for weight; 2.4 GiB, 3 s)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("clip")
    options.enable_shape_inference = False
    # the skip-layer-norm fusion warns that shape inference is off, as asked
    with quiet_loggers("fusion_skiplayernorm"):
        optimized = optimize_model(
            str(path),
            model_type="clip",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,  # fusions only; the session applies its own optimizations at load
            optimization_options=options,
        )
    log.info("vision graph fusions: %s", optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(path))
