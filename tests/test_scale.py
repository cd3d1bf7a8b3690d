"""Published geometry at full size (slow: ~300M parameters). Run with `make test-slow`."""

from __future__ import annotations

import pytest
import torch

from mobilevlm.config import ClipVisionConfig, PreprocessConfig, ProjectorConfig
from mobilevlm.generation.preprocess import preprocess
from mobilevlm.reference.projectors import build_projector
from mobilevlm.reference.vision_tower import ClipVisionTower

pytestmark = pytest.mark.slow


def test_clip_vit_l_336_with_ldpv2_gives_144_tokens_equal_to_transformers(torch_threads, rgb_image):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = ClipVisionConfig()  # ViT-L/14 at 336 px, select layer -2, patch features
    tower = ClipVisionTower(config).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(**config.to_hf_dict())).eval()
    clip.vision_model.load_state_dict(tower.vision_model.state_dict())
    projector = build_projector(ProjectorConfig("ldpnetv2", 1024, 2048)).eval()
    pixels = torch.from_numpy(preprocess(rgb_image, PreprocessConfig()))[None]
    with torch.no_grad():
        features = tower(pixels)
        expected = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        tokens = projector(features)
    assert features.shape == (1, 576, 1024)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    assert tokens.shape == (1, 144, 2048)
