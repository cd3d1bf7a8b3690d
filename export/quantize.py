"""Quantized variants of the exported graphs, all through onnxruntime.quantization.

- decoder int8: dynamic quantization of every MatMul (int8 weights,
  activations quantized per call): the CPU form.
- decoder int4: weight-only MatMulNBits (symmetric, block 32 by measurement:
  block 64 and 128 were not faster here and lose accuracy), with
  accuracy_level 4 so the CPU kernel multiplies in int8.
- vision int8: static QDQ, per-channel weights, activations calibrated on
  sample images: the form NPU execution providers (QNN, NNAPI) require.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4  # int8 compute in MatMulNBits: several times faster than fp32 on CPU


@contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns through the root logger about every node it skips."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@_quiet_root_logger()
def quantize_decoder_int8(source: Path, target: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        use_external_data_format=True,
        # the fused contrib ops have no ONNX type inference; their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    )
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per-channel"}


@_quiet_root_logger()
def quantize_decoder_int4(source: Path, target: Path, block_size: int = INT4_BLOCK_SIZE) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL
    )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
    return {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "weights": f"int4 symmetric, block {block_size}",
        "accuracy_level": INT4_ACCURACY_LEVEL,
    }


class _Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed images."""

    def __init__(self, input_name: str, images: Iterable[np.ndarray]) -> None:
        self._feeds = iter([{input_name: img[None].astype(np.float32)} for img in images])

    def get_next(self):
        return next(self._feeds, None)


@_quiet_root_logger()
def quantize_vision_qdq(source: Path, target: Path, images: list[np.ndarray]) -> dict:
    """``images``: preprocessed (3, S, S) float32 arrays, as the runtime feeds them."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(
            prepared,
            target,
            _Calibration(input_name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return {
        "method": "onnxruntime.quantization.quantize_static (QDQ)",
        "weights": "int8 per-channel",
        "activations": "uint8, MinMax-calibrated",
        "calibration_images": len(images),
    }
