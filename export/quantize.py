"""Quantized variants of the exported graphs, all through onnxruntime.quantization.

Choices measured on the default model (held-out Shapes-VQA, 300 questions,
vision fp32; fp32 decoder 61.0%), see docs/benchmarks.md:

- decoder int8: MatMulNBits with 8-bit weights in blocks of 32 and
  ``accuracy_level`` 4, so activations are quantized to int8 dynamically,
  per block, inside the kernel (60.3%). ``quantize_dynamic``'s MatMulInteger
  quantizes each activation tensor with one scale, and SmolLM2's outlier
  channels cost it 15 points (46.0%).
- decoder int4, a recipe per LLM size (:func:`int4_recipe`), both with
  activation-aware scaling and clipping (:mod:`mobilevlm.export.activation_scaling`)
  chosen on calibration sequences before round-to-nearest; issue 35 compared
  it with symmetric and asymmetric RTN, llama.cpp-style k-quant scales, HQQ,
  GPTQ and block sizes 32/64/128 on 1,000 held-out questions
  (docs/benchmarks.md, "int4 weight methods"). The small recipe then lets
  GPTQ choose the codes on the clipped 4-bit grids and the 8-bit ones
  (:mod:`mobilevlm.export.gptq`): teacher-forced top-1 along the reference's
  continuation 94.4% against 90.1% (64 held-out prompts). Small LLMs (the built-in
  SmolLM2-135M): weight-only MatMulNBits, 4-bit asymmetric blocks of 32 for
  the MLP (three quarters of each layer's weights), 8 bits for the attention
  projections, the lm_head and the MLPs of the first two layers (layer 0's
  was the most fragile, torch KL per layer), in blocks of 64 where K = 576
  (128 would pad it to 640) and 128 where K = 1,536: 95.6% against fp32's
  96.6%, 98.2% of answers the same on 1,000 questions, 106.3 MiB read per
  token as before (symmetric RTN with 8-bit blocks of 32: 93.7%, 96.1%).
  4-bit attention cost 11 points with plain rounding.
  LLMs of a billion parameters and more: 4-bit asymmetric blocks of 128
  everywhere but the lm_head and ffn_down in the layers llama.cpp's Q4_K_M
  keeps wider (its ``use_more_bits``: the first and last eighth and every
  third between), which get 8 bits. Q4_K_M widens attn_v in those layers
  too; here V is packed into one QKV MatMul, and 8 bits for the whole of it
  cost more bytes per token than Q4_K_M reads, so QKV stays 4-bit. At
  MobileVLM_V2-1.7B's geometry (2 cores, AVX-512 VNNI, decoders side by side
  in one process) this mix decoded 1.05x as fast as 8-bit QKV and ffn_down,
  all-4-bit blocks of 128 1.09x-1.18x; the small recipe's bytes decoded at
  17-24 tokens/s, blocks of 32 cost more bytes and were slower.
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
from collections.abc import Callable, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.numpy_helper import from_array, to_array

from mobilevlm.config import LLMConfig
from mobilevlm.export.activation_scaling import ActivationAware
from mobilevlm.export.external_data import ExternalData, data_file_name, detached, load_tensor
from mobilevlm.export.gptq import RoundedWeight, matmul_nbits
from mobilevlm.export.onnx_decoder import LM_HEAD

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute inside MatMulNBits: several times faster than fp32 on CPU
NBITS_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


@contextmanager
def quiet_loggers(*names: str):
    """The loggers ``names`` ("": the root) at ERROR while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def quiet_root_logger():
    """onnxruntime.quantization warns through the root logger about every node it skips,
    and its MatMulNBits quantizer logs each node at INFO through a logger of its own."""
    return quiet_loggers("", NBITS_LOGGER)


@dataclass(frozen=True)
class Blocks:
    """How one MatMul's weight is stored: bits, block size along K, zero points or not."""

    bits: int
    block_size: int = BLOCK_SIZE
    symmetric: bool = True


