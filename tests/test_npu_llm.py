"""The LLM on Qualcomm's HTP (the x86-64 simulator in onnxruntime-qnn): static prefill and
decode graphs, whole on the NPU, the CPU decoding from the cache the NPU filled.

The fp32 static graphs are checked against the CPU decoder graph on the CPU (exact to
rounding); a tiny EfficientNet-Lite bundle exported with ``npu="qnn"`` then runs every
split, its tokens equal to the CPU fp32 path's.
"""

from __future__ import annotations

import numpy as np
import pytest

from mobilevlm.errors import BundleError, OptionsError
from mobilevlm.export.bundle_export import check_request, export_bundle
from mobilevlm.export.onnx_bundle import save_decoder
from mobilevlm.export.parity import cosine
from mobilevlm.export.qnn_decoder import save_static_decoder
from mobilevlm.generation.decode_loop import conversation_ids
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.decoder import OnnxDecoder
from mobilevlm.runtime.ort.model import OnnxVLM
from mobilevlm.runtime.ort.providers import CPU, QNN, create_session, resolve_providers
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.static_decoder import SplitDecoder, StaticGraph
from mobilevlm.runtime.pipeline import Pipeline

needs_htp = pytest.mark.skipif(
    not qnn.plugin_devices(),
    reason=f"no {qnn.PLUGIN_PACKAGE} wheel for this platform ({qnn.INSTALL_NPU_EXTRA})",
)
PROMPT = "What color is the circle?"
ROWS, CONTEXT = 8, 64  # the static graphs of the CPU checks


@pytest.fixture(scope="module")
def float_graphs(tiny_models, tmp_path_factory):
    """The tiny LLM's fp32 graphs: the CPU decoder's, and static prefill and decode ones."""
    root = tmp_path_factory.mktemp("static")
    model = tiny_models()
    save_decoder(model, root / "decoder.onnx")
    save_static_decoder(model, root / "prefill.onnx", ROWS, CONTEXT)
    save_static_decoder(model, root / "decode.onnx", 1, CONTEXT)
    return model.config.llm, root


def _static(root, name, config):
    return StaticGraph(create_session(root / name, resolve_providers(["cpu"])), config)


@pytest.mark.parametrize("decode_on", ["static graph", "cpu decoder"])
def test_static_graphs_compute_what_the_cpu_decoder_does(float_graphs, decode_on):
    """Padded chunks, a follow-up prompt over a filled cache, tokens one at a time: the
    same logits and the same cache as the decoder graph, on either side of the hand-off."""
    config, root = float_graphs
    cpu = resolve_providers(["cpu"])
    reference = OnnxDecoder(root / "decoder.onnx", config, CONTEXT, cpu)
    prefill = _static(root, "prefill.onnx", config)
    decode = (
        _static(root, "decode.onnx", config)
        if decode_on == "static graph"
        else OnnxDecoder(root / "decoder.onnx", config, CONTEXT, cpu)
    )
    split = SplitDecoder(config, prefill, decode)
    rng = np.random.default_rng(0)

    def rows(n):
        return rng.standard_normal((n, config.hidden_size)).astype(np.float32)

    for embeds in (rows(19), rows(1), rows(ROWS), rows(5)):  # 3 chunks, then follow-ups
        np.testing.assert_allclose(split.forward(embeds), reference.forward(embeds), atol=1e-5)
        for row in rows(2):
            np.testing.assert_allclose(split.decode(row), reference.decode(row), atol=1e-5)
    length = reference.cache.length
    assert split.cache.length == length == 19 + 1 + ROWS + 5 + 8
    ours, theirs_all = split.cache, reference.cache
    for mine, theirs in zip(
        ours.keys + ours.values, theirs_all.keys + theirs_all.values, strict=True
    ):
        np.testing.assert_allclose(
            mine.numpy()[:, :, :length], theirs.numpy()[:, :, :length], atol=1e-5
        )


