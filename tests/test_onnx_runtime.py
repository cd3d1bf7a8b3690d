"""The ONNX Runtime backend: bundle checks, providers, the in-place KV cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobilevlm.errors import BundleError, ContextOverflowError, ProviderError
from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.manifest import MANIFEST_FILE, BundleManifest
from mobilevlm.runtime.loader import open_bundle
from mobilevlm.runtime.ort.model import OnnxVLM
from mobilevlm.runtime.ort.providers import CPU, resolve_providers
from mobilevlm.runtime.ort.select import select


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "bundle"
    export_bundle(tiny_models(projector="ldpnetv2"), path, check_parity=False)
    return path


@pytest.fixture
def copy(bundle, tmp_path, monkeypatch):
    """A private copy of the bundle (and a private verification cache) to damage."""
    monkeypatch.setenv("MOBILEVLM_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(bundle, tmp_path / "copy")


# ------------------------------------------------------------------ bundle checks


def test_default_precision_is_the_fastest_exported(bundle):
    manifest = BundleManifest.read(bundle)
    chosen = select(manifest)
    assert chosen.precision == "int4" and chosen.vision.precision == "fp32"  # the CPU's best
    assert select(manifest, accelerator=True).vision.precision == "int8"  # the NPU form
    assert select(manifest, "fp32").embeddings.precision == "fp32"
    assert select(manifest, "int8").embeddings.precision == "fp16"
    assert select(manifest, "int4", vision_precision="fp32").vision.precision == "fp32"


def test_missing_precision_names_what_was_exported(bundle):
    with pytest.raises(BundleError, match=r"no fp16 decoder \(exported: fp32, int8, int4\)"):
        open_bundle(bundle, precision="fp16")


def test_missing_file_is_named(copy):
    (copy / "decoder_int4.onnx.data").unlink()
    with pytest.raises(BundleError, match=r"decoder_int4.onnx.data: missing from the bundle"):
        OnnxVLM.load(copy, precision="int4")
    OnnxVLM.load(copy, precision="fp32")  # other precisions stay usable


def test_truncated_file_is_named(copy):
    data = copy / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"decoder.onnx.data: has \d+ bytes, the manifest says"):
        open_bundle(copy, precision="fp32", verify="size")


def test_corruption_is_caught_on_first_load_and_the_check_is_remembered(copy, tmp_path):
    open_bundle(copy, precision="fp32")  # first load hashes and records the files
    record = json.loads((tmp_path / "cache" / "verified-files.json").read_text())
    assert any(k.endswith("decoder.onnx.data") for k in record)
    data = copy / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))  # same size, new mtime: hashed again
    with pytest.raises(BundleError, match=r"decoder.onnx.data: sha256 differs"):
        open_bundle(copy, precision="fp32")
    open_bundle(copy, precision="fp32", verify="size")  # sizes alone cannot tell


def test_other_format_versions_and_foreign_directories_are_refused(copy, tmp_path):
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        open_bundle(copy)
    with pytest.raises(BundleError, match="bundle.json: missing: not a bundle"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="no such bundle directory"):
        open_bundle(tmp_path / "nowhere")


# ------------------------------------------------------------------ providers


def test_unavailable_providers_fall_back_to_cpu_in_order():
    available = ["XnnpackExecutionProvider", CPU]
    chosen = resolve_providers(["qnn", "xnnpack", "cpu"], available)
    assert [name for name, _ in chosen] == ["XnnpackExecutionProvider", CPU]
    assert resolve_providers(["coreml"], available) == [(CPU, {})]


def test_required_provider_that_is_missing_is_an_error():
    with pytest.raises(ProviderError, match="QNNExecutionProvider is required"):
        resolve_providers(["qnn!"], [CPU])


def test_provider_options_and_names():
    qnn = dict(resolve_providers(["QNNExecutionProvider!"], ["QNNExecutionProvider", CPU]))
    # the plugin's own HTP library where onnxruntime-qnn is installed, else the device's
    assert Path(qnn["QNNExecutionProvider"]["backend_path"]).name == "libQnnHtp.so"
    assert qnn["QNNExecutionProvider"]["htp_performance_mode"] == "burst"
    tuned = resolve_providers(
        ["qnn", "cpu"],
        ["QNNExecutionProvider", CPU],
        options={"htp_performance_mode": "balanced", "ep.context_enable": "1"},
    )
    assert tuned[0][1]["htp_performance_mode"] == "balanced"
    assert "ep.context_enable" not in tuned[0][1] and tuned[1] == (CPU, {})
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu'"):
        resolve_providers(["tpu"], [CPU])


def test_this_onnxruntime_reports_the_cpu_provider():
    import onnxruntime

    assert resolve_providers(["cpu"])[-1][0] == CPU
    assert CPU in onnxruntime.get_available_providers()


# ------------------------------------------------------------------ decoding


def test_decode_steps_reuse_the_bound_buffers(bundle):
    model = OnnxVLM.load(bundle, precision="fp32", context=64)
    decoder = model.decoder
    keys_before = [k.data_ptr() for k in decoder.cache.keys]
    logits_first = model.prefill(model.embed_tokens([1, 5, 9, 11]))
    logits_ptr = logits_first.ctypes.data
    for token in (3, 4, 5):
        logits = model.decode(token)
        assert logits.ctypes.data == logits_ptr  # the bound output buffer, not a new array
    assert [k.data_ptr() for k in decoder.cache.keys] == keys_before
    assert decoder.cache.length == 7
    assert decoder.cache.nbytes == 2 * 2 * 2 * 64 * 16 * 4  # layers, k+v, kv heads, ctx, dim


def test_cache_reset_reproduces_the_same_logits(bundle):
    model = OnnxVLM.load(bundle, precision="fp32", context=64)
    runs = []
    for _ in range(2):
        model.reset()
        model.prefill(model.embed_tokens([1, 5, 9]))
        runs.append(model.decode(7).copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_context_is_enforced(bundle):
    model = OnnxVLM.load(bundle, precision="fp32", context=8)
    with pytest.raises(ContextOverflowError, match="9 more positions do not fit"):
        model.prefill(model.embed_tokens(list(range(9))))
    model.reset()
    model.prefill(model.embed_tokens(list(range(8))))
    with pytest.raises(ContextOverflowError, match="8 positions are used"):
        model.decode(3)
    with pytest.raises(ContextOverflowError, match="the context holds 8"):
        model.generate(np.zeros((32, 32, 3), np.uint8), "hello there, how are you")


def test_generation_stops_when_the_context_is_full(bundle):
    model = OnnxVLM.load(bundle, precision="fp32", context=140)
    result = model.generate(None, "hi", GenerationConfig(max_new_tokens=200))
    assert result.stats.stop_reason == "context_full"
    assert result.stats.prefill_tokens + result.stats.generated_tokens == 141


def test_a_bundle_loads_with_accelerator_preferences_this_onnxruntime_lacks(bundle):
    model = OnnxVLM.load(bundle, precision="int4", providers=["nnapi", "coreml", "xnnpack"])
    assert model.decoder.session.get_providers() == [CPU]
    assert model.vision.session.get_providers() == [CPU]
    assert model.generate(None, "hi", GenerationConfig(max_new_tokens=3)).stats.generated_tokens


def test_the_decoder_stays_on_the_cpu_behind_an_npu(bundle):
    """QNN (where onnxruntime-qnn is installed) takes what it can of the vision graph; a
    bundle without an NPU graph still loads and answers, its decoder on the CPU."""
    model = OnnxVLM.load(bundle, precision="int4", providers=["qnn", "cpu"])
    assert model.decoder.session.get_providers() == [CPU]
    assert model.runtime_info()["decoder_provider"] == CPU
    assert model.generate(None, "hi", GenerationConfig(max_new_tokens=3)).stats.generated_tokens


def test_embedding_rows_are_read_from_the_file_not_mapped(tmp_path):
    """The table stays out of the process's resident memory: rows come from positioned
    reads, equal to the array's, in the order asked; a short file is refused."""
    from mobilevlm.runtime.ort.embeddings import EmbeddingTable

    rows = np.random.default_rng(0).standard_normal((300, 48)).astype(np.float16)
    path = tmp_path / "embeddings_fp16.npy"
    np.save(path, rows)
    table = EmbeddingTable(path, rows.shape)
    assert np.array_equal(table[[7, 3, 7]], rows[[7, 3, 7]].astype(np.float32))
    assert table[299].dtype == np.float32 and np.array_equal(table[299], rows[299])
    with open("/proc/self/maps", encoding="ascii") as maps:
        assert str(path) not in maps.read()
    with pytest.raises(IndexError):
        table[300]
    with pytest.raises(BundleError, match="shape"):
        EmbeddingTable(path, (300, 64))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match="truncated"):
        EmbeddingTable(path, rows.shape)