def weight_only(
    source: Path,
    target: Path,
    blocks_of: Callable[[str, int], Blocks | None],
    adjust: ActivationAware | None = None,
    qdq: bool = False,
) -> None:
    """MatMulNBits for every MatMul of the float graph ``source`` (its weights external) in
    ``target``, stored as ``blocks_of(node name, K)`` says (None: left float), one weight at
    a time; ``qdq``: a blocked DequantizeLinear before the MatMul instead (the form an NPU's
    QDQ graph takes).
    ``adjust``: activation-aware scales and clipping, applied to every float tensor they
    touch as it is read (:mod:`mobilevlm.export.activation_scaling`).

    onnxruntime's MatMulNBitsQuantizer loads the whole float model and keeps every weight
    until it saves (the 135M decoder's int8 step peaked 0.9 GB above the export's base;
    a 1.4B decoder holds 5.6 GB of float weights). Its node quantizer does the same work
    here on one weight read from ``source``'s data file, whose result goes straight into
    ``target``'s, so the float model is never in memory."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    floats = {t.name: t for t in graph.initializer}
    quantizers: dict[Blocks, DefaultWeightOnlyQuantizer] = {}
    nodes, quantized, replaced = [], [], set()
    location = data_file_name(target.name)
    with open(target.parent / location, "wb") as file:
        external = ExternalData(file, location)
        for node in graph.node:
            if node.op_type != "MatMul" or node.input[1] not in floats:
                nodes.append(node)
                continue
            blocks = blocks_of(node.name, floats[node.input[1]].dims[0])
            if blocks is None:
                nodes.append(node)
                continue
            if blocks not in quantizers:
                config = DefaultWeightOnlyQuantConfig(
                    block_size=blocks.block_size,
                    is_symmetric=blocks.symmetric,
                    accuracy_level=ACCURACY_LEVEL,
                    bits=blocks.bits,
                    quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                )
                quantizers[blocks] = DefaultWeightOnlyQuantizer(config)
            rounded = adjust.rounded_weight(node.input[1]) if adjust is not None else None
            if rounded is not None and not qdq and blocks == rounded_blocks(rounded):
                packed, made = matmul_nbits(node, rounded, ACCURACY_LEVEL)
                nodes.append(packed)
            else:
                # a graph of its own for this weight: protobuf frees what a message holds
                # only with the message; in the model's graph, it would stay until the end
                weight = onnx.GraphProto()
                load_tensor(weight.initializer.add(), floats[node.input[1]], source.parent)
                _adjust(weight.initializer[0], adjust)
                nodes += quantizers[blocks].quantize(node, [weight])
                made = weight.initializer[1:]
            for tensor in made:
                external.spill(tensor)
                quantized.append(detached(tensor))
            replaced.add(node.input[1])
        # the float tensors left (norms, rotary caches) move across too
        kept = []
        for tensor in graph.initializer:
            if tensor.name not in replaced:
                kept.append(load_tensor(onnx.TensorProto(), tensor, source.parent))
                _adjust(kept[-1], adjust)
                external.spill(kept[-1])
    del graph.initializer[:]
    graph.initializer.extend(kept + quantized)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save_model(model, str(target))


def rounded_blocks(rounded: RoundedWeight) -> Blocks:
    """How GPTQ's codes ``rounded`` are blocked, in the quantizer's terms."""
    return Blocks(rounded.grid.bits, rounded.block_size, rounded.grid.symmetric)


def _adjust(tensor: onnx.TensorProto, adjust: ActivationAware | None) -> None:
    """``tensor`` (loaded) replaced in place by its activation-aware values, if any."""
    if adjust is not None and adjust.touches(tensor.name):
        tensor.CopyFrom(from_array(adjust.apply(tensor.name, to_array(tensor)), tensor.name))


@quiet_root_logger()
def quantize_decoder_int8(source: Path, target: Path) -> dict:
    weight_only(source, target, lambda node, k: Blocks(8))
    return {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "weights": f"int8 symmetric, blocks of {BLOCK_SIZE}",
        "activations": "int8 per block, dynamic (accuracy_level 4)",
    }


@dataclass(frozen=True)
class Int4Recipe:
    """Which MatMuls of the int4 decoder keep 8 bits, and how each is blocked."""

    name: str
    four_bit: Blocks
    eight_bit_block: int  # at most; smaller where K is not a multiple (576: 64)
    eight_bit_attention: bool  # every attention projection (else llama.cpp's layer choice)
    description: str
    # the MLPs of the first layers, the most fragile: one per this many layers of depth (2 of
    # the built-in model's 30; a tiny test LLM's 2 layers keep 4-bit MLPs); 0: none
    eight_bit_mlp_per_layers: int = 0
    # GPTQ's error compensation on the clipped grid (:mod:`mobilevlm.export.gptq`)
    error_compensation: bool = False

    def eight_bit(self, node: str, layers: int) -> bool:
        if node == LM_HEAD:
            return True
        layer = _layer_of(node)
        first = layers // self.eight_bit_mlp_per_layers if self.eight_bit_mlp_per_layers else 0
        if layer is not None and layer < first and ".mlp." in node:
            return True
        if self.eight_bit_attention:
            return ".self_attn." in node
        return node.endswith(".down_proj") and layer is not None and _more_bits(layer, layers)

    def blocks(self, node: str, k: int, layers: int) -> Blocks:
        if not self.eight_bit(node, layers):
            return self.four_bit
        block = self.eight_bit_block
        while k % block and block > 16:  # a padded last block is read like a full one
            block //= 2
        return Blocks(8, block)


SMALL_LLM = Int4Recipe(
    "small-llm",
    Blocks(4, 32, symmetric=False),
    128,
    True,
    "MLP int4 asymmetric, blocks of 32; attention, lm_head and the first two layers' MLPs "
    "int8, blocks of up to 128; GPTQ codes but for the lm_head",
    eight_bit_mlp_per_layers=15,
    error_compensation=True,
)
LARGE_LLM = Int4Recipe(
    "q4_k_m-like",
    Blocks(4, 128, symmetric=False),
    128,
    False,
    "int4 asymmetric, blocks of 128; int8 (blocks of 128) for the lm_head and, in the "
    "layers where llama.cpp's Q4_K_M keeps more bits, the down projection",
)
LARGE_LLM_PARAMETERS = 1_000_000_000  # a billion: MobileLLaMA-1.4B and up


def int4_recipe(config: LLMConfig) -> Int4Recipe:
    """The 135M built-in model keeps 8-bit attention to stay within a point of fp32;
    a 1.4B LLM is quantized the way llama.cpp's Q4_K_M is (see the module docstring)."""
    return LARGE_LLM if config.parameters >= LARGE_LLM_PARAMETERS else SMALL_LLM