def test_a_static_graph_never_reads_what_an_earlier_prompt_left_in_the_cache(float_graphs):
    """The graph reads every cache position (unused ones masked): after a reset, or a
    follow-up that keeps a shorter prefix, the positions past the length are zero again."""
    from mobilevlm.runtime.ort.kv_cache import KVCache

    config, root = float_graphs
    prefill = _static(root, "prefill.onnx", config)
    cache = KVCache(config, CONTEXT)
    rng = np.random.default_rng(1)
    prefill.run(cache, rng.standard_normal((ROWS, config.hidden_size)).astype(np.float32))
    for kept in (3, 0):  # a shorter prefix kept, then a reset
        cache.length = kept
        prefill.run(cache, rng.standard_normal((2, config.hidden_size)).astype(np.float32))
        for buffer in cache.keys + cache.values:
            assert np.any(buffer.numpy()[0, :, kept : kept + 2])
            assert not np.any(buffer.numpy()[0, :, kept + 2 :])


def test_a_cache_of_another_size_or_too_full_is_refused(float_graphs):
    from mobilevlm.errors import ContextOverflowError
    from mobilevlm.runtime.ort.kv_cache import KVCache

    config, root = float_graphs
    prefill = _static(root, "prefill.onnx", config)
    with pytest.raises(ValueError, match="reads 64 past positions, the cache has 32"):
        prefill.run(KVCache(config, 32), np.zeros((2, config.hidden_size), np.float32))
    split = SplitDecoder(config, prefill, _static(root, "decode.onnx", config))
    with pytest.raises(ContextOverflowError, match="65 more positions do not fit"):
        split.forward(np.zeros((CONTEXT + 1, config.hidden_size), np.float32))


def test_npu_parts_are_checked_where_they_are_named(tmp_path):
    with pytest.raises(OptionsError, match="add prefill to the NPU parts"):
        LoadOptions(providers=("qnn",), npu_parts=("vision", "decode"))
    with pytest.raises(OptionsError, match="unknown NPU part 'lm_head'"):
        LoadOptions(npu_parts=("lm_head",))
    assert LoadOptions(npu_parts="prefill").npu_parts == ("prefill",)
    with pytest.raises(BundleError, match="add prefill to --npu-parts"):
        check_request(tmp_path / "b", ["int4"], npu="qnn", npu_parts=["decode"])
    with pytest.raises(BundleError, match="needs --npu"):
        check_request(tmp_path / "b", ["int4"], npu_parts=["vision"])
    with pytest.raises(BundleError, match="export an ONNX precision too"):
        check_request(tmp_path / "b", ["q4_k_m"], ["gguf"], npu="qnn", npu_parts=["prefill"])


@pytest.fixture(scope="module")
def npu_bundle(tmp_path_factory):
    """A tiny EfficientNet-Lite bundle with every part's NPU form (the LLM's included)."""
    if not qnn.plugin_devices():
        pytest.skip(f"no {qnn.PLUGIN_PACKAGE} wheel for this platform")
    from test_npu import _calibration_images
    from tiny_models import build_tiny_efficientnet_model

    root = tmp_path_factory.mktemp("npu_llm")
    images = _calibration_images(root / "images")
    export_bundle(
        build_tiny_efficientnet_model(), root / "bundle", ["fp32", "int4"],
        calibration_dir=images, check_parity=False, npu="qnn", random_weights=True,
    )  # fmt: skip
    return root / "bundle"


@needs_htp
def test_the_logits_keep_a_fixed_range_that_confident_answers_do_not_saturate(npu_bundle):
    """Calibrated, the logits' range clipped the top logits of confident answers into
    ties; every LLM graph quantizes them over a fixed +-128 instead."""
    import onnx
    from onnx.numpy_helper import to_array

    from mobilevlm.export.qnn_llm import LOGITS_RANGE
    from mobilevlm.runtime.ort.graph_io import LOGITS

    for graph in ("prefill_qnn.onnx", "decode_qnn.onnx"):
        proto = onnx.load(str(npu_bundle / graph), load_external_data=False)
        values = {t.name: t for t in proto.graph.initializer}
        (dequantize,) = [n for n in proto.graph.node if n.output[0] == LOGITS]
        scale, zero = (to_array(values[name]) for name in dequantize.input[1:3])
        low, high = -int(zero) * float(scale), (65535 - int(zero)) * float(scale)
        assert low == pytest.approx(-LOGITS_RANGE, rel=1e-3)
        assert high == pytest.approx(LOGITS_RANGE, rel=1e-3)


