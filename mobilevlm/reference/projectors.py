"""Projectors: vision feature tokens (B, N, C_vision) -> LLM input embeddings (B, M, C_llm).

Module and parameter names mirror MobileVLM's ``vision_projector.py`` (minus
its ``model.mm_projector`` prefix), so the original weights load by prefix
alone. ``ldpnet`` and ``ldpnetv2`` reshape tokens to a square grid and work
on any grid size: LDP's stride-2 block gives ceil(g/2) per side; LDPv2 pools
2x2, i.e. to half of any even grid (the original hard-codes 12x12 for 24x24).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm.config import ProjectorConfig
from mobilevlm.errors import UnsupportedModelError


def _tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    side = math.isqrt(n)
    if side * side != n:
        raise UnsupportedModelError(f"{n} image tokens do not form a square grid")
    return x.transpose(1, 2).reshape(b, c, side, side)


def _grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding (torchvision's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's LayerNormAct2d without activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 block as LDP configures it: expanded = in = out channels, so there is no
    expansion conv; depthwise 3x3 + LN + hardswish, squeeze-excitation, 1x1 conv + LN."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                LayerNorm2d(channels),
                nn.Hardswish(),
            ),
            SqueezeExcitation(channels, make_divisible(channels // 4)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels)),
        )
        self.use_residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class LDPNetProjector(nn.Module):
    """LDP (MobileVLM v1): MLP, then a stride-1 and a stride-2 MobileNetV3 block."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Identity(),
            nn.Linear(input_dim, output_dim),
            nn.GELU(),
            nn.Linear(output_dim, output_dim),
        )
        self.mb_block = nn.Sequential(
            nn.Identity(), InvertedResidual(output_dim, 1), InvertedResidual(output_dim, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _grid_to_tokens(self.mb_block(_tokens_to_grid(self.mlp(x))))


class FeatureMLP(nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, output_dim), nn.GELU(), nn.Linear(output_dim, output_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PositionalEncodingGenerator(nn.Module):
    """PEG: a depthwise 3x3 conv added to its input (Twins / MobileVLM V2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.peg(grid) + grid


class LDPNetV2Projector(nn.Module):
    """LDPv2 (MobileVLM V2): MLP, 2x2 average pooling of the token grid, PEG; then, with
    ``cell_labels``, each k x k cell of the output grid is preceded by its label tokens
    (``labels``, (sum(cell_labels), dim), learned constants)."""

    def __init__(self, input_dim: int, output_dim: int, cell_labels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.mlp = FeatureMLP(input_dim, output_dim)
        self.peg = PositionalEncodingGenerator(output_dim)
        self.cell_labels = tuple(cell_labels)
        labels = nn.Parameter(torch.zeros(sum(cell_labels), output_dim)) if cell_labels else None
        self.register_parameter("labels", labels)  # None, like a Linear without bias

    def grid_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled grid's tokens, row-major, before any labels: (B, (g/2)^2, dim)."""
        grid = _tokens_to_grid(self.mlp(x))
        if grid.shape[-1] % 2:
            raise UnsupportedModelError(
                f"ldpnetv2 needs an even patch grid, got {grid.shape[-1]}x{grid.shape[-1]}"
            )
        return _grid_to_tokens(self.peg(F.avg_pool2d(grid, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.grid_tokens(x)
        if self.labels is None:
            return tokens
        side = math.isqrt(tokens.shape[1])
        labels = self.labels.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens, labels], dim=1)[:, labelled_order(side, self.cell_labels)]


def labelled_order(side: int, cell_labels: tuple[int, ...]) -> list[int]:
    """Output order of LDPv2 with cell labels, as indices into [grid tokens (side*side,
    row-major), label tokens]: cell by cell (row-major), its labels, then its tokens."""
    cells = math.isqrt(len(cell_labels))
    step = side // cells
    order, label = [], side * side
    for c, count in enumerate(cell_labels):
        order += range(label, label + count)
        label += count
        top, left = c // cells * step, c % cells * step
        rows, cols = range(top, top + step), range(left, left + step)
        order += [r * side + col for r in rows for col in cols]
    return order


def build_projector(config: ProjectorConfig) -> nn.Module:
    cin, cout = config.input_dim, config.output_dim
    if config.type == "ldpnet":
        return LDPNetProjector(cin, cout)
    if config.type == "ldpnetv2":
        return LDPNetV2Projector(cin, cout, config.cell_labels)
    if config.type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))
    if config.type == "linear":
        return nn.Linear(cin, cout)
    raise UnsupportedModelError(f"projector type {config.type!r} is not supported")
