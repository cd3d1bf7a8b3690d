"""Projectors: the original MobileVLM key names and numerics, on any square grid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_init_

from mobilevlm.config import ProjectorConfig
from mobilevlm.errors import UnsupportedModelError
from mobilevlm.reference.checkpoint import original_key
from mobilevlm.reference.projectors import build_projector

IN, OUT = 32, 64


def projector(kind: str, seed: int = 0):
    return random_init_(build_projector(ProjectorConfig(kind, IN, OUT)), seed).eval()


def original_state(module, kind: str) -> dict[str, torch.Tensor]:
    return {original_key("projector." + k, kind): v for k, v in module.state_dict().items()}


def _mb_block_keys(i: int) -> list[str]:
    p = f"model.mm_projector.model.mb_block.{i}.block."
    return [
        p + s
        for s in (
            "0.0.weight",
            "0.1.weight",
            "0.1.bias",
            "1.fc1.weight",
            "1.fc1.bias",
            "1.fc2.weight",
            "1.fc2.bias",
            "2.0.weight",
            "2.1.weight",
            "2.1.bias",
        )
    ]


EXPECTED_KEYS = {
    "ldpnet": {
        "model.mm_projector.model.mlp.1.weight",
        "model.mm_projector.model.mlp.1.bias",
        "model.mm_projector.model.mlp.3.weight",
        "model.mm_projector.model.mlp.3.bias",
        *_mb_block_keys(1),
        *_mb_block_keys(2),
    },
    "ldpnetv2": {
        "model.mm_projector.mlp.mlp.0.weight",
        "model.mm_projector.mlp.mlp.0.bias",
        "model.mm_projector.mlp.mlp.2.weight",
        "model.mm_projector.mlp.mlp.2.bias",
        "model.mm_projector.peg.peg.0.weight",
        "model.mm_projector.peg.peg.0.bias",
    },
    "mlp2x_gelu": {
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
    },
    "linear": {"model.mm_projector.weight", "model.mm_projector.bias"},
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_KEYS))
def test_parameters_carry_the_original_key_names(kind):
    assert set(original_state(projector(kind), kind)) == EXPECTED_KEYS[kind]


def test_ldp_squeeze_width_is_a_quarter_rounded_to_eight():
    sd = original_state(projector("ldpnet"), "ldpnet")
    assert sd["model.mm_projector.model.mb_block.1.block.1.fc1.weight"].shape == (16, OUT, 1, 1)


def _grid(x):
    b, n, c = x.shape
    h = math.isqrt(n)
    return x.permute(0, 2, 1).reshape(b, c, h, h)


def _ln2d(x, w, b):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-5).permute(0, 3, 1, 2)


def original_ldp(sd, x):
    """LDPBlock of MobileVLM's vision_projector.py, written out over its state dict."""
    p = "model.mm_projector.model."
    x = F.linear(x, sd[p + "mlp.1.weight"], sd[p + "mlp.1.bias"])
    x = F.linear(F.gelu(x), sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"])
    x = _grid(x)
    for i, stride in ((1, 1), (2, 2)):
        q = f"{p}mb_block.{i}.block."
        y = F.conv2d(x, sd[q + "0.0.weight"], None, stride, 1, groups=x.shape[1])
        y = F.hardswish(_ln2d(y, sd[q + "0.1.weight"], sd[q + "0.1.bias"]))
        s = F.adaptive_avg_pool2d(y, 1)
        s = F.relu(F.conv2d(s, sd[q + "1.fc1.weight"], sd[q + "1.fc1.bias"]))
        y = y * F.hardsigmoid(F.conv2d(s, sd[q + "1.fc2.weight"], sd[q + "1.fc2.bias"]))
        y = _ln2d(F.conv2d(y, sd[q + "2.0.weight"]), sd[q + "2.1.weight"], sd[q + "2.1.bias"])
        x = x + y if stride == 1 else y
    return x.flatten(2).transpose(1, 2)


def original_ldpv2(sd, x):
    """LDPNetV2Projector: MLP, AdaptiveAvgPool2d to half the grid, PEG."""
    p = "model.mm_projector."
    x = F.linear(x, sd[p + "mlp.mlp.0.weight"], sd[p + "mlp.mlp.0.bias"])
    x = F.linear(F.gelu(x), sd[p + "mlp.mlp.2.weight"], sd[p + "mlp.mlp.2.bias"])
    x = _grid(x)
    x = F.adaptive_avg_pool2d(x, x.shape[-1] // 2)
    x = (
        F.conv2d(x, sd[p + "peg.peg.0.weight"], sd[p + "peg.peg.0.bias"], 1, 1, groups=x.shape[1])
        + x
    )
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("grid", [4, 6, 24])
@pytest.mark.parametrize("kind,reference", [("ldpnet", original_ldp), ("ldpnetv2", original_ldpv2)])
def test_matches_the_original_computation(kind, reference, grid):
    module = projector(kind)
    x = torch.randn(2, grid * grid, IN, generator=torch.Generator().manual_seed(grid))
    with torch.no_grad():
        ours, expected = module(x), reference(original_state(module, kind), x)
    assert ours.shape == (2, (grid // 2) ** 2, OUT)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kind,grid,tokens",
    [
        ("ldpnet", 5, 9),
        ("ldpnet", 24, 144),
        ("ldpnetv2", 8, 16),
        ("ldpnetv2", 24, 144),
        ("mlp2x_gelu", 3, 9),
        ("linear", 4, 16),
    ],
)
def test_output_token_count_matches_the_config(kind, grid, tokens):
    module = projector(kind)
    with torch.no_grad():
        out = module(torch.randn(1, grid * grid, IN))
    assert out.shape == (1, tokens, OUT)
    assert ProjectorConfig(kind, IN, OUT).output_tokens(grid * grid) == tokens


def test_ldpv2_refuses_an_odd_grid():
    with pytest.raises(UnsupportedModelError, match="even"):
        ProjectorConfig("ldpnetv2", IN, OUT).output_tokens(25)
    with pytest.raises(UnsupportedModelError, match="even"):
        projector("ldpnetv2")(torch.randn(1, 25, IN))


def test_unknown_projector_type_is_refused():
    with pytest.raises(UnsupportedModelError, match="'qformer' is not supported"):
        ProjectorConfig("qformer", IN, OUT)