@needs_htp
def test_manifest_records_the_llm_graphs_their_contexts_and_parity(npu_bundle):
    manifest = BundleManifest.read(npu_bundle)
    for part, rows in (("prefill", 64), ("decode", 1)):
        graph = manifest.find(part, "w16a16", "onnx")
        context = manifest.find(part, "w16a16", EPCONTEXT)
        assert graph.details["rows"] == rows and graph.details["context"] == 256
        assert graph.details["activations"] == "uint16" and graph.details["npu"] == "qnn"
        assert graph.details["weights"] == "uint16 per-channel"
        assert context.details["soc"] == qnn.DEFAULT_SOC
        assert [f.path for f in context.files] == [
            f"{part}_qnn_ctx.onnx",
            f"{part}_qnn_ctx_qnn.bin",
        ]
        parity = graph.details["parity"]
        assert parity["heldout_sequences"] == 2 and parity["simulated"] is True
        assert parity["logits_cosine_min"] > 0.999 and parity["kv_cosine_min"] > 0.999
        assert parity["greedy_agreement"] == {"npu decode": 1.0, "cpu decode": 1.0}


def _layer_pairs(mine, theirs, length: int):
    """Every layer's keys, then values, of two caches over their first ``length`` positions."""
    for a, b in zip(mine.keys + mine.values, theirs.keys + theirs.values, strict=True):
        yield a.numpy()[0, :, :length], b.numpy()[0, :, :length]


def _run(bundle, image, **options):
    pipeline = Pipeline.load(bundle, precision="fp32", **options)
    result = pipeline.generate(image, PROMPT, max_new_tokens=8)
    return result, pipeline


@needs_htp
@pytest.mark.parametrize(
    ("providers", "parts", "where"),
    [
        (("qnn!",), None, (QNN, QNN, QNN)),
        (("qnn!",), ("vision", "prefill"), (QNN, QNN, CPU)),
        (("qnn",), ("prefill", "decode"), (CPU, QNN, QNN)),
        (("qnn",), ("vision",), (QNN, CPU, CPU)),
    ],
)
def test_every_split_answers_as_the_cpu_does(npu_bundle, rgb_image, providers, parts, where):
    expected, _ = _run(npu_bundle, rgb_image)
    got, pipeline = _run(npu_bundle, rgb_image, providers=providers, npu_parts=parts)
    info = pipeline.runtime_info()
    assert (info["vision_provider"], info["prefill_provider"], info["decoder_provider"]) == where
    if where[1] == QNN:  # every LLM graph whole on the NPU, from its precompiled context
        assert info["prefill_nodes"] == {QNN: 1} and info["prefill_source"] == "epcontext"
        assert info["context"] == 256 and info["llm_simulated"] is True
    assert got.token_ids == expected.token_ids


@needs_htp
def test_the_cache_the_npu_fills_is_the_cpu_decoders_own(npu_bundle, rgb_image):
    """The hand-off: after a prompt prefilled on the NPU, the CPU decoder's cache holds
    what its own prefill would have written: every layer's keys and values at cosine >
    0.999 and within 5% (relative root-mean-square), the QDQ graph's error."""
    npu = OnnxVLM.load(npu_bundle, precision="fp32", providers=("qnn",), npu_parts=("prefill",))
    cpu = OnnxVLM.load(npu_bundle, precision="fp32", context=256)
    embeds = cpu.encode_image(rgb_image)
    ids = conversation_ids(cpu.config, cpu.tokenizer, PROMPT)
    assert (
        cosine(npu.prefill_prompt(ids, embeds)[None], cpu.prefill_prompt(ids, embeds)[None]) > 0.999
    )
    assert isinstance(npu.decoder, SplitDecoder)
    mine, theirs = npu.decoder.cache, cpu.decoder.cache
    assert mine.length == theirs.length == len(ids) - 1 + len(embeds)
    for a, b in _layer_pairs(mine, theirs, mine.length):
        assert cosine(a.reshape(1, -1), b.reshape(1, -1))[0] > 0.999
        assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b)  # the QDQ graph's error


