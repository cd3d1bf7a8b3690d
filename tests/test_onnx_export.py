"""ONNX export: parity of every graph with the torch reference, the bundle contract, atomicity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from mobilevlm.errors import BundleError
from mobilevlm.export import onnx_bundle
from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.export.parity import compare, parity_prompts, reference_answers
from mobilevlm.files import sha256_file
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.manifest import MANIFEST_FILE, BundleManifest
from mobilevlm.reference.backend import TorchBackend
from mobilevlm.runtime.ort.model import OnnxVLM

GEOMETRIES = {
    "ldpnetv2": dict(projector="ldpnetv2"),
    "ldpnet": dict(projector="ldpnet"),
    "mlp2x_gelu-chatml-tied": dict(
        projector="mlp2x_gelu", template="chatml", tie_word_embeddings=True
    ),
}


@pytest.fixture(scope="module")
def bundles(tiny_models, tmp_path_factory):
    """Each geometry exported once at every precision (with the export's own parity run)."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        name: (tiny_models(**kw), export_bundle(tiny_models(**kw), root / name), root / name)
        for name, kw in GEOMETRIES.items()
    }


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_fp32_bundle_matches_torch(bundles, geometry):
    model, _, path = bundles[geometry]
    answers = reference_answers(TorchBackend(model), parity_prompts(2))
    result = compare(answers, OnnxVLM.load(path, precision="fp32"), greedy=32)
    assert result.image_embeds_rel_error < 1e-4
    assert result.logits_cosine_min >= 0.9999
    assert result.greedy_tokens_identical == 32


def test_efficientnet_tower_exports_with_parity(tmp_path, torch_threads):
    from tiny_models import build_tiny_efficientnet_model

    model = build_tiny_efficientnet_model()
    export_bundle(model.eval(), tmp_path / "b", ["fp32"], check_parity=False)
    answers = reference_answers(TorchBackend(model), parity_prompts(1))
    result = compare(answers, OnnxVLM.load(tmp_path / "b", precision="fp32"))
    assert result.image_embeds_rel_error < 1e-4 and result.logits_cosine_min >= 0.9999


def test_decoder_runs_on_fused_attention_and_quantized_matmuls(bundles):
    _, manifest, path = bundles["ldpnetv2"]
    ops = {}
    for precision in ("fp32", "int8", "int4"):
        graph = onnx.load(
            str(path / manifest.find("decoder", precision).path), load_external_data=False
        ).graph
        ops[precision] = {n.op_type for n in graph.node}
    assert (
        "GroupQueryAttention" in ops["fp32"] and "SkipSimplifiedLayerNormalization" in ops["fp32"]
    )
    assert "MatMul" in ops["fp32"] and "MatMulNBits" not in ops["fp32"]
    for precision in ("int8", "int4"):
        assert "MatMulNBits" in ops[precision] and "MatMul" not in ops[precision]
    vision = onnx.load(str(path / manifest.find("vision", "fp32").path)).graph
    assert "Attention" in {n.op_type for n in vision.node}  # the CLIP tower, fused by ORT
    vision_int8 = onnx.load(str(path / manifest.find("vision", "int8").path)).graph
    assert "QAttention" in {n.op_type for n in vision_int8.node}  # a ViT: dynamic int8


def test_quantized_bundles_report_their_agreement(bundles):
    _, manifest, _ = bundles["ldpnetv2"]
    parity = manifest.exporter["parity"]
    assert set(parity) == {"fp32", "int8", "int4"}
    assert parity["fp32"]["greedy_tokens_identical"] == 32
    for precision in ("int8", "int4"):
        assert 0.0 <= parity[precision]["top1_agreement"] <= 1.0
        assert parity[precision]["logits_cosine_min"] > 0.5  # quantized, not broken


