"""The quantization recipes: which weights get how many bits, per model size and tower."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mobilevlm.config import LLMConfig
from mobilevlm.default_model import SMOLLM2_135M
from mobilevlm.export import quantize
from mobilevlm.export.onnx_bundle import save_decoder
from mobilevlm.export.onnx_vision import export_vision
from mobilevlm.runtime.ort.graph_io import PIXEL_VALUES


def test_the_built_in_llm_keeps_8_bit_attention_and_a_1_4b_llm_gets_the_q4_k_m_like_mix():
    eight = [
        quantize.SMALL_LLM.eight_bit(f"model.layers.{i}.mlp.gate_up_proj", 30) for i in range(30)
    ]
    assert eight == [True, True] + [False] * 28  # the first two layers' MLPs, measured fragile
    assert not quantize.SMALL_LLM.eight_bit("model.layers.0.mlp.down_proj", 2)  # a tiny LLM
    assert SMOLLM2_135M.parameters == pytest.approx(134.5e6, rel=0.01)
    assert LLMConfig().parameters == pytest.approx(1.36e9, rel=0.01)  # MobileLLaMA-1.4B
    assert quantize.int4_recipe(SMOLLM2_135M) is quantize.SMALL_LLM
    assert quantize.int4_recipe(LLMConfig()) is quantize.LARGE_LLM


def test_the_large_recipe_widens_the_layers_llama_cpp_widens():
    recipe = quantize.LARGE_LLM
    wide = {
        layer for layer in range(24) if recipe.eight_bit(f"model.layers.{layer}.mlp.down_proj", 24)
    }
    assert wide == {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23}  # Q4_K_M's use_more_bits
    assert recipe.eight_bit(quantize.LM_HEAD, 24)
    assert not recipe.eight_bit("model.layers.5.self_attn.o_proj", 24)
    assert not recipe.eight_bit("model.layers.0.self_attn.qkv_proj", 24)  # V is packed in
    assert not recipe.eight_bit("model.layers.3.mlp.gate_up_proj", 24)


def _bits(path) -> dict[str, tuple[int, int]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    found = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            found[node.name.rsplit("_Q", 1)[0]] = (attrs["bits"], attrs["block_size"])
    return found


def test_8_bit_blocks_shrink_to_divide_k_and_4_bit_blocks_keep_the_recipe_s_size():
    """The built-in LLM's K of 576 would pad a block of 128 to 640; 64 divides it."""
    recipe = quantize.SMALL_LLM
    assert recipe.blocks(quantize.LM_HEAD, 576, 30) == quantize.Blocks(8, 64)
    assert recipe.blocks("model.layers.0.self_attn.o_proj", 576, 30) == quantize.Blocks(8, 64)
    assert recipe.blocks("model.layers.5.mlp.down_proj", 1536, 30) == recipe.four_bit
    assert recipe.blocks("model.layers.1.mlp.down_proj", 1536, 30) == quantize.Blocks(8, 128)
    assert recipe.four_bit == quantize.Blocks(4, 32, symmetric=False)
    assert quantize.LARGE_LLM.blocks(quantize.LM_HEAD, 2048, 24) == quantize.Blocks(8, 128)


def test_a_large_llm_decoder_gets_4_bit_blocks_of_128_and_8_bits_where_chosen(
    tiny_models, tmp_path, monkeypatch
):
    model = tiny_models(projector="ldpnetv2")
    save_decoder(model, tmp_path / "decoder.onnx")
    monkeypatch.setattr(quantize, "LARGE_LLM_PARAMETERS", 0)  # the tiny LLM counts as large
    made = quantize.quantize_decoder_int4(
        tmp_path / "decoder.onnx", tmp_path / "int4.onnx", model.config.llm
    )
    assert made["recipe"] == quantize.LARGE_LLM.name
    bits = _bits(tmp_path / "int4.onnx")
    layers = model.config.llm.num_hidden_layers
    assert bits[f"model.layers.{layers - 1}.mlp.down_proj"][0] == 8  # the last layer: wide
    for name, (nbits, block) in bits.items():
        assert nbits == (8 if quantize.LARGE_LLM.eight_bit(name, layers) else 4), name
        assert nbits == 8 or block == 128, name


