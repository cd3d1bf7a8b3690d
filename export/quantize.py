"""Quantized variants of the exported graphs, all through onnxruntime.quantization.

Choices measured on the default model (held-out Shapes-VQA, 300 questions,
vision fp32; fp32 decoder 61.0%), see docs/benchmarks.md:

- decoder int8: MatMulNBits with 8-bit weights in blocks of 32 and
  ``accuracy_level`` 4, so activations are quantized to int8 dynamically,
  per block, inside the kernel (60.3%). ``quantize_dynamic``'s MatMulInteger
  quantizes each activation tensor with one scale, and SmolLM2's outlier
  channels cost it 15 points (46.0%).
- decoder int4, a recipe per LLM size (:func:`int4_recipe`). Small LLMs
  (the built-in SmolLM2-135M): weight-only MatMulNBits, 4-bit symmetric
  blocks of 32 for the MLP (three quarters of each layer's weights), 8 bits
  for the attention projections and the lm_head. All-4-bit layers (lm_head
  8-bit) scored 56.0%, this mix 60.0%; 8-bit MLPs with 4-bit attention 61.0%
  but at twice the MLP bytes; a 4-bit lm_head is faster but scored 56.0%.
  LLMs of a billion parameters and more: 4-bit blocks of 128 everywhere but
  the lm_head and ffn_down in the layers llama.cpp's Q4_K_M keeps wider (its
  ``use_more_bits``: the first and last eighth and every third between),
  which get 8 bits. Q4_K_M widens attn_v in those layers too; here V is
  packed into one QKV MatMul, and 8 bits for the whole of it cost more bytes
  per token than Q4_K_M reads, so QKV stays 4-bit: the decoder reads 757 MiB
  per token, Q4_K_M 760. At MobileVLM_V2-1.7B's geometry (2 cores, AVX-512
  VNNI, decoders side by side in one process) this decoded 1.05x as fast as
  8-bit QKV and ffn_down (829 MiB), all-4-bit blocks of 128 (691 MiB) 1.09x-1.18x;
  the small recipe's 999 MiB decoded at 17-24 tokens/s, blocks of 32 cost
  more bytes and were slower.
- vision int8 of a CNN tower (the built-in EfficientNet-Lite0): static QDQ,
  per-channel weights, activations calibrated on sample images with the
  percentile method. Of a transformer tower (CLIP ViT): dynamic int8
  (:func:`quantize_vision_int8`), the fused Attention and every MatMul with
  per-channel int8 weights, activations quantized per call, so they run on
  MLAS's integer GEMM (QAttention, DynamicQuantizeMatMul). At ViT-L/14-336 +
  LDPv2 (2 cores, AVX-512 VNNI) it encoded in 735 ms against fp32's 2,280 ms
  (per-tensor weights: 1,200-1,900 ms), its session peaked at 517 MiB against
  1,461, and its image tokens kept a minimum cosine of 0.9997 to fp32's; the
  static QDQ graph left the fused attention in float and was 0.78x fp32's time.
  The NPU's graph is a static QDQ one of its own (:mod:`mobilevlm.export.qnn_vision`).
  The QDQ weights are uint8 like the activations: with int8
  weights, x86 CPUs without VNNI run u8s8 kernels whose 16-bit intermediate
  sums saturate (onnxruntime's documented caveat).
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mobilevlm.config import LLMConfig
from mobilevlm.export.onnx_decoder import LM_HEAD

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute inside MatMulNBits: several times faster than fp32 on CPU
NBITS_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


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


def _weight_only(
    model: onnx.ModelProto, bits: int, block_size: int = BLOCK_SIZE, **select
) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=bits
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


@dataclass(frozen=True)
class Int4Recipe:
    """Which MatMuls of the int4 decoder keep 8 bits, and the 4-bit block size."""

    name: str
    block_size: int
    eight_bit_attention: bool  # every attention projection (else llama.cpp's layer choice)
    description: str

    def eight_bit(self, node: str, layers: int) -> bool:
        if node == LM_HEAD:
            return True
        if self.eight_bit_attention:
            return ".self_attn." in node
        layer = _layer_of(node)
        return node.endswith(".down_proj") and layer is not None and _more_bits(layer, layers)


SMALL_LLM = Int4Recipe(
    "small-llm",
    BLOCK_SIZE,
    True,
    f"MLP int4 symmetric, blocks of {BLOCK_SIZE}; attention and lm_head int8",
)
LARGE_LLM = Int4Recipe(
    "q4_k_m-like",
    128,
    False,
    "int4 symmetric, blocks of 128; int8 (blocks of 128) for the lm_head and, in the "
    "layers where llama.cpp's Q4_K_M keeps more bits, the down projection",
)
LARGE_LLM_PARAMETERS = 1_000_000_000  # a billion: MobileLLaMA-1.4B and up


def int4_recipe(config: LLMConfig) -> Int4Recipe:
    """The 135M built-in model needs 8-bit attention to stay within 3 points of fp32;
    a 1.4B LLM is quantized the way llama.cpp's Q4_K_M is (see the module docstring)."""
    return LARGE_LLM if config.parameters >= LARGE_LLM_PARAMETERS else SMALL_LLM


def _layer_of(node: str) -> int | None:
    match = re.search(r"layers\.(\d+)\.", node)
    return int(match.group(1)) if match else None


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down Q4_K_M stores as Q6_K."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


@quiet_root_logger()
def quantize_decoder_int4(source: Path, target: Path, config: LLMConfig) -> dict:
    recipe = int4_recipe(config)
    model = onnx.load(str(source))
    layers = config.num_hidden_layers
    eight = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and recipe.eight_bit(n.name, layers)
    ]
    model = _weight_only(model, 4, recipe.block_size, nodes_to_exclude=eight)
    _save(_weight_only(model, 8, recipe.block_size, nodes_to_include=eight), target)
    return {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "recipe": recipe.name,
        "weights": recipe.description,
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


@quiet_root_logger()
def quantize_vision_dynamic(source: Path, target: Path) -> dict:
    """int8 weights per channel for Attention and MatMul; convolutions (the patch
    embedding, the projector's depthwise one) stay float: ConvInteger is slow on CPUs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        # the fused graph's contrib ops defeat shape inference: their outputs are float
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {
        "method": "onnxruntime.quantization.quantize_dynamic (QAttention, DynamicQuantizeMatMul)",
        "weights": "int8 per-channel",
        "activations": "int8, dynamic (per call)",
    }


def quantize_vision_int8(
    source: Path, target: Path, images: list[np.ndarray], transformer: bool
) -> dict:
    """The CPU's int8 vision graph: dynamic for a transformer tower, static QDQ for a CNN."""
    if transformer:
        return quantize_vision_dynamic(source, target)
    return quantize_vision_qdq(source, target, images)
