"""GPTQ (Frantar et al. 2022) on the grid activation-aware clipping chose.

Round-to-nearest rounds every weight of a column on its own. GPTQ rounds the
input channels of a weight one after the other and moves each one's rounding
error onto the channels not yet rounded, weighted by how the calibration
inputs correlate them (the inverse of the Gram matrix ``H = X^T X``), so the
output ``X W`` keeps what the rounding took. Here it runs after the
activation-aware scaling and clipping of :mod:`mobilevlm.export.activation_scaling`:
the scaling multiplies the weight's rows (and divides ``X``), the clipping
fixes each block's grid (scale and zero point) before any weight is rounded
("static groups"), so every weight lands on the grid MatMulNBits stores.

onnxruntime ships a GPTQ (``GPTQWeightOnlyQuantConfig``), but it cannot take
these scales and grids, and the version in onnxruntime 1.32's
``neural_compressor.weight_only.gptq`` propagates the error along the upper
Cholesky factor's column (``Hinv1[i:, i]``, zero below the diagonal) instead of
its row, which leaves plain rounding; it then requantizes the rounded weight
from its own minimum and maximum, moving it off the grid it was rounded on.
The codes are packed by onnxruntime's own ``make_matmul_weight_only_node``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 0.01  # of the mean diagonal of H, added to it: GPTQ's default
BATCH = 128  # input channels whose updates are applied to the rest at once (lazy batches)


@dataclass
class Grid:
    """Each block's quantization grid, (K blocks, N) each: value = (code - zero) * scale."""

    scale: np.ndarray
    zero: np.ndarray
    symmetric: bool  # zero is 2^(bits - 1) everywhere: MatMulNBits stores no zero points
    bits: int = 4

    @property
    def top(self) -> int:
        return 2**self.bits - 1


@dataclass
class RoundedWeight:
    """A weight (K, N) as codes on its grid: what a MatMulNBits node stores."""

    codes: np.ndarray  # (K, N) uint8, 0 .. 2^bits - 1
    grid: Grid
    block_size: int

    def dequantized(self) -> np.ndarray:
        blocks = np.arange(self.codes.shape[0]) // self.block_size
        return (
            (self.codes.astype(np.float32) - self.grid.zero[blocks]) * self.grid.scale[blocks]
        ).astype(np.float32)


def gptq(
    weight: np.ndarray,
    gram: np.ndarray,
    grid: Grid,
    block_size: int,
    damping: float = DAMPING,
) -> RoundedWeight:
    """``weight`` (K, N) rounded onto ``grid`` channel by channel, in order, each channel's
    error compensated on the later ones through ``gram`` (K, K), the inputs' ``X^T X``.
    (GPTQ's act-order, the largest inputs first, scored no better on the built-in model.)"""
    k = weight.shape[0]
    w = weight.astype(np.float64)
    h = gram.astype(np.float64)
    dead = np.diag(h) == 0  # a channel that is always zero: its weight does not matter
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(k)] += damping * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # U with U^T U = H^-1
    blocks = np.arange(k) // block_size
    scale, zero = grid.scale.astype(np.float64), grid.zero.astype(np.float64)
    codes = np.empty(w.shape, np.uint8)
    for start in range(0, k, BATCH):
        end = min(start + BATCH, k)
        errors = np.empty((end - start, w.shape[1]))
        for i in range(start, end):
            b = blocks[i]
            code = np.clip(np.round(w[i] / scale[b]) + zero[b], 0, grid.top)
            codes[i] = code
            error = (w[i] - (code - zero[b]) * scale[b]) / upper[i, i]
            w[i + 1 : end] -= np.outer(upper[i, i + 1 : end], error)
            errors[i - start] = error
        w[end:] -= upper[start:end, end:].T @ errors
    return RoundedWeight(codes, grid, block_size)


def packable(k: int, block_size: int, bits: int) -> bool:
    """Whether :func:`matmul_nbits` can store codes of a weight with ``k`` input channels:
    onnxruntime's packer puts two 4-bit zero points in a byte across columns, which is
    MatMulNBits' layout only where each column has an even number of blocks (the built-in
    model's 18 and 48 do)."""
    return bits == 8 or -(-k // block_size) % 2 == 0


def matmul_nbits(node, rounded: RoundedWeight, accuracy_level: int) -> tuple:
    """(MatMulNBits node, its initializers) storing ``rounded`` in place of the MatMul
    ``node``, packed by onnxruntime's own packer (where :func:`packable`)."""
    from onnxruntime.quantization.neural_compressor.weight_only import (
        make_matmul_weight_only_node,
    )

    k, n = rounded.codes.shape
    size = rounded.block_size
    blocks = -(-k // size)
    if not packable(k, size, rounded.grid.bits):
        raise ValueError(f"{node.name}: {blocks} blocks per column; GPTQ packs even counts")
    codes = np.zeros((blocks * size, n), np.uint8)
    codes[:k] = rounded.codes
    return make_matmul_weight_only_node(
        node=node,
        weight_shape=(k, n),
        num_bits=rounded.grid.bits,
        group_size=size,
        k_blocks=blocks,
        q_weight=codes.T.reshape(n * blocks, size),
        scale=np.ascontiguousarray(rounded.grid.scale.T, np.float32).ravel(),
        zero_point=None if rounded.grid.symmetric else rounded.grid.zero.T.astype(np.uint8).ravel(),
        accuracy_level=accuracy_level,
    )
