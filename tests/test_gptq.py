"""GPTQ on the clipped grid: stored as MatMulNBits exactly as onnxruntime's quantizer stores
rounding, and closer to the float product than rounding where the inputs correlate."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from mobilevlm.export.activation_scaling import clip_blocks, clipped_grid, round_blockwise
from mobilevlm.export.gptq import gptq, matmul_nbits


def _matmul_nbits_session(nodes, initializers, k: int, n: int):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, n])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", [x], [y], list(initializers)),
        opset_imports=[
            onnx.helper.make_opsetid("", 21),
            onnx.helper.make_opsetid("com.microsoft", 1),
        ],
    )
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def _correlated_rows(rng, counts: tuple[int, ...], k: int) -> list[np.ndarray]:
    """Inputs whose channels correlate and differ in size, as a decoder's MatMul inputs do:
    one set of rows per count, all from the same distribution."""
    mix = (rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)) * rng.uniform(0.2, 3.0, k)
    return [(rng.standard_normal((count, k)) @ mix).astype(np.float32) for count in counts]


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True)])
def test_codes_without_compensation_are_stored_as_the_quantizer_stores_rounding(bits, symmetric):
    """A Gram matrix whose damping swamps the correlations leaves round-to-nearest on the
    clipped grid: matmul_nbits' tensors equal, byte for byte, DefaultWeightOnlyQuantizer's
    on the clipped weight, so the packing and the grid are the quantizer's own."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    rng = np.random.default_rng(0)
    k, n = 128, 24
    weight = rng.standard_normal((k, n)).astype(np.float32)
    ratios = rng.choice([1.0, 0.9, 0.7], size=(k // 32, n)).astype(np.float32)
    clipped = clip_blocks(weight, ratios, 32, symmetric)
    grid = clipped_grid(weight, ratios, 32, symmetric, bits)
    rounded = gptq(clipped, np.eye(k), grid, 32, damping=1e9)
    np.testing.assert_allclose(
        rounded.dequantized(), round_blockwise(clipped, 32, symmetric, bits), atol=1e-6
    )

    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="m")
    stack = onnx.GraphProto()
    stack.initializer.append(onnx.numpy_helper.from_array(clipped, "w"))
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, bits=bits)
    [theirs] = DefaultWeightOnlyQuantizer(config).quantize(node, [stack])
    ours, tensors = matmul_nbits(node, rounded, accuracy_level=0)
    want = {t.name: onnx.numpy_helper.to_array(t) for t in stack.initializer[1:]}
    got = {t.name: onnx.numpy_helper.to_array(t) for t in tensors}
    assert len(got) == len(want) == len(ours.input) - 1
    for mine, reference in zip(ours.input[1:], theirs.input[1:], strict=True):
        np.testing.assert_array_equal(got[mine], want[reference])


@pytest.mark.parametrize("symmetric", [True, False])
def test_compensation_lowers_the_output_error_on_the_same_grid(symmetric):
    """On held-out rows from the same distribution, GPTQ's codes reproduce X W better than
    rounding on the same grid, and onnxruntime's kernel computes with exactly those codes."""
    rng = np.random.default_rng(1)
    k, n = 256, 32
    weight = rng.standard_normal((k, n)).astype(np.float32)
    rows, heldout = _correlated_rows(rng, (2048, 256), k)
    ratios = np.ones((k // 32, n), np.float32)
    grid = clipped_grid(weight, ratios, 32, symmetric)
    rounded = gptq(weight, rows.T @ rows, grid, 32)
    assert rounded.codes.max() <= 15

    def error(w: np.ndarray) -> float:
        return float(np.square(heldout @ weight - heldout @ w).sum())

    assert error(rounded.dequantized()) < 0.7 * error(round_blockwise(weight, 32, symmetric))
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="m")
    packed, tensors = matmul_nbits(node, rounded, accuracy_level=0)
    session = _matmul_nbits_session([packed], tensors, k, n)
    got = session.run(None, {"x": heldout})[0]
    want = heldout @ rounded.dequantized()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())


def test_codes_with_an_odd_number_of_4_bit_blocks_are_refused_not_packed_wrong():
    """onnxruntime's packer shares zero-point bytes across columns: an odd block count per
    column would shift every later column's zero points, so such a weight is not packable
    (the exporter rounds it to nearest instead); 8-bit codes have no such limit."""
    from mobilevlm.export.gptq import packable

    assert packable(128, 32, 4) and packable(96, 32, 8)
    assert not packable(96, 32, 4)
    weight = np.random.default_rng(2).standard_normal((96, 8)).astype(np.float32)
    rounded = gptq(weight, np.eye(96), clipped_grid(weight, None, 32, False), 32)
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="m")
    with pytest.raises(ValueError, match="3 blocks per column"):
        matmul_nbits(node, rounded, accuracy_level=0)