def test_a_vit_tower_gets_a_dynamic_int8_graph_close_to_fp32(tiny_models, tmp_path):
    import onnxruntime

    model = tiny_models(projector="ldpnetv2")
    export_vision(model, tmp_path / "vision.onnx")
    quantize.quantize_vision_int8(tmp_path / "vision.onnx", tmp_path / "int8.onnx", [], True)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QAttention", "DynamicQuantizeLinear"} <= ops and "QuantizeLinear" not in ops
    size = model.config.preprocess.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)

    def run(name):
        session = onnxruntime.InferenceSession(str(tmp_path / name))
        return session.run(None, {session.get_inputs()[0].name: pixels})[0].reshape(-1)

    fp32, int8 = run("vision.onnx"), run("int8.onnx")
    assert np.dot(fp32, int8) / np.linalg.norm(fp32) / np.linalg.norm(int8) > 0.99


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_weights_quantized_one_at_a_time_equal_onnxruntime_s_whole_model_quantizer(
    tiny_models, tmp_path
):
    """The int4 mix written weight by weight from the float graph's data file holds the
    same nodes and the same bytes as MatMulNBitsQuantizer run over the loaded model."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = tiny_models(projector="ldpnetv2")
    source = tmp_path / "decoder.onnx"
    save_decoder(model, source)
    quantize.quantize_decoder_int4(source, tmp_path / "int4.onnx", model.config.llm)

    whole = onnx.load(str(source))
    recipe, layers = quantize.int4_recipe(model.config.llm), model.config.llm.num_hidden_layers
    weights = {t.name: t.dims[0] for t in whole.graph.initializer}
    groups: dict[quantize.Blocks, list[str]] = {}
    for n in whole.graph.node:
        if n.op_type == "MatMul" and n.input[1] in weights:
            blocks = recipe.blocks(n.name, weights[n.input[1]], layers)
            groups.setdefault(blocks, []).append(n.name)
    assert len(groups) >= 2  # 4-bit and 8-bit at least
    for blocks, names in groups.items():
        config = DefaultWeightOnlyQuantConfig(
            block_size=blocks.block_size,
            is_symmetric=blocks.symmetric,
            accuracy_level=4,
            bits=blocks.bits,
        )
        others = [n for group in groups.values() if group is not names for n in group]
        library = MatMulNBitsQuantizer(whole, algo_config=config, nodes_to_exclude=others)
        library.process()
        whole = library.model.model

    streamed = onnx.load(str(tmp_path / "int4.onnx"))
    assert [(n.op_type, n.name, list(n.input)) for n in streamed.graph.node] == [
        (n.op_type, n.name, list(n.input)) for n in whole.graph.node
    ]
    expected, got = _initializers(whole), _initializers(streamed)
    assert got.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    # every large tensor lives in the data file, page-aligned for memory mapping
    offsets = [
        int(next(e.value for e in t.external_data if e.key == "offset"))
        for t in onnx.load(str(tmp_path / "int4.onnx"), load_external_data=False).graph.initializer
        if t.external_data
    ]
    assert offsets and all(offset % 4096 == 0 for offset in offsets)


def test_calibration_a_stride_at_a_time_gives_the_whole_set_s_min_max_ranges(tiny_models, tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    model = tiny_models(projector="ldpnetv2")
    export_vision(model, tmp_path / "vision.onnx", for_npu=True)
    size = model.config.preprocess.image_size
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((3, size, size)).astype(np.float32) for _ in range(6)]
    scales = []
    for name, extra in (("whole", {}), ("strided", quantize.STRIDED)):
        quantize_static(
            tmp_path / "vision.onnx",
            tmp_path / f"{name}.onnx",
            quantize.Calibration(PIXEL_VALUES, images),
            quant_format=QuantFormat.QDQ,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra,
        )
        initializers = _initializers(onnx.load(str(tmp_path / f"{name}.onnx")))
        scales.append({k: v for k, v in initializers.items() if k.endswith("_scale")})
    assert scales[0] and scales[0].keys() == scales[1].keys()
    for name, value in scales[0].items():
        np.testing.assert_array_equal(scales[1][name], value, err_msg=name)