@needs_htp
def test_a_conversation_reuses_the_npu_cache(npu_bundle, rgb_image):
    """The second turn prefills only its new positions over the cache the first left on
    the NPU, and holds what the same prompt prefilled from nothing holds: the first
    answer's positions were written by the decode graph there and by the prefill graph
    here (each with its own activation ranges), so every layer's keys and values agree
    at cosine > 0.999, and so does the next token. (The random model's later tokens are
    near ties that such differences may flip.)"""
    pipeline = Pipeline.load(npu_bundle, precision="fp32", providers=("qnn!",))
    chat = pipeline.conversation(rgb_image)
    first = chat.ask(PROMPT, max_new_tokens=6)
    ids = chat._input_ids("And the square?")
    second = chat.ask("And the square?", max_new_tokens=6)
    assert second.stats.cached_tokens >= first.stats.prefill_tokens  # not run again
    fresh = Pipeline.load(npu_bundle, precision="fp32", providers=("qnn!",))
    again = fresh.generate(rgb_image, "And the square?", max_new_tokens=6, input_ids=ids)
    assert again.stats.cached_tokens == 0 and again.token_ids[0] == second.token_ids[0]
    shared = again.stats.prefill_tokens
    mine, theirs = pipeline.model.decoder.cache, fresh.model.decoder.cache
    for a, b in _layer_pairs(mine, theirs, shared):
        assert cosine(a.reshape(1, -1), b.reshape(1, -1))[0] > 0.999
    assert first.token_ids == _run(npu_bundle, rgb_image)[0].token_ids[:6]  # the CPU's


@needs_htp
def test_naming_a_part_the_bundle_has_no_npu_form_of_is_an_error(tmp_path, tiny_models):
    from test_npu import _calibration_images

    bundle = tmp_path / "vision-only"
    export_bundle(
        tiny_models(), bundle, ["fp32"], calibration_dir=_calibration_images(tmp_path / "i"),
        check_parity=False, npu="qnn", npu_parts=["vision"],
    )  # fmt: skip
    manifest = BundleManifest.read(bundle)
    assert not manifest.of("prefill") and not manifest.of("decode")
    with pytest.raises(BundleError, match="no NPU form of the LLM's prefill graph"):
        OnnxVLM.load(bundle, precision="fp32", providers=("qnn",), npu_parts=("prefill",))
    plain = OnnxVLM.load(bundle, precision="fp32", providers=("qnn!",))  # what it has
    assert plain.runtime_info()["prefill_provider"] == CPU


@needs_htp
def test_the_npu_evaluation_resumes_where_it_stopped(npu_bundle, tmp_path, capsys):
    import json

    from mobilevlm.bench import npu_eval

    out = tmp_path / "eval.jsonl"
    variants = "fp32,int4/qnn-prefill,int4/qnn-all"
    npu_eval.main([str(npu_bundle), "--out", str(out), "--n", "2", "--variants", variants])
    npu_eval.main([str(npu_bundle), "--out", str(out), "--n", "3", "--variants", variants])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]  # the first two not asked again
    layers = BundleManifest.read(npu_bundle).model.llm.num_hidden_layers
    for line in lines:
        assert set(line) >= {"fp32", "int4/qnn-prefill", "int4/qnn-all"}
        assert len(line["int4/qnn-prefill"]["kv_cosine"]) == 2 * layers
        assert min(line["int4/qnn-prefill"]["kv_cosine"]) > 0.99
    table = capsys.readouterr().out
    assert "| `int4/qnn-all` |" in table and "3 questions." in table
    # another export's answers are never appended to: the file names its bundle
    other = tmp_path / "other"
    other.mkdir()
    for file in npu_bundle.iterdir():
        (other / file.name).symlink_to(file)
    (other / "bundle.json").unlink()
    manifest = json.loads((npu_bundle / "bundle.json").read_text())
    manifest["artefacts"][0]["files"][0]["sha256"] = "0" * 64  # another export's graph
    (other / "bundle.json").write_text(json.dumps(manifest))
    assert npu_eval.main([str(other), "--out", str(out), "--n", "4", "--variants", variants]) == 2
    assert "its answers are another bundle's" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 3


