"""Activation-aware scaling and clipping of the int4 decoder: exact in float where they
should be, faithful to the quantizer, and better than plain rounding where they choose."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from mobilevlm.export.activation_scaling import (
    ActivationAware,
    choose_clipping,
    choose_scales,
    clip_blocks,
    fold_target,
    round_blockwise,
)
from mobilevlm.export.decoder_calibration import InputStatistics
from mobilevlm.export.external_data import load_tensor
from mobilevlm.export.onnx_bundle import save_decoder
from mobilevlm.runtime.ort import graph_io


def _run(graph, embeds: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feed = {
        graph_io.INPUT_EMBEDS: embeds[None],
        graph_io.SEQLENS_K: np.array([len(embeds) - 1], np.int32),
        graph_io.TOTAL_SEQUENCE_LENGTH: np.array(len(embeds), np.int32),
    }
    for arg in session.get_inputs():
        if arg.name.startswith("past_"):
            feed[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), np.float32)
    return session.run([graph_io.LOGITS], feed)[0]


def test_scales_folded_into_norms_and_up_columns_leave_the_float_decoder_unchanged(tmp_path):
    """Rows of every scaled weight times s, what feeds it divided by s: the same logits."""
    from tiny_models import build_tiny_model

    model = build_tiny_model()
    source = tmp_path / "decoder.onnx"
    with torch.inference_mode():
        save_decoder(model, source)
    decoder = onnx.load(str(source), load_external_data=False)
    graph = decoder.graph
    arrays = {
        t.name: onnx.numpy_helper.to_array(load_tensor(onnx.TensorProto(), t, tmp_path))
        for t in graph.initializer
    }
    rng = np.random.default_rng(0)
    scaled = [name for name in arrays if fold_target(name) is not None]
    assert {name.rsplit(".", 2)[-2] for name in scaled} == {"qkv_proj", "gate_up_proj", "down_proj"}
    scaling = ActivationAware(
        32, True, {n: rng.uniform(0.25, 4.0, arrays[n].shape[0]).astype(np.float32) for n in scaled}
    )
    del graph.initializer[:]
    graph.initializer.extend(
        onnx.numpy_helper.from_array(scaling.apply(n, a) if scaling.touches(n) else a, n)
        for n, a in arrays.items()
    )
    target = tmp_path / "scaled" / "decoder.onnx"
    target.parent.mkdir()
    onnx.save_model(decoder, str(target))
    embeds = rng.standard_normal((7, model.config.llm.hidden_size)).astype(np.float32)
    want, got = _run(source, embeds), _run(target, embeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_search_rounds_weights_as_onnxruntime_quantizer_does(symmetric):
    """round_blockwise is what MatMulNBits computes with after DefaultWeightOnlyQuantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((96, 40)).astype(np.float32)
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="m")
    stack = onnx.GraphProto()
    stack.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, bits=4)
    nodes = DefaultWeightOnlyQuantizer(config).quantize(node, [stack])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 96])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 40])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", [x], [y], list(stack.initializer[1:])),
        opset_imports=[
            onnx.helper.make_opsetid("", 21),
            onnx.helper.make_opsetid("com.microsoft", 1),
        ],
    )
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    inputs = rng.standard_normal((3, 96)).astype(np.float32)
    got = session.run(None, {"x": inputs})[0]
    want = inputs @ round_blockwise(weight, 32, symmetric)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_chosen_on_rows_lowers_the_output_error_of_rounding(symmetric):
    """The search clips some blocks, not all, and the rounded clipped weight reproduces the
    float product better than the rounded weight, where one ratio for every block does worse
    than no clipping."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((128, 48)).astype(np.float32)
    rows = rng.standard_normal((512, 128)).astype(np.float32)
    ratios = choose_clipping(
        weight, InputStatistics(np.abs(rows).mean(0), rows=rows), 32, symmetric
    )
    # the Gram matrix of the same rows chooses alike, the scales too (on channels of
    # unequal size, where scaling pays)
    gram = InputStatistics(np.abs(rows).mean(0), gram=rows.T @ rows)
    np.testing.assert_array_equal(choose_clipping(weight, gram, 32, symmetric), ratios)
    wide = (rows * rng.uniform(0.05, 5.0, 128)).astype(np.float32)
    chosen = [
        choose_scales(weight, stats, lambda w: round_blockwise(w, 32, symmetric))
        for stats in (
            InputStatistics(np.abs(wide).mean(0), rows=wide),
            InputStatistics(np.abs(wide).mean(0), gram=wide.T @ wide),
        )
    ]
    assert chosen[0][1] == chosen[1][1] > 0
    np.testing.assert_allclose(chosen[0][0], chosen[1][0])
    assert ratios.shape == (4, 48)
    assert 0 < (ratios < 1).mean() < 1
    np.testing.assert_array_equal(clip_blocks(weight, np.ones_like(ratios), 32, symmetric), weight)

    def error(w):
        return float(np.square(rows @ weight - rows @ round_blockwise(w, 32, symmetric)).sum())

    assert error(clip_blocks(weight, ratios, 32, symmetric)) < 0.95 * error(weight)
    assert error(clip_blocks(weight, np.full_like(ratios, 0.9), 32, symmetric)) > error(weight)


def test_the_npu_graphs_separate_projections_take_the_packed_weights_adjustments(tmp_path):
    """Scales, folds and clipping chosen on the CPU graph's packed QKV and gate/up weights,
    applied to the NPU graph's separate projections: the same weights, column for column."""
    from tiny_models import build_tiny_model

    from mobilevlm.export.activation_scaling import SplitProjections
    from mobilevlm.export.qnn_decoder import save_static_decoder

    model = build_tiny_model()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "npu").mkdir()
    with torch.inference_mode():
        save_decoder(model, tmp_path / "cpu" / "decoder.onnx")
        save_static_decoder(model, tmp_path / "npu" / "prefill.onnx", 4, 16)

    def arrays(graph):
        proto = onnx.load(str(graph), load_external_data=False)
        return {
            t.name: onnx.numpy_helper.to_array(load_tensor(onnx.TensorProto(), t, graph.parent))
            for t in proto.graph.initializer
        }

    cpu, npu = arrays(tmp_path / "cpu" / "decoder.onnx"), arrays(tmp_path / "npu" / "prefill.onnx")
    rng = np.random.default_rng(1)
    weights = [n for n in cpu if n.endswith("_proj.weight")]
    adjust = ActivationAware(
        16,
        False,
        {
            n: rng.uniform(0.25, 4.0, cpu[n].shape[0]).astype(np.float32)
            for n in weights
            if fold_target(n) is not None
        },
        clips={
            n: rng.choice([0.5, 0.8, 1.0], (-(-cpu[n].shape[0] // 16), cpu[n].shape[1]))
            for n in weights
        },
    )
    split = SplitProjections(adjust, model.config.llm)
    config = model.config.llm
    for layer in range(config.num_hidden_layers):
        a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        for packed, parts in (
            (f"{a}.qkv_proj", ("q_proj", "k_proj", "v_proj")),
            (f"{m}.gate_up_proj", ("gate_proj", "up_proj")),
            (f"{a}.o_proj", ("o_proj",)),
            (f"{m}.down_proj", ("down_proj",)),
        ):
            prefix = packed.rsplit(".", 1)[0]
            pieces = [f"{prefix}.{part}.weight" for part in parts]
            assert all(split.touches(p) for p in pieces)
            got = np.concatenate([split.apply(p, npu[p]) for p in pieces], axis=1)
            np.testing.assert_array_equal(
                got, adjust.apply(f"{packed}.weight", cpu[f"{packed}.weight"])
            )
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{layer}.{norm}.weight"
            np.testing.assert_array_equal(
                split.apply(name, npu[name]), adjust.apply(name, cpu[name])
            )
    assert not split.touches("lm_head.weight")


def test_gptq_codes_stand_for_the_scaled_folded_and_clipped_weights(
    tiny_models, tmp_path, monkeypatch
):
    """With GPTQ, the int4 decoder stores codes chosen once, before the scales of a down
    projection are folded into its gate/up weight's up columns: each stored weight, 4-bit
    or 8-bit, is still within rounding noise of the float weight the same scales, folds and
    clipping make without GPTQ, and the decoder's logits stay with the fp32 graph's."""
    from dataclasses import replace

    from mobilevlm.export import activation_scaling, quantize

    # scales far from 1 (a tiny model's search chooses them near it), so the folds count
    def scales(weight, stats, rounding):  # the same for a weight in both runs
        seed = np.frombuffer(weight.tobytes()[:8], np.uint64)[0]
        return np.random.default_rng(seed).uniform(0.25, 4.0, len(weight)), 0.5

    monkeypatch.setattr(activation_scaling, "choose_scales", scales)
    model = tiny_models(projector="ldpnetv2")
    config = model.config.llm
    source = tmp_path / "decoder.onnx"
    with torch.inference_mode():
        save_decoder(model, source)
    rng = np.random.default_rng(3)
    calibration = [
        rng.standard_normal((24, config.hidden_size)).astype(np.float32) for _ in range(16)
    ]
    adjust = {}
    for compensation in (False, True):
        recipe = replace(quantize.SMALL_LLM, error_compensation=compensation)
        monkeypatch.setattr(quantize, "int4_recipe", lambda config, recipe=recipe: recipe)
        adjust[compensation] = quantize.int4_adjustments(source, config, calibration)
    # every MatMul but the lm_head: QKV, the output projection, gate/up and down
    assert len(adjust[True].rounded) == 4 * config.num_hidden_layers
    graph = onnx.load(str(source), load_external_data=False).graph
    for tensor in graph.initializer:
        if tensor.name in adjust[True].rounded:
            raw = onnx.numpy_helper.to_array(load_tensor(onnx.TensorProto(), tensor, tmp_path))
            want = adjust[False].apply(tensor.name, raw)
            got = adjust[True].rounded_weight(tensor.name).dequantized()
            assert np.linalg.norm(got - want) < 0.2 * np.linalg.norm(want), tensor.name

    target = tmp_path / "gptq" / "decoder_int4.onnx"
    target.parent.mkdir()
    made = quantize.quantize_decoder_int4(source, target, config, calibration, adjust[True])
    assert "GPTQ" in made["method"]
    assert made["activation_aware"]["weights_gptq"] == 4 * config.num_hidden_layers
    embeds = rng.standard_normal((7, config.hidden_size)).astype(np.float32)
    want, got = _run(source, embeds).ravel(), _run(target, embeds).ravel()
    assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.99
