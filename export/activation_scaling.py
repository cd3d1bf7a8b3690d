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
by grid search to minimize ``||X W - X' Q(W')||`` over the calibration inputs
(their Gram matrix ``X^T X``, or sampled rows for a large LLM:
:mod:`mobilevlm.export.decoder_calibration`), with Q the same 4-bit rounding
the quantizer then applies. The output projection of attention is not scaled:
with grouped-query attention its input channels come from shared value heads.
Smaller input channels also make ``accuracy_level`` 4's per-block int8
quantization of the activations finer.

Then AWQ's second step, clipping: per block and output column, the fraction
of the block's range that the rounding grid spans, searched in [0.5, 1] for
the smallest error of that block's share of the output, ``d^T X_b^T X_b d``
on the same inputs (``d`` the block's rounding error). An outlier weight no
longer stretches the grid of the 31 others. The weight is clipped to that
range before the quantizer sees it, so the quantizer's own round-to-nearest
reproduces the chosen grid exactly (:func:`round_blockwise`). Every 4-bit
weight with calibration inputs is clipped, the attention's output projection
included.

Last, where the recipe asks for it, GPTQ chooses the codes on each clipped grid
(:mod:`mobilevlm.export.gptq`) from the same Gram matrix; those codes are stored
as they are, without the quantizer's rounding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm.config import LLMConfig
from mobilevlm.export.decoder_calibration import InputStatistics
from mobilevlm.export.gptq import Grid, RoundedWeight, gptq, packable

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
CLIP_RATIOS = tuple(np.round(np.linspace(1.0, 0.5, 11), 2))
CLIP_COLUMNS = 2048  # output columns searched at once: a bound on the search's memory

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
class ActivationAware:
    """Per-channel scales and per-block clipping ranges chosen for some weights, applied as
    the graph's float tensors are read."""

    block_size: int
    symmetric: bool
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # weight -> s (K,)
    alphas: dict[str, float] = field(default_factory=dict)
    clips: dict[str, np.ndarray] = field(default_factory=dict)  # weight -> (K blocks, N)
    # weight -> its GPTQ codes on the clipped grid (:mod:`mobilevlm.export.gptq`)
    rounded: dict[str, RoundedWeight] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._folded = {fold_target(w)[0]: w for w in self.scales}

    def touches(self, name: str) -> bool:
        return name in self.scales or name in self._folded or name in self.clips

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        """``array`` (the float tensor ``name`` of the graph) with everything that touches
        it: its rows times its own s, its share of the divisions by the s of the weight it
        feeds, then its clipping."""
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
        if name in self.clips:
            array = clip_blocks(array, self.clips[name], self.block_size, self.symmetric)
        return array.astype(np.float32)

    def rounded_weight(self, name: str) -> RoundedWeight | None:
        """The codes chosen for weight ``name``, where GPTQ chose them: stored as they are,
        not rounded again (:meth:`apply` gives the float weight they were chosen for: a
        grid of another kind, an NPU's symmetric one, rounds that)."""
        return self.rounded.get(name)

    def summary(self) -> dict:
        alphas = list(self.alphas.values())
        clipped = [float((r < 1).mean()) for r in self.clips.values()]
        return {
            "weights_scaled": len(alphas),
            "alpha_median": float(np.median(alphas)) if alphas else None,
            "weights_clipped": len(clipped),
            "blocks_clipped": round(float(np.mean(clipped)), 3) if clipped else None,
            "weights_gptq": len(self.rounded),
        }


def choose_scales(
    weight: np.ndarray,
    stats: InputStatistics,
    rounding: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, float]:
    """(s, alpha) for ``weight`` (K, N): the grid point whose rounded, rescaled weight gives
    the smallest output error on the calibration inputs; alpha 0 (s = 1) is plain rounding.
    ``(X / s) Q(W s) = X (Q(W s) / s)``, so the error is that of ``W - Q(W s) / s``."""
    w = weight.astype(np.float32)
    magnitude = np.maximum(stats.mean_abs, 1e-6)
    best = (np.ones_like(magnitude), 0.0, np.inf)
    for alpha in ALPHAS:
        s = magnitude**alpha
        s = s / np.sqrt(s.max() * s.min())
        error = stats.output_error(w - rounding(w * s[:, None]) / s[:, None])
        if error < best[2]:
            best = (s.astype(np.float32), float(alpha), error)
    return best[0], best[1]


def round_blockwise(
    weight: np.ndarray, block_size: int, symmetric: bool, bits: int = 4
) -> np.ndarray:
    """``weight`` (K, N) after MatMulNBits' round-to-nearest in blocks of ``block_size`` along
    K, dequantized: the rounding the quantizer applies, for the search to measure."""
    rounded = _round_blocks(_blocks(weight, block_size), symmetric, bits)
    return rounded.reshape(-1, weight.shape[1])[: weight.shape[0]]


def _round_blocks(blocks: np.ndarray, symmetric: bool, bits: int = 4) -> np.ndarray:
    """:func:`round_blockwise` on ``blocks`` (K blocks, block_size, N), in that layout."""
    scale, zero = _grid(blocks, symmetric, bits)
    codes = np.clip(np.round(blocks / scale) + zero, 0, 2**bits - 1)
    return (codes - zero) * scale


def _grid(blocks: np.ndarray, symmetric: bool, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The (scale, zero point) of each block of ``blocks`` (K blocks, block_size, N), each
    (K blocks, 1, N), as onnxruntime's MatMulNBits quantizer computes them."""
    if symmetric:
        # the value of largest magnitude maps to code 0 (-2^(bits-1) around the zero point);
        # of a minimum and a maximum of equal magnitude (a clipped block), the minimum
        low, high = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
        extreme = np.where(np.abs(high) > np.abs(low), high, low)
        scale = extreme / -(2 ** (bits - 1))
        scale[scale == 0] = 1.0
        return scale, np.full_like(scale, 2 ** (bits - 1))
    low, high = _range(blocks, symmetric)
    scale = (high - low) / (2**bits - 1)
    scale[scale == 0] = 1.0
    return scale, np.round(-low / scale)


def clipped_grid(
    weight: np.ndarray, ratios: np.ndarray | None, block_size: int, symmetric: bool, bits: int = 4
) -> Grid:
    """The grid the quantizer would round ``weight`` (K, N) on once clipped to ``ratios``
    (None: not clipped)."""
    blocks = _blocks(weight, block_size)
    if ratios is not None:
        blocks = _clip_blocks(blocks, ratios, symmetric)
    scale, zero = _grid(blocks, symmetric, bits)
    return Grid(scale[:, 0].astype(np.float32), zero[:, 0].astype(np.float32), symmetric, bits)


def _blocks(array: np.ndarray, block_size: int) -> np.ndarray:
    """(K, ...) -> (K blocks, block_size, ...), K padded with zeros to whole blocks."""
    pad = -array.shape[0] % block_size
    array = np.pad(array, ((0, pad),) + ((0, 0),) * (array.ndim - 1))
    return array.reshape(-1, block_size, *array.shape[1:])


def _block_grams(stats: InputStatistics, block_size: int) -> np.ndarray:
    """The diagonal blocks of ``X^T X``, (K blocks, block_size, block_size), K padded with
    zero channels to whole blocks."""
    if stats.gram is not None:
        gram = np.pad(stats.gram, (0, -len(stats.gram) % block_size))
        return np.stack(
            [gram[b : b + block_size, b : b + block_size] for b in range(0, len(gram), block_size)]
        )
    x = _blocks(stats.rows.T.astype(np.float32), block_size)  # (K blocks, block, rows)
    return np.einsum("bir,bjr->bij", x, x)


def _range(blocks: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) each block's grid spans unclipped, as the quantizer computes it."""
    if symmetric:
        high = np.abs(blocks).max(1, keepdims=True)
        return -high, high
    return np.minimum(blocks.min(1, keepdims=True), 0), np.maximum(blocks.max(1, keepdims=True), 0)


def clip_blocks(
    weight: np.ndarray, ratios: np.ndarray, block_size: int, symmetric: bool
) -> np.ndarray:
    """``weight`` (K, N) with each block of each column clipped to ``ratios`` (K blocks, N)
    of its range."""
    clipped = _clip_blocks(_blocks(weight, block_size), ratios, symmetric)
    return clipped.reshape(-1, weight.shape[1])[: weight.shape[0]]


def _clip_blocks(blocks: np.ndarray, ratios: np.ndarray, symmetric: bool) -> np.ndarray:
    """:func:`clip_blocks` on ``blocks`` (K blocks, block_size, N), in that layout."""
    low, high = _range(blocks, symmetric)
    return np.clip(blocks, low * ratios[:, None, :], high * ratios[:, None, :])


def choose_clipping(
    weight: np.ndarray, stats: InputStatistics, block_size: int, symmetric: bool
) -> np.ndarray:
    """Clip ratios (K blocks, N) for ``weight`` (K, N) with inputs ``stats``: per block
    and column, the grid point of :data:`CLIP_RATIOS` whose rounded block gives the smallest
    error in the block's share of the output (1.0: no clipping)."""
    gram = _block_grams(stats, block_size)  # (K blocks, block, block)
    ratios = np.ones((gram.shape[0], weight.shape[1]), np.float32)
    for start in range(0, weight.shape[1], CLIP_COLUMNS):
        w = weight[:, start : start + CLIP_COLUMNS].astype(np.float32)
        blocks = _blocks(w, block_size)
        best = np.full((blocks.shape[0], w.shape[1]), np.inf, np.float32)
        for ratio in CLIP_RATIOS:
            # in the blocks' layout throughout: no padding or reshaping per grid point
            clipped = _clip_blocks(blocks, np.full_like(best, ratio), symmetric)
            error = blocks - _round_blocks(clipped, symmetric)
            cost = (error * np.matmul(gram, error)).sum(1)  # d^T G d per block and column
            better = cost < best
            best[better] = cost[better]
            ratios[:, start : start + CLIP_COLUMNS][better] = ratio
    return ratios


def choose_adjustments(
    source: Path,
    statistics: dict[str, InputStatistics],
    four_bit: Callable[[str], bool],
    block_size: int,
    symmetric: bool,
    error_compensation: bool = False,
    eight_bit_block: Callable[[str, int], int] | None = None,
) -> ActivationAware:
    """Scales for every 4-bit weight of the float graph ``source`` that has a fold target,
    and clipping for every one, where calibration statistics exist; read one weight at a
    time. ``error_compensation``: then GPTQ's codes on each clipped grid (where they can
    be packed; else the clipped weight is rounded to nearest), and, given
    ``eight_bit_block`` (node, K -> its block size), on the symmetric 8-bit grids of the
    other weights with statistics."""
    import onnx

    from mobilevlm.export.external_data import load_tensor
    from mobilevlm.runtime.heap import give_back

    model = onnx.load(str(source), load_external_data=False)
    weights = {node.input[1]: node.name for node in model.graph.node if node.op_type == "MatMul"}
    scales, alphas, clips, rounded = {}, {}, {}, {}
    for tensor in model.graph.initializer:
        name = tensor.name
        if name not in weights or name not in statistics:
            continue
        node = weights[name]
        eight = not four_bit(node)
        if eight and not (error_compensation and eight_bit_block):
            continue
        weight = onnx.numpy_helper.to_array(load_tensor(onnx.TensorProto(), tensor, source.parent))
        stats = statistics[name]
        if eight:
            size = eight_bit_block(node, weight.shape[0])
            grid = clipped_grid(weight, None, size, True, bits=8)
            rounded[name] = gptq(weight, stats.gram_matrix(), grid, size)
        else:
            if fold_target(name) is not None:
                s, alphas[name] = choose_scales(
                    weight, stats, lambda w: round_blockwise(w, block_size, symmetric)
                )
                scales[name] = s
                weight, stats = weight * s[:, None], stats.scaled(s)
            clips[name] = choose_clipping(weight, stats, block_size, symmetric)
            if error_compensation and packable(weight.shape[0], block_size, 4):
                grid = clipped_grid(weight, clips[name], block_size, symmetric)
                rounded[name] = gptq(weight, stats.gram_matrix(), grid, block_size)
        give_back()  # this weight's temporaries, which glibc's heap would otherwise keep
    for name, s in scales.items():
        # a down projection's scales divide the up columns of the gate/up weight: each
        # column's rounding and clipping scale with it, so only its grid's step changes
        target, up_columns = fold_target(name)
        if up_columns and target in rounded:
            grid = rounded[target].grid
            grid.scale[:, grid.scale.shape[1] // 2 :] /= s[None, :]
    return ActivationAware(block_size, symmetric, scales, alphas, clips, rounded)


class SplitProjections:
    """An :class:`ActivationAware` chosen on the CPU graph's packed weights (QKV, gate/up),
    applied to a graph of the separate projections (the NPU's static graphs,
    :mod:`mobilevlm.export.qnn_decoder`): every adjustment of a packed weight acts column
    by column (its rows' scales, the fold into the up columns, clipping per block and
    column), so a projection's weight, put in its columns of a packed one, comes out
    exactly as that part of the packed weight does. Norms and the unpacked projections
    have the same names in both graphs."""

    def __init__(self, adjust: ActivationAware, config: LLMConfig) -> None:
        self._adjust = adjust
        q, kv = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        )
        i = config.intermediate_size
        self._columns = {}  # a projection's weight -> (packed weight, first column, width)
        for layer in range(config.num_hidden_layers):
            a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
            for part, first in (("q", 0), ("k", q), ("v", q + kv)):
                self._columns[f"{a}.{part}_proj.weight"] = (
                    f"{a}.qkv_proj.weight",
                    first,
                    q + 2 * kv,
                )
            for part, first in (("gate", 0), ("up", i)):
                self._columns[f"{m}.{part}_proj.weight"] = (
                    f"{m}.gate_up_proj.weight",
                    first,
                    2 * i,
                )

    def touches(self, name: str) -> bool:
        packed = self._columns.get(name)
        return self._adjust.touches(packed[0] if packed else name)

    def rounded_weight(self, name: str) -> None:
        """None: the NPU's grids are symmetric, so its graphs round the float weights on
        their own grids rather than take the CPU decoder's GPTQ codes."""
        return None

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        if name not in self._columns:
            return self._adjust.apply(name, array)
        packed, first, width = self._columns[name]
        whole = np.zeros((array.shape[0], width), np.float32)
        whole[:, first : first + array.shape[1]] = array
        return self._adjust.apply(packed, whole)[:, first : first + array.shape[1]]
