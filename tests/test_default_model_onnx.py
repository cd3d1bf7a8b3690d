"""The default model exported to ONNX: parity with torch, and accuracy per precision (slow)."""

from __future__ import annotations

import pytest
from conftest import REPO

from mobilevlm import shapes_vqa

INT8_MAX_DROP = 0.01  # accuracy points an int8 bundle may lose against fp32
INT4_MAX_DROP = 0.03
SMALL_SAMPLE = 40  # held-out questions of the light comparison in the default run


@pytest.fixture(scope="module")
def default_model(torch_threads):
    from mobilevlm.default_model.assemble import load_default_model

    return load_default_model()


@pytest.fixture(scope="module")
def fp32_bundle(default_model, tmp_path_factory):
    """The default model in every ONNX precision, checked against torch."""
    from mobilevlm.export.bundle_export import export_bundle

    path = tmp_path_factory.mktemp("default") / "bundle"
    return export_bundle(default_model, path, ["fp32", "int8", "int4"]), path


def test_fp32_bundle_matches_torch(fp32_bundle):
    manifest, _ = fp32_bundle
    parity = manifest.exporter["parity"]["fp32"]
    assert parity["image_embeds_rel_error"] < 1e-4
    assert parity["logits_cosine_min"] >= 0.9999
    assert parity["greedy_tokens_identical"] == 32


def test_fp32_bundle_answers_the_demo_question(fp32_bundle):
    from mobilevlm.runtime.ort.model import OnnxVLM

    vlm = OnnxVLM.load(fp32_bundle[1], precision="fp32")
    result = vlm.generate(REPO / "examples" / "shapes.png", "What color is the circle?")
    assert shapes_vqa.is_correct(result.text, "red", "color"), result.text
    assert vlm.generate(None, "What is the capital of France?").text.strip().startswith("Paris")


def test_quantized_precisions_keep_accuracy_on_a_small_fixed_sample(fp32_bundle):
    """The light version of the comparison below: the first held-out questions, each
    precision in a process of its own, as `mobilevlm eval --variants` runs them."""
    from mobilevlm.bench.evaluate import compare
    from mobilevlm.bench.variants import parse_variant

    variants = [parse_variant(p) for p in ("fp32", "int8", "int4")]
    rows = compare(fp32_bundle[1], variants, "shapes-vqa", SMALL_SAMPLE)
    accuracy = {r.name: r.report.accuracy() for r in rows}
    assert accuracy["int8"] >= accuracy["fp32"] - INT8_MAX_DROP, accuracy
    assert accuracy["int4"] >= accuracy["fp32"] - INT4_MAX_DROP, accuracy


@pytest.mark.slow
def test_quantized_bundles_keep_held_out_accuracy(default_model, tmp_path):
    """The issue's targets: int8 within 1 point and int4 within 3 of fp32 (300 questions)."""
    from mobilevlm.bench.evaluate import evaluate, shapes_vqa_items
    from mobilevlm.export.bundle_export import export_bundle
    from mobilevlm.runtime.ort.model import OnnxVLM

    export_bundle(default_model, tmp_path / "b", check_parity=False)
    items = list(shapes_vqa_items(300))
    accuracy = {
        p: evaluate(OnnxVLM.load(tmp_path / "b", precision=p), items, "shapes-vqa").accuracy()
        for p in ("fp32", "int8", "int4")
    }
    assert accuracy["int8"] >= accuracy["fp32"] - INT8_MAX_DROP, accuracy
    assert accuracy["int4"] >= accuracy["fp32"] - INT4_MAX_DROP, accuracy


@pytest.mark.slow
def test_llama_cpp_hybrid_keeps_held_out_accuracy(default_model, tmp_path):
    """The default model on llama.cpp (hybrid: ONNX vision, GGUF LLM): f16 within 1 point of
    the torch reference, q4_k_m within 3 (300 questions)."""
    pytest.importorskip("llama_cpp")
    from mobilevlm.bench.evaluate import evaluate, shapes_vqa_items
    from mobilevlm.export.bundle_export import export_bundle
    from mobilevlm.runtime.loader import load_bundle

    manifest = export_bundle(default_model, tmp_path / "b", ["f16", "q4_k_m"], formats=["gguf"])
    assert manifest.exporter["parity"]["gguf"]["f16"]["top1_agreement"] == 1.0
    items = list(shapes_vqa_items(300))
    reference = evaluate(default_model, items, "shapes-vqa").accuracy()
    accuracy = {
        p: evaluate(load_bundle(tmp_path / "b", precision=p), items, "shapes-vqa").accuracy()
        for p in ("f16", "q4_k_m")
    }
    assert accuracy["f16"] >= reference - INT8_MAX_DROP, (reference, accuracy)
    assert accuracy["q4_k_m"] >= reference - INT4_MAX_DROP, (reference, accuracy)


def test_pipeline_conversation_on_the_default_model(fp32_bundle):
    """Two turns about the demo image: the second reuses the first from the KV cache, and
    both answers are right."""
    from mobilevlm.runtime import Pipeline

    vlm = Pipeline.load(fp32_bundle[1], precision="fp32")
    chat = vlm.conversation(REPO / "examples" / "shapes.png")
    first = chat.ask("What color is the circle?")
    second = chat.ask("Where is the red circle?")
    assert shapes_vqa.is_correct(first.text, "red", "color"), first.text
    assert shapes_vqa.is_correct(second.text, "top left", "position"), second.text
    assert second.stats.cached_tokens >= first.stats.prefill_tokens
    assert (vlm.cache_misses, vlm.cache_hits) == (1, 1)


def test_a_text_question_after_an_image_turn_keeps_its_language(fp32_bundle):
    from mobilevlm.runtime import Pipeline

    chat = Pipeline.load(fp32_bundle[1], precision="fp32").conversation(
        REPO / "examples" / "shapes.png"
    )
    chat.ask("What color is the circle?")
    assert "Paris" in chat.ask("What is the capital of France?").text
