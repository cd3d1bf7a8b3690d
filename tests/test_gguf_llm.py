"""The LLM as GGUF, checked inside llama.cpp itself, and the llama.cpp backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from mobilevlm.errors import BundleError, UnsupportedModelError  # noqa: E402
from mobilevlm.export.bundle_export import export_bundle  # noqa: E402
from mobilevlm.export.gguf_llm import (  # noqa: E402
    chat_template,
    check_tokenizer,
    llama_cpp_tokenize,
    quantize_llm,
    repacked_bytes,
    write_llm_gguf,
)
from mobilevlm.generation.prompts import Turn, get_template  # noqa: E402
from mobilevlm.generation.sampling import GenerationConfig  # noqa: E402
from mobilevlm.runtime.llamacpp.model import LlamaDecoder, open_llama  # noqa: E402
from mobilevlm.runtime.loader import load_bundle  # noqa: E402

PROMPT = "What color is the circle in the top left?"


def _llm_state(model) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in model.language_model.state_dict().items()}


def _greedy_torch(model, ids: list[int], count: int) -> list[int]:
    from mobilevlm.reference.backend import TorchBackend

    backend = TorchBackend(model)
    tokens = [int(np.argmax(backend.prefill_prompt(ids, None)))]
    while len(tokens) < count:
        tokens.append(int(np.argmax(backend.decode(tokens[-1]))))
    return tokens


def _greedy_llama(path, ids: list[int], count: int, hidden: int) -> list[int]:
    llama = open_llama(path, context=128, threads=2)
    decoder = LlamaDecoder(llama, hidden)
    try:
        decoder.tokens(ids)
        tokens = [int(np.argmax(decoder.logits()))]
        while len(tokens) < count:
            tokens.append(int(np.argmax(decoder.step(tokens[-1]))))
        return tokens
    finally:
        decoder.close()
        llama.close()


@pytest.fixture(scope="module")
def confident_model(tiny_models):
    """A tiny model whose top-1 choices win by clear margins (a sharpened lm_head), so that
    8-bit rounding may not flip them: greedy agreement then measures the file, not luck."""
    import torch
    from tiny_models import build_tiny_model

    model = build_tiny_model(seed=5, template="chatml")
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def llm_files(confident_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    f16 = root / "llm_f16.gguf"
    write_llm_gguf(
        confident_model.config, _llm_state(confident_model), confident_model.tokenizer, f16
    )
    files = {"f16": f16}
    for precision in ("q8_0", "q4_k_m"):
        files[precision] = root / f"llm_{precision}.gguf"
        quantize_llm(f16, files[precision], precision)
    return files


def test_f16_gguf_decodes_greedily_exactly_like_the_reference(confident_model, llm_files):
    ids = confident_model.tokenizer.encode(PROMPT)
    expected = _greedy_torch(confident_model, ids, 16)
    assert len(set(expected)) > 3  # a real continuation, not one token repeated
    assert _greedy_llama(llm_files["f16"], ids, 16, 64) == expected


def test_q8_0_gguf_agrees_on_at_least_14_of_16_greedy_tokens(confident_model, llm_files):
    ids = confident_model.tokenizer.encode(PROMPT)
    expected = _greedy_torch(confident_model, ids, 16)
    got = _greedy_llama(llm_files["q8_0"], ids, 16, 64)
    assert sum(a == b for a, b in zip(got, expected, strict=True)) >= 14


def test_quantized_files_are_smaller_and_carry_llama_cpp_file_types(llm_files):
    from gguf import GGUFReader

    sizes = {p: f.stat().st_size for p, f in llm_files.items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]
    file_type = GGUFReader(str(llm_files["q8_0"])).fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 7  # LLAMA_FTYPE_MOSTLY_Q8_0


def test_repacked_bytes_are_what_llama_cpp_repacks(tmp_path, capfd):
    """The memory planner counts q4_K matrices twice: llama.cpp's CPU backend copies them
    into its repack buffer at load. A 256-wide LLM makes q4_K tensors (the tiny ones are
    too narrow for 256-blocks); the recorded bytes equal the buffer llama.cpp reports."""
    from dataclasses import replace

    from tiny_models import random_init_, tiny_config, tiny_tokenizer

    from mobilevlm.reference.language_model import build_language_model

    config = tiny_config(template="chatml")
    llm = replace(config.llm, hidden_size=256, intermediate_size=512, head_dim=64)
    config = replace(config, llm=llm, projector=replace(config.projector, output_dim=256))
    lm = random_init_(build_language_model(llm), seed=0, std=0.02)
    state = {k: v.float().numpy() for k, v in lm.state_dict().items()}
    write_llm_gguf(config, state, tiny_tokenizer(llm.vocab_size), tmp_path / "f16.gguf")
    quantize_llm(tmp_path / "f16.gguf", tmp_path / "q4.gguf", "q4_k_m")
    assert repacked_bytes(tmp_path / "f16.gguf") == 0
    counted = repacked_bytes(tmp_path / "q4.gguf")
    capfd.readouterr()
    open_llama(tmp_path / "q4.gguf", context=64, verbose=True).close()
    log = capfd.readouterr().err
    reported = [line for line in log.splitlines() if "CPU_REPACK model buffer size" in line]
    if not reported:
        pytest.skip("llama.cpp repacks nothing on this CPU")
    assert counted > 0
    assert f"{counted / 2**20:.2f} MiB" in reported[0], (counted, reported)


def test_quantizer_notes_are_one_line_per_fallback_kind(llm_files, caplog, capfd, tmp_path):
    """The tiny LLM's rows are too narrow for q4_K's 256-blocks, so llama.cpp's quantizer
    writes a line per tensor; the export says it once per kind, and records the counts."""
    import logging

    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="mobilevlm.export.gguf_llm"):
        details = quantize_llm(llm_files["f16"], tmp_path / "q4.gguf", "q4_k_m")
    assert "falling back" not in capfd.readouterr().err  # nothing per tensor on the terminal
    summary = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert details["fallbacks"] and len(summary) == len(details["fallbacks"])
    assert all(m.startswith("q4_k_m: ") and "fell back from" in m for m in summary)
    verbose = [r.message for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum(m.count("falling back") for m in verbose) == sum(details["fallbacks"].values())


def test_tied_embeddings_are_written_once(tiny_models, tmp_path):
    from gguf import GGUFReader

    model = tiny_models(projector="ldpnetv2", template="chatml", tie_word_embeddings=True)
    path = tmp_path / "tied.gguf"
    write_llm_gguf(model.config, _llm_state(model), model.tokenizer, path)
    names = {t.name for t in GGUFReader(str(path)).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    ids = model.tokenizer.encode(PROMPT)
    assert _greedy_llama(path, ids, 8, 64) == _greedy_torch(model, ids, 8)


def test_byte_level_bpe_round_trips_through_llama_cpp(confident_model, llm_files):
    check_tokenizer(llm_files["f16"], confident_model.tokenizer)  # raises on any difference


def test_smollm2_tokenizer_is_written_as_gpt2_with_the_smollm_pre_tokenizer(tmp_path):
    """The default model's tokenizer: digits one by one, then byte-level BPE."""
    from mobilevlm.config import ClipVisionConfig, LLMConfig, ModelConfig, ProjectorConfig
    from mobilevlm.default_model import smollm2

    tokenizer = smollm2.load_tokenizer(smollm2.locate_gguf())
    llm = LLMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    config = ModelConfig(
        vision=ClipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
        ),
        projector=ProjectorConfig("ldpnetv2", 32, 32),
        llm=llm,
        template="chatml",
    )
    rng = np.random.default_rng(0)
    state = {
        "model.embed_tokens.weight": rng.standard_normal((llm.vocab_size, 32)).astype(np.float32),
        "model.norm.weight": np.ones(32, np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(32, np.float32),
        "model.layers.0.post_attention_layernorm.weight": np.ones(32, np.float32),
        "model.layers.0.self_attn.q_proj.weight": np.zeros((32, 32), np.float32),
        "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 32), np.float32),
        "model.layers.0.self_attn.v_proj.weight": np.zeros((16, 32), np.float32),
        "model.layers.0.self_attn.o_proj.weight": np.zeros((32, 32), np.float32),
        "model.layers.0.mlp.gate_proj.weight": np.zeros((64, 32), np.float32),
        "model.layers.0.mlp.up_proj.weight": np.zeros((64, 32), np.float32),
        "model.layers.0.mlp.down_proj.weight": np.zeros((32, 64), np.float32),
    }
    path = tmp_path / "smollm.gguf"
    details = write_llm_gguf(config, state, tokenizer, path)
    assert details["tokenizer_model"] == "gpt2" and details["tokenizer_pre"] == "smollm"
    check_tokenizer(path, tokenizer, probes=("In 2024, 1234567 shapes!", "  x\n\ny", "日本 émigré"))


def test_sentencepiece_tokenizer_is_written_as_llama_spm(
    tiny_models, sentencepiece_model, tmp_path
):
    """MobileLLaMA's tokenizer.model, converted as checkpoints are loaded, tokenizes inside
    llama.cpp exactly as SentencePiece itself does."""
    import sentencepiece as spm

    from mobilevlm.reference.checkpoint import _original_tokenizer

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False}
    (tmp_path / "ckpt" / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = _original_tokenizer(tmp_path / "ckpt")
    model = tiny_models(projector="ldpnetv2")  # vocab 320 covers the 300 pieces
    path = tmp_path / "spm.gguf"
    details = write_llm_gguf(model.config, _llm_state(model), tokenizer, path)
    assert details["tokenizer_model"] == "llama"
    texts = ["what color is the red circle", "the blue  square is at the top left", "zq 42 ü"]
    sentencepiece = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
    assert llama_cpp_tokenize(path, texts) == [sentencepiece.encode(t) for t in texts]


@pytest.mark.parametrize("template", ["v1", "chatml"])
def test_chat_template_renders_what_the_prompt_templates_render(tiny_models, template):
    from jinja2 import Template

    config = tiny_models(projector="ldpnetv2", template=template).config
    jinja = Template(chat_template(config))
    turns = [Turn("What shape?", "A circle."), Turn("And its color?")]
    messages = [{"role": "user", "content": "What shape?"}]
    messages += [{"role": "assistant", "content": "A circle."}]
    messages += [{"role": "user", "content": "And its color?"}]
    ours = get_template(template).render(turns, with_image=False)
    assert jinja.render(messages=messages, add_generation_prompt=True) == ours
    system = [{"role": "system", "content": "Be brief."}]
    ours = get_template(template).render(turns, system="Be brief.", with_image=False)
    assert jinja.render(messages=system + messages, add_generation_prompt=True) == ours


def test_llm_with_biases_is_refused_with_a_clear_message(tiny_models, tmp_path):
    import dataclasses

    model = tiny_models(projector="ldpnetv2")
    config = dataclasses.replace(
        model.config, llm=dataclasses.replace(model.config.llm, attention_bias=True)
    )
    with pytest.raises(UnsupportedModelError, match="attention/MLP biases"):
        write_llm_gguf(config, _llm_state(model), model.tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the backend on a bundle


@pytest.fixture(scope="module")
def gguf_bundle(tiny_models, tmp_path_factory):
    model = tiny_models(projector="ldpnetv2")
    path = tmp_path_factory.mktemp("bundles") / "gguf"
    manifest = export_bundle(model, path, ["f16", "q8_0"], formats=["gguf"], progress=False)
    return model, path, manifest


def test_gguf_bundle_records_files_parity_and_why_there_is_no_mmproj(gguf_bundle):
    _, path, manifest = gguf_bundle
    assert manifest.gguf_precisions == ("f16", "q8_0") and manifest.precisions == ()
    assert {a.component for a in manifest.artefacts} == {"vision", "llm"}
    assert "24x24" in manifest.exporter["mmproj_skipped"]  # 56 px tiny model
    assert manifest.exporter["parity"]["gguf"]["f16"]["top1_agreement"] == 1.0
    data = json.loads((path / "bundle.json").read_text())
    assert {a["format"] for a in data["artefacts"] if a["component"] == "llm"} == {"gguf"}


def test_hybrid_mode_answers_exactly_like_the_reference(gguf_bundle, rgb_image):
    model, path, _ = gguf_bundle
    config = GenerationConfig(max_new_tokens=12)
    expected = model.generate(rgb_image, PROMPT, config)
    vlm = load_bundle(path, precision="f16", threads=2)
    got = vlm.generate(rgb_image, PROMPT, config)
    assert vlm.variant == "f16/hybrid"
    assert got.token_ids == expected.token_ids and got.text == expected.text
    assert got.stats.image_tokens == model.config.num_image_tokens


def test_sampled_generation_follows_the_shared_sampler(gguf_bundle, rgb_image):
    model, path, _ = gguf_bundle
    config = GenerationConfig(max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    vlm = load_bundle(path, precision="f16", threads=2)
    assert (
        vlm.generate(rgb_image, PROMPT, config).token_ids
        == model.generate(rgb_image, PROMPT, config).token_ids
    )


def test_streaming_yields_the_answer_piece_by_piece(gguf_bundle, rgb_image):
    _, path, _ = gguf_bundle
    vlm = load_bundle(path, precision="q8_0", threads=2)
    pieces: list[str] = []
    result = vlm.generate(rgb_image, PROMPT, GenerationConfig(max_new_tokens=8), pieces.append)
    assert "".join(pieces) == result.text


def test_next_turn_prefills_only_what_is_new(gguf_bundle, rgb_image):
    """The KV cache of the last prompt and answer is kept: a prompt that extends them (the
    next turn of a conversation) runs only its new positions."""
    _, path, _ = gguf_bundle
    vlm = load_bundle(path, precision="f16", threads=2)
    from mobilevlm.generation.decode_loop import prompt_ids

    image = vlm.encode_image(rgb_image)
    first = prompt_ids(vlm.config, vlm.tokenizer, PROMPT)
    vlm.prefill_prompt(first, image)
    assert vlm.last_prefill == len(first) - 1 + len(image)
    answer = [11, 12, 13]
    for token in answer:
        vlm.decode(token)
    follow_up = vlm.tokenizer.encode(" USER: and the square? ASSISTANT:")
    logits = vlm.prefill_prompt(first + answer + follow_up, image).copy()
    assert vlm.last_prefill == len(follow_up)
    vlm.reset()
    again = vlm.prefill_prompt(first + answer + follow_up, image)
    assert vlm.last_prefill == len(first) - 1 + len(image) + len(answer) + len(follow_up)
    np.testing.assert_allclose(again, logits, rtol=1e-4, atol=1e-4)


def test_mtmd_mode_without_an_mmproj_says_why(gguf_bundle):
    _, path, _ = gguf_bundle
    with pytest.raises(BundleError, match="no mmproj for llama.cpp's mtmd: .*24x24"):
        load_bundle(path, precision="f16", mode="mtmd")


def test_corrupted_gguf_is_refused_naming_the_file(gguf_bundle, tmp_path):
    import shutil

    _, path, _ = gguf_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    data = bytearray((copy / "llm_q8_0.gguf").read_bytes())
    data[-100] ^= 0xFF
    (copy / "llm_q8_0.gguf").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="llm_q8_0.gguf: sha256 differs"):
        load_bundle(copy, precision="q8_0", verify="full")


def test_a_prompt_longer_than_the_context_is_a_typed_error(gguf_bundle, rgb_image):
    from mobilevlm.errors import ContextOverflowError

    _, path, _ = gguf_bundle
    vlm = load_bundle(path, precision="f16", threads=2, context=16)
    with pytest.raises(ContextOverflowError, match="the context holds 16"):
        vlm.generate(rgb_image, PROMPT)
    with pytest.raises(ContextOverflowError, match="of the context's 16 are used"):
        vlm.prefill_prompt(list(range(20)), None)
    assert vlm.prefill_prompt([5, 6, 7], None).shape == (vlm.config.llm.vocab_size,)  # usable
