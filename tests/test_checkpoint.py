"""Checkpoint loading: the published MobileVLM layout and the project's own, both lossless."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import write_original

from mobilevlm.errors import CheckpointError, UnsupportedModelError
from mobilevlm.reference.checkpoint import detect_layout, load_checkpoint, save_checkpoint

LLM_KEYS = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{name}.weight"
        for i in range(2)
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ),
}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def logits(model, image):
    with torch.no_grad():
        return model(model.prompt_ids("What color is the circle?"), model.pixel_values(image))


@pytest.mark.parametrize("projector", ["ldpnet", "ldpnetv2", "mlp2x_gelu", "linear"])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_original_layout_loads_into_the_same_model(
    tiny_models, tmp_path, rgb_image, projector, weights
):
    model = tiny_models(projector=projector)
    ckpt, clip = write_original(model, tmp_path / "MobileVLM-tiny", weights=weights)
    assert detect_layout(ckpt) == "original"
    loaded = load_checkpoint(ckpt)
    assert loaded.config == model.config
    assert_same_weights(loaded, model)
    torch.testing.assert_close(logits(loaded, rgb_image), logits(model, rgb_image))


def test_original_files_carry_the_published_key_names(tiny_models, tmp_path):
    ckpt, clip = write_original(tiny_models(projector="ldpnetv2"), tmp_path / "m")
    llm_keys = set(load_file(ckpt / "model.safetensors"))
    projector_keys = {k for k in llm_keys if k.startswith("model.mm_projector.")}
    assert llm_keys - projector_keys == LLM_KEYS
    assert projector_keys == {
        f"model.mm_projector.{p}.{w}"
        for p in ("mlp.mlp.0", "mlp.mlp.2", "peg.peg.0")
        for w in ("weight", "bias")
    }
    clip_keys = set(load_file(clip / "model.safetensors"))
    assert "vision_model.embeddings.patch_embedding.weight" in clip_keys
    assert "vision_model.encoder.layers.2.self_attn.q_proj.weight" in clip_keys
    assert all(k.startswith("vision_model.") for k in clip_keys)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["mm_projector_type"] == "ldpnetv2" and config["mm_hidden_size"] == 32


def test_vision_tower_directory_can_be_given_explicitly(tiny_models, tmp_path, rgb_image):
    model = tiny_models(projector="ldpnet")
    ckpt, clip = write_original(model, tmp_path / "m")
    config = json.loads((ckpt / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"  # a hub name, as published
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="--vision-tower DIR"):
        load_checkpoint(ckpt)
    loaded = load_checkpoint(ckpt, vision_tower=clip)
    torch.testing.assert_close(logits(loaded, rgb_image), logits(model, rgb_image))


def test_tower_weights_saved_inside_the_checkpoint_take_precedence(tiny_models, tmp_path):
    model = tiny_models(projector="ldpnetv2")
    ckpt, clip = write_original(model, tmp_path / "m")
    weights = load_file(ckpt / "model.safetensors")
    clip_weights = load_file(clip / "model.safetensors")
    moved = {f"model.vision_tower.vision_tower.{k}": v + 1.0 for k, v in clip_weights.items()}
    save_file({**weights, **moved}, str(ckpt / "model.safetensors"))
    loaded = load_checkpoint(ckpt)
    torch.testing.assert_close(
        loaded.vision_tower.vision_model.embeddings.patch_embedding.weight,
        model.vision_tower.vision_model.embeddings.patch_embedding.weight + 1.0,
    )


def test_own_layout_round_trip_is_lossless(tiny_models, tmp_path, rgb_image):
    model = tiny_models(projector="ldpnet")
    first = save_checkpoint(model, tmp_path / "a")
    assert detect_layout(first) == "own"
    assert {p.name for p in first.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    loaded = load_checkpoint(first)
    second = save_checkpoint(loaded, tmp_path / "b")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert_same_weights(loaded, model)
    assert loaded.config == model.config
    torch.testing.assert_close(logits(loaded, rgb_image), logits(model, rgb_image))


def test_tied_embeddings_are_stored_once_and_stay_tied(tiny_models, tmp_path):
    model = tiny_models(projector="mlp2x_gelu", tie_word_embeddings=True, template="chatml")
    path = save_checkpoint(model, tmp_path / "tied")
    assert "language_model.lm_head.weight" not in load_file(path / "model.safetensors")
    loaded = load_checkpoint(path)
    lm = loaded.language_model
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert_same_weights(loaded, model)


def test_saving_over_an_existing_checkpoint_replaces_it_atomically(tiny_models, tmp_path):
    path = save_checkpoint(tiny_models(projector="linear"), tmp_path / "ck")
    save_checkpoint(tiny_models(projector="linear"), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_saving_never_replaces_a_directory_that_is_not_a_checkpoint(tiny_models, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(CheckpointError, match="photos: exists and is not a mobilevlm checkpoint"):
        save_checkpoint(tiny_models(projector="linear"), precious)
    assert (precious / "holiday.jpg").read_bytes() == b"jpeg"


def test_a_failed_save_leaves_nothing_behind(tiny_models, tmp_path, monkeypatch):
    import mobilevlm.reference.checkpoint as checkpoint

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(tiny_models(projector="linear"), tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_named(tiny_models, tmp_path):
    ckpt, _ = write_original(tiny_models(projector="ldpnetv2"), tmp_path / "m")
    weights = load_file(ckpt / "model.safetensors")
    del weights["model.mm_projector.peg.peg.0.weight"]
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensors: projector.peg.peg.0.weight"):
        load_checkpoint(ckpt)


def test_unknown_projector_names_the_config(tiny_models, tmp_path):
    ckpt, _ = write_original(tiny_models(projector="ldpnetv2"), tmp_path / "m")
    config = json.loads((ckpt / "config.json").read_text())
    config["mm_projector_type"] = "qformer"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"config.json: projector type 'qformer'"):
        load_checkpoint(ckpt)


def test_corrupt_weights_and_foreign_directories_are_refused(tiny_models, tmp_path):
    path = save_checkpoint(tiny_models(projector="linear"), tmp_path / "ck")
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights"):
        load_checkpoint(path)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="not a MobileVLM checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")


def test_sentencepiece_tokenizer_model_is_converted(tiny_models, tmp_path, sentencepiece_model):
    """Published MobileLLaMA checkpoints ship tokenizer.model only (no tokenizer.json)."""
    from transformers import LlamaTokenizerFast

    model = tiny_models(projector="ldpnetv2")
    ckpt, _ = write_original(model, tmp_path / "m")
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.model").write_bytes(sentencepiece_model.read_bytes())
    (ckpt / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "legacy": False,
            }
        )
    )
    loaded = load_checkpoint(ckpt)
    reference = LlamaTokenizerFast.from_pretrained(str(ckpt))
    text = "what color is the circle"
    assert loaded.tokenizer.encode(text, add_special_tokens=True) == reference(text).input_ids
    assert loaded.tokenizer.bos_token_id == 1
