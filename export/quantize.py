"""Quantized variants of the exported graphs, all through onnxruntime.quantization.

Choices measured on the default model (held-out Shapes-VQA, 300 questions,
vision fp32; fp32 decoder 61.0%), see docs/benchmarks.md:

- decoder int8: MatMulNBits with 8-bit weights in blocks of 32 and
  ``accuracy_level`` 4, so activations are quantized to int8 dynamically,
  per block, inside the kernel (60.3%). ``quantize_dynamic``'s MatMulInteger
  quantizes each activation tensor with one scale, and SmolLM2's outlier
  channels cost it 15 points (46.0%).
- decoder int4: weight-only MatMulNBits, 4-bit symmetric blocks of 32 for
  the MLP (three quarters of each layer's weights), 8 bits for the attention
  projections and the lm_head, the way llama.cpp's Q4_K_M keeps sensitive
  tensors at higher precision (its SmolLM2 Q4_1 file keeps the tied output
  matrix at Q8_0). All-4-bit layers (lm_head 8-bit) scored 56.0%, this mix
  60.0%; 8-bit MLPs with 4-bit attention 61.0% but at twice the MLP bytes.
  4-bit attention decoded no faster (118 vs 118 tokens/s, same run) and
  scored 56.3%; a 4-bit lm_head is faster but scored 56.0%.
- vision int8: static QDQ, per-channel weights, activations calibrated on
  sample images with the percentile method: the form NPU providers (QNN,
  NNAPI) require. Weights are uint8 like the activations: with int8
  weights, x86 CPUs without VNNI run u8s8 kernels whose 16-bit intermediate
  sums saturate (onnxruntime's documented caveat).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import onnx

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute inside MatMulNBits: several times faster than fp32 on CPU
NBITS_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"
LM_HEAD = "lm_head"  # node name in mobilevlm.export.onnx_decoder


@contextmanager
def quiet_root_logger():
    """onnxruntime.quantization warns through the root logger about every node it skips,
    and its MatMulNBits quantizer logs each node at INFO through a logger of its own."""
    loggers = [logging.getLogger(), logging.getLogger(NBITS_LOGGER)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _weight_only(model: onnx.ModelProto, bits: int, **select) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config, **select)
    quantizer.process()
    return quantizer.model.model


def _save(model: onnx.ModelProto, target: Path) -> None:
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data",
        size_threshold=1024,
    )


@quiet_root_logger()
def quantize_decoder_int8(source: Path, target: Path) -> dict:
    _save(_weight_only(onnx.load(str(source)), bits=8), target)
    return {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "weights": f"int8 symmetric, blocks of {BLOCK_SIZE}",
        "activations": "int8 per block, dynamic (accuracy_level 4)",
    }


def _eight_bit_in_int4(model: onnx.ModelProto) -> list[str]:
    """MatMuls the int4 decoder keeps at 8 bits: the attention projections and the lm_head."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and (n.name == LM_HEAD or ".self_attn." in n.name)
    ]


@quiet_root_logger()
def quantize_decoder_int4(source: Path, target: Path) -> dict:
    model = onnx.load(str(source))
    eight = _eight_bit_in_int4(model)
    model = _weight_only(model, bits=4, nodes_to_exclude=eight)
    _save(_weight_only(model, bits=8, nodes_to_include=eight), target)
    return {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "weights": f"MLP int4 symmetric, blocks of {BLOCK_SIZE}; attention and lm_head int8",
        "activations": "int8 per block, dynamic (accuracy_level 4)",
    }


class Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed images."""

    def __init__(self, input_name: str, images: Iterable[np.ndarray]) -> None:
        self._feeds = iter([{input_name: img[None].astype(np.float32)} for img in images])

    def get_next(self):
        return next(self._feeds, None)


@quiet_root_logger()
def quantize_vision_qdq(source: Path, target: Path, images: list[np.ndarray]) -> dict:
    """``images``: preprocessed (3, S, S) float32 arrays, as the runtime feeds them."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    # the percentile calibrator prints its progress: keep stdout for the command's results
    with tempfile.TemporaryDirectory() as tmp, redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(
            prepared,
            target,
            Calibration(input_name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.Percentile,
        )
    return {
        "method": "onnxruntime.quantization.quantize_static (QDQ)",
        "weights": "uint8 per-channel",
        "activations": "uint8, percentile-calibrated",
        "calibration_images": len(images),
    }
