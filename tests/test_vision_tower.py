"""The CLIP tower selects features exactly as MobileVLM's CLIPVisionTower.feature_select."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import random_init_, tiny_config

from mobilevlm.config import ClipVisionConfig
from mobilevlm.errors import UnsupportedModelError
from mobilevlm.reference.vision_tower import ClipVisionTower


def tower(select_layer: int, select_feature: str) -> ClipVisionTower:
    config = dataclasses.replace(
        tiny_config().vision, select_layer=select_layer, select_feature=select_feature
    )
    return random_init_(ClipVisionTower(config), seed=select_layer + 10).eval()


@pytest.mark.parametrize("select_layer", [-2, -1, 1])
@pytest.mark.parametrize("select_feature", ["patch", "cls_patch"])
def test_features_equal_clip_hidden_states_at_the_selected_layer(select_layer, select_feature):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    ours = tower(select_layer, select_feature)
    clip = CLIPVisionModel(CLIPVisionConfig(**ours.config.to_hf_dict())).eval()
    clip.vision_model.load_state_dict(ours.vision_model.state_dict())
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = clip(pixels, output_hidden_states=True).hidden_states[select_layer]
        got = ours(pixels)
    if select_feature == "patch":
        expected = expected[:, 1:]
    assert got.shape == (2, 16 + (select_feature == "cls_patch"), 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_the_needed_blocks_run():
    assert ClipVisionConfig(num_hidden_layers=24, select_layer=-2).num_layers_used == 23
    assert ClipVisionConfig(num_hidden_layers=24, select_layer=-1).num_layers_used == 24


def test_bad_selection_is_refused():
    with pytest.raises(UnsupportedModelError, match="mtcv-2"):
        ClipVisionConfig(select_feature="mtcv-2")
    with pytest.raises(UnsupportedModelError, match="outside"):
        ClipVisionConfig(num_hidden_layers=4, select_layer=-7)