def test_manifest_lists_every_file_with_size_and_sha256(bundles):
    _, manifest, path = bundles["ldpnetv2"]
    data = json.loads((path / MANIFEST_FILE).read_text())
    assert data["format"] == "mobilevlm-bundle" and data["format_version"] == 1
    assert data["num_image_tokens"] == manifest.model.num_image_tokens == 4
    assert data["template"] == "v1" and data["tokenizer"] == "tokenizer.json"
    assert data["model"]["preprocess"]["image_size"] == 56
    listed = set()
    for artefact in manifest.artefacts:
        for f in artefact.files:
            assert (path / f.path).stat().st_size == f.bytes
            assert sha256_file(path / f.path) == f.sha256
            listed.add(f.path)
    on_disk = {p.name for p in path.iterdir()} - {MANIFEST_FILE, "tokenizer.json"}
    assert listed == on_disk
    decoder = manifest.find("decoder", "fp32")
    assert [f.path for f in decoder.files] == ["decoder.onnx", "decoder.onnx.data"]


def test_sampled_decoding_equals_the_reference_with_the_same_seed(bundles):
    model, _, path = bundles["ldpnetv2"]
    config = GenerationConfig(max_new_tokens=20, temperature=0.9, top_k=50, top_p=0.9, seed=7)
    image = np.full((60, 80, 3), 120, np.uint8)
    expected = model.generate(image, "Describe the image.", config)
    got = OnnxVLM.load(path, precision="fp32").generate(image, "Describe the image.", config)
    assert got.token_ids == expected.token_ids and got.text == expected.text


def test_interrupted_export_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_bundle.quantize, "quantize_decoder_int4", fail)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_models(projector="ldpnetv2"), tmp_path / "b", check_parity=False)
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_a_bundle_but_not_other_directories(tiny_models, tmp_path):
    model = tiny_models(projector="ldpnetv2")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"x")
    with pytest.raises(BundleError, match="photos: exists and is not a bundle"):
        export_bundle(model, other, ["fp32"], check_parity=False)
    assert (other / "cat.png").exists()
    target = tmp_path / "b"
    export_bundle(model, target, ["fp32", "int4"], check_parity=False)
    export_bundle(model, target, ["fp32"], check_parity=False)
    assert BundleManifest.read(target).precisions == ("fp32",)
    assert not (target / "decoder_int4.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "photos"]


def test_unknown_precision_is_refused_before_any_work(tiny_models, tmp_path):
    with pytest.raises(BundleError, match="precision fp8 is not one of"):
        export_bundle(tiny_models(projector="ldpnetv2"), tmp_path / "b", ["fp8"])
    assert not (tmp_path / "b").exists()


def test_calibration_directory_without_images_is_a_clear_error(tiny_models, tmp_path):
    from mobilevlm.errors import ImageError

    (tmp_path / "calib").mkdir()
    with pytest.raises(ImageError, match="calib: no calibration images"):
        export_bundle(
            tiny_models(projector="ldpnetv2"),
            tmp_path / "b",
            ["int8"],
            calibration_dir=tmp_path / "calib",
        )
    assert not (tmp_path / "b").exists()


def test_an_export_that_consumes_the_model_writes_the_same_bundle_and_frees_its_weights(
    tmp_path, torch_threads
):
    """``consume``: the stages reordered so the weights go as soon as no stage reads them;
    every file byte for byte what an export that keeps the model writes, the same parity."""
    from tiny_models import build_tiny_model

    kept, consumed = build_tiny_model(), build_tiny_model()
    precisions, formats = ["fp32", "int4", "f16", "q8_0"], ["onnx", "gguf"]
    a = export_bundle(kept, tmp_path / "a", precisions, formats=formats)
    b = export_bundle(consumed, tmp_path / "b", precisions, formats=formats, consume=True)
    assert all(p.device.type == "meta" for p in consumed.parameters())
    assert all(p.device.type == "cpu" for p in kept.parameters())
    files = [[(f.path, f.sha256) for x in m.artefacts for f in x.files] for m in (a, b)]
    assert files[0] == files[1] and len(files[0]) > 6
    assert a.exporter["parity"] == b.exporter["parity"]
    stages = [s["name"] for s in b.exporter["profile"]["stages"]]
    assert stages[:4] == ["inputs", "parity reference", "int4 calibration", "decoder"]
    assert stages[-1] == "parity"
    int4 = b.find("decoder", "int4").details
    assert int4["method"].startswith("activation-aware scaling and clipping")
    aware = int4["activation_aware"]
    assert aware["weights_scaled"] > 0 and aware["weights_clipped"] > 0
    assert 0 < aware["blocks_clipped"] < 1