def _layer_of(node: str) -> int | None:
    match = re.search(r"layers\.(\d+)\.", node)
    return int(match.group(1)) if match else None


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down Q4_K_M stores as Q6_K."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


def int4_adjustments(
    source: Path, config: LLMConfig, calibration: Sequence[np.ndarray]
) -> ActivationAware:
    """Activation-aware scales and clipping for the 4-bit weights of the int4 recipe, chosen
    on the fp32 decoder graph ``source`` with input-embedding sequences ``calibration``
    (:mod:`mobilevlm.export.decoder_calibration`). The NPU's 4-bit graphs take the same
    ones (:class:`~mobilevlm.export.activation_scaling.SplitProjections`)."""
    from mobilevlm.export.activation_scaling import choose_adjustments
    from mobilevlm.export.decoder_calibration import input_statistics

    recipe = int4_recipe(config)
    layers = config.num_hidden_layers

    def four_bit(node: str) -> bool:
        return not recipe.eight_bit(node, layers)

    def measured(node: str) -> bool:  # the lm_head's input is only the last position's
        return four_bit(node) or (recipe.error_compensation and node != LM_HEAD)

    graph = onnx.load(str(source), load_external_data=False).graph
    weights = [n.input[1] for n in graph.node if n.op_type == "MatMul" and measured(n.name)]
    statistics = input_statistics(source, calibration, weights)
    return choose_adjustments(
        source,
        statistics,
        four_bit,
        recipe.four_bit.block_size,
        recipe.four_bit.symmetric,
        recipe.error_compensation,
        lambda node, k: recipe.blocks(node, k, layers).block_size,
    )


@quiet_root_logger()
def quantize_decoder_int4(
    source: Path,
    target: Path,
    config: LLMConfig,
    calibration: Sequence[np.ndarray] | None = None,
    adjust: ActivationAware | None = None,
) -> dict:
    """``calibration``: input-embedding sequences to choose activation-aware scales and
    clipping on (:func:`int4_adjustments`, unless ``adjust`` holds them already); without
    them, plain round-to-nearest."""
    recipe = int4_recipe(config)
    layers = config.num_hidden_layers
    if adjust is None and calibration:
        adjust = int4_adjustments(source, config, calibration)
    weight_only(source, target, lambda node, k: recipe.blocks(node, k, layers), adjust=adjust)
    made = {
        "method": "onnxruntime MatMulNBitsQuantizer (RTN)",
        "recipe": recipe.name,
        "weights": recipe.description,
        "activations": "int8 per block, dynamic (accuracy_level 4)",
    }
    if adjust is not None:
        made["method"] = "activation-aware scaling and clipping (AWQ-style) + " + (
            "GPTQ on those grids and the 8-bit ones (the lm_head: round-to-nearest), MatMulNBits"
            if adjust.rounded
            else made["method"]
        )
        made["activation_aware"] = {
            "calibration_sequences": len(calibration),
            "calibration_tokens": int(sum(len(s) for s in calibration)),
            **adjust.summary(),
        }
    return made


class Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed images.

    ``set_range`` (with the extra option ``CalibStridedMinMax``, :data:`STRIDED`) makes
    quantize_static calibrate the images a stride at a time: its histogram calibrators
    otherwise keep every intermediate tensor of every image until the last (8.8 GB for 32
    images of the built-in model), then merge them. Min/max ranges come out the same;
    histograms are merged stride by stride at a bin width no coarser than before."""

    def __init__(self, input_name: str, images: Sequence[np.ndarray]) -> None:
        self._input_name, self._images = input_name, list(images)
        self.set_range(0, len(self._images))

    def __len__(self) -> int:
        return len(self._images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self._images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._next, None)
        return None if image is None else {self._input_name: image[None].astype(np.float32)}


STRIDED = {"CalibStridedMinMax": 1}  # one image's intermediate tensors at a time


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
            extra_options=STRIDED,
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
