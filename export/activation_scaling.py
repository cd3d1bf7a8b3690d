"""Activation-aware scaling of the decoder's 4-bit weights (the idea of AWQ, Lin et al. 2023).

A few input channels of each MatMul carry most of the activation's magnitude;
their weights matter most, and round-to-nearest treats them like any other.
Multiplying weight row k by s_k and dividing input channel k by s_k leaves the
product unchanged in float, but gives the large channels a finer grid once the
weights are rounded. The division is folded into what produces the input, so
the graph keeps its ops and costs nothing at run time:

- the attention's packed QKV projection: the input RMSNorm's weight;
- the MLP's packed gate/up projection: the post-attention RMSNorm's weight;
- the down projection: the up half of the gate/up projection's columns (the
  MLP is ``silu(gate) * up``, linear in up).

Per weight, ``s = mean|x|^alpha`` (normalized), with ``alpha`` in [0, 1] chosen
by grid search to minimize ``||X W - X' Q(W')||`` on sampled calibration rows
(:mod:`mobilevlm.export.decoder_calibration`), with Q the same 4-bit rounding
the quantizer then applies. The output projection of attention is left alone:
with grouped-query attention its input channels come from shared value heads.
Smaller input channels also make ``accuracy_level`` 4's per-block int8
quantization of the activations finer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm.export.decoder_calibration import InputStatistics

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))

# our decoder graph's names (mobilevlm.export.onnx_decoder): weight -> what feeds it
_FOLDS = (
    (
        re.compile(r"(model\.layers\.\d+)\.self_attn\.qkv_proj\.weight"),
        r"\1.input_layernorm.weight",
        False,
    ),
    (
        re.compile(r"(model\.layers\.\d+)\.mlp\.gate_up_proj\.weight"),
        r"\1.post_attention_layernorm.weight",
        False,
    ),
    (
        re.compile(r"(model\.layers\.\d+)\.mlp\.down_proj\.weight"),
        r"\1.mlp.gate_up_proj.weight",
        True,
    ),
)


def fold_target(weight: str) -> tuple[str, bool] | None:
    """What the input scaling of ``weight`` is folded into, and whether that is the up half
    of a gate/up projection's columns (else a norm's weight); None when it is not scaled."""
    for pattern, target, up_columns in _FOLDS:
        if pattern.fullmatch(weight):
            return pattern.sub(target, weight), up_columns
    return None


@dataclass
class Scaling:
    """Per-channel scales chosen for some weights, applied as tensors are read."""

    scales: dict[str, np.ndarray] = field(default_factory=dict)  # weight -> s (K,)
    alphas: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._folded = {fold_target(w)[0]: w for w in self.scales}

    def touches(self, name: str) -> bool:
        return name in self.scales or name in self._folded

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        """``array`` (the float tensor ``name`` of the graph) with every scaling that touches
        it: its rows times its own s, and its share of the divisions by the s of the weight
        it feeds."""
        if name in self.scales:
            array = array * self.scales[name][:, None]
        if name in self._folded:
            weight = self._folded[name]
            s = self.scales[weight]
            if fold_target(weight)[1]:  # the up half of gate/up's output columns
                array = array.copy()
                half = array.shape[1] // 2
                array[:, half:] /= s[None, :]
            else:
                array = array / s
        return array.astype(np.float32)

    def summary(self) -> dict:
        values = list(self.alphas.values())
        return {
            "weights": len(values),
            "alpha_median": float(np.median(values)) if values else None,
        }


def choose_scales(
    weight: np.ndarray,
    stats: InputStatistics,
    rounding: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, float]:
    """(s, alpha) for ``weight`` (K, N): the grid point whose rounded, rescaled weight gives
    the smallest output error on the sampled rows; alpha 0 (s = 1) is plain rounding."""
    x = stats.rows.astype(np.float32)
    w = weight.astype(np.float32)
    reference = x @ w
    magnitude = np.maximum(stats.mean_abs, 1e-6)
    best = (np.ones_like(magnitude), 0.0, np.inf)
    for alpha in ALPHAS:
        s = magnitude**alpha
        s = s / np.sqrt(s.max() * s.min())
        error = float(np.square(reference - (x / s) @ rounding(w * s[:, None])).sum())
        if error < best[2]:
            best = (s.astype(np.float32), float(alpha), error)
    return best[0], best[1]


def round_blockwise(
    weight: np.ndarray, block_size: int, symmetric: bool, bits: int = 4
) -> np.ndarray:
    """``weight`` (K, N) after MatMulNBits' round-to-nearest in blocks of ``block_size`` along
    K, dequantized: the rounding the quantizer applies, for the search to measure."""
    k, n = weight.shape
    pad = -k % block_size
    blocks = np.pad(weight.T, ((0, 0), (0, pad))).reshape(n, -1, block_size)
    if symmetric:
        # onnxruntime's symmetric blocks: the value of largest magnitude maps to -2^(bits-1)
        extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
        scale = extreme / -(2 ** (bits - 1))
        scale[scale == 0] = 1.0
        codes = np.clip(np.round(blocks / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        rounded = codes * scale
    else:
        low = np.minimum(blocks.min(-1, keepdims=True), 0.0)
        high = np.maximum(blocks.max(-1, keepdims=True), 0.0)
        scale = (high - low) / (2**bits - 1)
        scale[scale == 0] = 1.0
        zero = np.round(-low / scale)
        codes = np.clip(np.round(blocks / scale) + zero, 0, 2**bits - 1)
        rounded = (codes - zero) * scale
    return rounded.reshape(n, -1)[:, :k].T


def choose_scaling(
    source: Path,
    statistics: dict[str, InputStatistics],
    four_bit: Callable[[str], bool],
    block_size: int,
    symmetric: bool,
) -> Scaling:
    """Scales for every 4-bit weight of the float graph ``source`` that has a fold target and
    calibration statistics, read one weight at a time."""
    import onnx

    from mobilevlm.export.external_data import load_tensor

    model = onnx.load(str(source), load_external_data=False)
    weights = {node.input[1]: node.name for node in model.graph.node if node.op_type == "MatMul"}
    scales, alphas = {}, {}
    for tensor in model.graph.initializer:
        name = tensor.name
        if name not in weights or name not in statistics or fold_target(name) is None:
            continue
        if not four_bit(weights[name]):
            continue
        weight = onnx.numpy_helper.to_array(load_tensor(onnx.TensorProto(), tensor, source.parent))
        scales[name], alphas[name] = choose_scales(
            weight, statistics[name], lambda w: round_blockwise(w, block_size, symmetric)
        )
    return Scaling(scales, alphas)
