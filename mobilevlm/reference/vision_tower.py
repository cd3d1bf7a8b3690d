"""Vision towers: pixel values -> feature tokens for the projector.

``clip_vit`` is MobileVLM's CLIP ViT (transformers' CLIP vision transformer);
``efficientnet_lite`` the default model's CNN (:mod:`mobilevlm.reference.efficientnet_lite`).
For CLIP, only the blocks up to ``select_layer`` run: the original computes every block
and then picks ``hidden_states[select_layer]``; the result is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilevlm.config import ClipVisionConfig, EfficientNetLiteConfig, VisionConfig
from mobilevlm.errors import UnsupportedModelError
from mobilevlm.reference.efficientnet_lite import EfficientNetLiteTower


class ClipVisionTower(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.config = config
        hf_config = CLIPVisionConfig(**config.to_hf_dict())
        # keep the inner transformer only: its parameter names are `vision_model.*`,
        # exactly those of a CLIP checkpoint's vision half
        self.vision_model = CLIPVisionModel(hf_config).vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float -> (B, tokens, hidden) with tokens = grid**2 (+1 for cls_patch)."""
        vm = self.vision_model
        hidden = vm.pre_layrnorm(vm.embeddings(pixel_values))
        for layer in vm.encoder.layers[: self.config.num_layers_used]:
            hidden = layer(hidden, None, None)[0]
        if self.config.select_feature == "patch":
            hidden = hidden[:, 1:]
        return hidden


VISION_TOWERS: dict[str, type[nn.Module]] = {
    ClipVisionConfig.type: ClipVisionTower,
    EfficientNetLiteConfig.type: EfficientNetLiteTower,
}


def build_vision_tower(config: VisionConfig) -> nn.Module:
    try:
        return VISION_TOWERS[config.type](config)
    except KeyError:
        raise UnsupportedModelError(f"vision tower type {config.type!r} is not supported") from None