@needs_htp
def test_a_budget_refuses_adding_the_llm_graphs_to_the_built_in_bundle(tmp_path, monkeypatch):
    """Their export peaks near 3.75 GiB: a smaller budget names the command instead."""
    from mobilevlm.errors import BudgetError
    from mobilevlm.runtime.loader import open_default_bundle

    monkeypatch.setenv("MOBILEVLM_CACHE", str(tmp_path))
    options = LoadOptions(precision="int4", providers=("qnn!",), memory_budget="3GB")
    with pytest.raises(BudgetError, match=r"peaks at about 3\.8 GiB.*--npu-parts vision,prefill"):
        open_default_bundle(options)
    assert not (tmp_path / "bundles").exists()


@needs_htp
def test_everything_on_the_npu_needs_no_cpu_decoder_on_disk(npu_bundle, tmp_path, rgb_image):
    """What docs/npu.md says to ship: with the tokens on the NPU the CPU decoder's files
    are neither loaded nor checked; decoding on the CPU needs them."""
    import shutil

    from mobilevlm.errors import MobileVLMError

    phone = tmp_path / "phone"
    shutil.copytree(npu_bundle, phone)
    for file in phone.glob("decoder_int4.onnx*"):
        file.unlink()
    on_npu = Pipeline.load(phone, precision="int4", providers=("qnn!",))
    assert on_npu.generate(rgb_image, PROMPT, max_new_tokens=2).token_ids
    with pytest.raises(MobileVLMError, match="decoder_int4.onnx"):
        Pipeline.load(phone, precision="int4", providers=("qnn!",), npu_parts=("vision", "prefill"))


@needs_htp
def test_a_billion_parameter_llms_npu_graphs_take_4_bit_blocks(tiny_models, tmp_path):
    """The tiny LLM counted as a billion-parameter one: its NPU graphs are w4a16, the int4
    recipe's 4-bit MatMuls as symmetric blocked DequantizeLinear (the HTP reads blocked
    zero points wrong), scaled and clipped as the CPU int4 decoder is; placed whole, and
    answering from the prompt the NPU prefilled."""
    import onnx
    from test_npu import _calibration_images

    from mobilevlm.export import qnn_llm
    from mobilevlm.export.quantize import int4_recipe

    model = tiny_models()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qnn_llm, "LARGE_LLM_PARAMETERS", 0)
        export_bundle(
            model, tmp_path / "bundle", ["int4"], calibration_dir=_calibration_images(tmp_path),
            check_parity=False, npu="qnn", npu_parts=["prefill", "decode"], random_weights=True,
        )  # fmt: skip
    manifest = BundleManifest.read(tmp_path / "bundle")
    recipe, layers = int4_recipe(model.config.llm), model.config.llm.num_hidden_layers
    for part in ("prefill", "decode"):
        graph = manifest.find(part, "w4a16", "onnx")
        assert manifest.find(part, "w4a16", EPCONTEXT) is not None
        assert graph.details["activation_aware"] is True
        assert "int4 symmetric, blocks of 32" in graph.details["weights"]
        proto = onnx.load(str(tmp_path / "bundle" / graph.files[0].path), load_external_data=False)
        initializers = {t.name: t for t in proto.graph.initializer}
        four_bit = {
            node.output[0].split("_DQ")[0].removesuffix(".weight")
            for node in proto.graph.node
            if node.op_type == "DequantizeLinear"
            and node.input[0] in initializers
            and initializers[node.input[0]].data_type == onnx.TensorProto.INT4
        }
        wanted = {
            f"model.layers.{i}.mlp.{p}"
            for i in range(layers)
            for p in ("gate_proj", "up_proj", "down_proj")
            if not recipe.eight_bit(f"model.layers.{i}.mlp.{p}", layers)
        }
        assert four_bit == wanted and len(wanted) == 3 * layers  # attention, lm_head: 8 bits
        parity = graph.details["parity"]
        assert parity["logits_cosine_min"] > 0.99 and parity["kv_cosine_min"] > 0.99
    pipeline = Pipeline.load(
        tmp_path / "bundle", providers=("qnn!",), npu_parts=("prefill", "decode")
    )
    info = pipeline.runtime_info()
    assert (info["prefill_provider"], info["decoder_provider"]) == (QNN, QNN)
    assert info["prefill_nodes"] == {QNN: 1}
    assert pipeline.generate(None, PROMPT, max_new_tokens=4).token_ids
