"""The training recipe's sequences are exactly what the runtime sends, turn after turn."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevlm import shapes_vqa
from mobilevlm.errors import CheckpointError
from mobilevlm.generation.prompts import Turn, get_template


@pytest.mark.parametrize("template", ["chatml", "v1"])
def test_conversation_tokens_equal_the_runtime_prompt_and_answers(tiny_models, template):
    from mobilevlm.training.data import QA, encode_conversation

    model = tiny_models(template=template)
    turns = [QA("What color is the star?", "red"), QA("How many shapes are there?", "3")]
    seq = encode_conversation(model, turns)
    stop = get_template(template).stop_strings[0]
    # the first turn is exactly `run`'s prompt, followed by the answer and the stop string
    first = model.prompt_ids(turns[0][0])
    assert seq.ids[: len(first)] == first
    assert all(label == -100 for label in seq.labels[: len(first)])
    # labels are the answers with their stop strings, nothing else
    supervised = [t for t, label in zip(seq.ids, seq.labels, strict=True) if label != -100]
    space = " " if template == "v1" else ""  # v1 writes "ASSISTANT: {answer}</s>"
    answers = [model.tokenizer.encode(f"{space}{a}{stop}") for a in ("red", "3")]
    assert supervised == answers[0] + answers[1]
    # the second turn's prompt is the template's rendering of the whole history
    text = get_template(template).render([Turn(*turns[0][:2]), Turn(turns[1][0])])
    second = model.tokenizer.encode_prompt(text)
    assert seq.ids[: len(second)] == second


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch():
    from mobilevlm.training.config import TrainConfig
    from mobilevlm.training.data import _batch

    config = TrainConfig(batch_size=4)
    assert _batch(config, 3, 10) == _batch(config, 3, 10)
    epoch = [i for step in range(5) for i in _batch(config, step, 20)]
    assert sorted(epoch) == list(range(20))


def test_conversations_end_with_the_caption_listing_every_object():
    from mobilevlm.training.config import TrainConfig
    from mobilevlm.training.data import conversation

    scene = shapes_vqa.sample("train", 0).scene
    config = TrainConfig(max_turns=3, caption_rate=1.0)
    turns = conversation(scene, np.random.default_rng(0), config, replay=[])
    assert 2 <= len(turns) <= 4
    assert turns[-1][1] == shapes_vqa.describe(scene)
    assert turns[-1][1].count(",") == len(scene.objects) - 1


def test_question_kinds_follow_the_training_weights():
    from mobilevlm.training.config import TrainConfig, kind_weights
    from mobilevlm.training.data import QA, conversation

    p = kind_weights("count=2,exists=0")
    assert p[shapes_vqa.KINDS.index("count")] == 2 * p[shapes_vqa.KINDS.index("color")]
    assert p[shapes_vqa.KINDS.index("exists")] == 0 and p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown question kind 'size'"):
        TrainConfig(kind_weights="size=2")  # refused before any work is done
    with pytest.raises(ValueError, match="not all 0"):
        kind_weights("color=0,shape=0,count=0,count_color=0,position=0,exists=0")
    # only counting asked, and every conversation carries the one replayed text turn
    config = TrainConfig(
        kind_weights="color=0,shape=0,position=0,exists=0,count_color=0",
        caption_rate=0.0,
        text_turn_rate=1.0,
    )
    replay = [QA("What is the capital of Spain?", "Madrid.", replay=True)]
    for seed in range(5):
        scene = shapes_vqa.sample("train", seed).scene
        turns = conversation(scene, np.random.default_rng(seed), config, replay)
        assert [t.replay for t in turns].count(True) == 1 and not turns[0].replay
        assert all(t.question.startswith("How many shapes") for t in turns if not t.replay)


def test_replayed_text_answers_are_marked_and_weighted_on_their_own(torch_threads):
    """Text-only turns are tokenized as the runtime sends them without an image; their
    labels are marked, and the loss is the answers' mean plus text_weight times theirs,
    whatever the LLM's row grouping."""
    from peft import get_peft_model
    from tiny_models import build_tiny_model

    from mobilevlm.default_model.assemble import lora_config
    from mobilevlm.training.data import QA, encode_conversation
    from mobilevlm.training.losses import answer_loss

    torch = torch_threads
    model = build_tiny_model(template="chatml")
    text = QA("What is the capital of Spain?", "Madrid.", replay=True)
    alone = encode_conversation(model, [text], with_image=False)
    assert alone.ids[: len(model.prompt_ids(text.question, with_image=False))] == (
        model.prompt_ids(text.question, with_image=False)
    )
    marked = [lab for lab, r in zip(alone.labels, alone.replay, strict=True) if r]
    assert marked == [lab for lab in alone.labels if lab != -100]
    mixed = encode_conversation(model, [QA("What color is the star?", "red"), text])
    first_answer = [lab for lab, r in zip(mixed.labels, mixed.replay, strict=True) if not r]
    assert [lab for lab in first_answer if lab != -100] == model.tokenizer.encode("red<|im_end|>")

    model.language_model = get_peft_model(model.language_model, lora_config(4, 8))
    images = torch.randn(2, model.config.num_image_tokens, model.config.llm.hidden_size)
    plain = encode_conversation(model, [QA("How many shapes are there?", "3")])
    with torch.no_grad():
        answers, stats = answer_loss(model, images, [plain, mixed], text_weight=0.0)
        both, _ = answer_loss(model, images, [plain, mixed, alone], text_weight=0.5, rows=1)
        together, _ = answer_loss(model, images, [plain, mixed, alone], text_weight=0.5, rows=8)
        unweighted, _ = answer_loss(model, images, [plain, mixed, alone], text_weight=0.0)
        weighted, _ = answer_loss(model, images, [plain, mixed, alone], text_weight=1.0)
    answered = len(model.tokenizer.encode("3<|im_end|>") + model.tokenizer.encode("red<|im_end|>"))
    assert stats["tokens"] == answered  # the replay is counted apart
    torch.testing.assert_close(both, together)
    torch.testing.assert_close(unweighted, answers)  # a text row changes no image answer
    assert weighted > answers
    torch.testing.assert_close(both, answers + 0.5 * (weighted - answers))


def test_grounding_targets_name_each_object_in_its_centre_cell(tiny_models, torch_threads):
    from mobilevlm.training.grounding import (
        GROUNDING_WORDS,
        grid_targets,
        grounding_loss,
        grounding_words,
    )

    torch = torch_threads
    model = tiny_models(template="chatml")
    red_star = shapes_vqa.SceneObject("star", "red", (230, 25, 25), 0.8, 0.2, 0.2, 0.0)
    scene = shapes_vqa.Scene(400, "white", (red_star,), (False,))
    words = grounding_words(model)
    targets, classes = grid_targets(scene, grid=2, words=words)
    table = model.language_model.get_input_embeddings().weight

    def word(w):
        return table[model.tokenizer.encode(" " + w)].mean(dim=0)

    assert targets.shape == (4, model.config.llm.hidden_size)
    torch.testing.assert_close(targets[1], word("red") + word("star"))  # top right cell
    for cell in (0, 2, 3):
        torch.testing.assert_close(targets[cell], word("background"))
    assert classes.tolist() == [0, GROUNDING_WORDS.index("red star"), 0, 0]
    assert grounding_loss(targets[None], targets[None]).item() == 0.0
    assert grounding_loss(torch.zeros_like(targets)[None], targets[None]).item() == 1.0
    # the choice term: the right words win over the words of a wrong color
    wrong = targets.clone()
    wrong[1] = words[GROUNDING_WORDS.index("blue star")]
    right_loss = grounding_loss(targets[None], targets[None], classes[None], words)
    assert right_loss < grounding_loss(wrong[None], targets[None], classes[None], words)


def test_cell_labels_precede_each_cells_tokens_and_grounding_sees_the_grid(
    tiny_models, torch_threads
):
    from mobilevlm.reference.projectors import labelled_order
    from mobilevlm.training.grounding import cell_label_words, grid_part

    torch = torch_threads
    # 6x6 output tokens, 2x2 per cell of a 3x3 split; labels 36.. (2 + 1 + ... + 2 = 13)
    order = labelled_order(6, (2, 1, 2, 1, 1, 1, 2, 1, 2))
    assert order[:6] == [36, 37, 0, 1, 6, 7]  # "top left": two labels, then its 2x2 tokens
    assert order[6:11] == [38, 2, 3, 8, 9]  # "top"
    assert order[-6:] == [47, 48, 28, 29, 34, 35]  # "bottom right"
    assert sorted(order) == list(range(49))

    model = tiny_models(template="chatml", image_size=112, cell_labels=(1, 0, 2, 1))  # 4x4 grid
    assert model.config.num_image_tokens == 16 + 4
    projector = model.projector
    with torch.no_grad():
        projector.labels.copy_(torch.randn_like(projector.labels))
        x = torch.randn(2, 64, 32)
        images, grid = projector(x), projector.grid_tokens(x)
    assert images.shape == (2, 20, 64)
    torch.testing.assert_close(images[:, 0], projector.labels[0].expand(2, -1))
    torch.testing.assert_close(images[:, 1:3], grid[:, [0, 1]])  # top left cell, first row
    torch.testing.assert_close(images[:, 5:7], grid[:, [2, 3]])  # top right: no label
    torch.testing.assert_close(images[:, 9:11], projector.labels[1:3].expand(2, -1, -1))
    torch.testing.assert_close(grid_part(model, images), grid)
    with pytest.raises(RuntimeError, match="do not match the tokenizer's words"):
        cell_label_words(model)  # the tiny tokenizer does not spell the cells in 1, 0, 2, 1


def test_a_checkpoint_of_another_recipe_is_not_resumed(tmp_path, torch_threads):
    import json

    from mobilevlm.training.checkpoints import load_checkpoint, recipe
    from mobilevlm.training.config import TrainConfig

    torch = torch_threads
    config = TrainConfig(work=str(tmp_path))
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 7, "recipe": json.dumps(recipe(config))}, path)
    run_only = TrainConfig(work="elsewhere", eval_every=1, threads=1)
    assert load_checkpoint(path, run_only)["step"] == 7
    with pytest.raises(SystemExit, match="checkpoint.pt was written by another"):
        load_checkpoint(path, TrainConfig(work=str(tmp_path), steps=config.steps + 1))


def test_trained_parts_carry_the_tuned_encoder_blocks(tmp_path, torch_threads):
    """A recipe that fine-tunes encoder blocks ships them beside the projector; assembling
    puts them over the package's weights and refuses tensors the tower does not have."""
    from safetensors.torch import save_file
    from tiny_models import build_tiny_model

    from mobilevlm.default_model.assemble import (
        PROJECTOR_PREFIX,
        TRAINED_FORMAT,
        VISION_PREFIX,
        apply_trained,
    )

    torch = torch_threads
    model = build_tiny_model(template="chatml")
    name, weight = next(iter(model.vision_tower.state_dict().items()))
    tensors = {PROJECTOR_PREFIX + k: v for k, v in model.projector.state_dict().items()}
    tensors[VISION_PREFIX + name] = torch.full_like(weight, 0.5)
    path = tmp_path / "trained.safetensors"
    save_file(tensors, str(path), metadata={"format": TRAINED_FORMAT})
    apply_trained(model, path)
    torch.testing.assert_close(model.vision_tower.state_dict()[name], torch.full_like(weight, 0.5))

    tensors[VISION_PREFIX + "no_such.weight"] = weight
    save_file(tensors, str(path), metadata={"format": TRAINED_FORMAT})
    with pytest.raises(CheckpointError, match="unexpected encoder tensors"):
        apply_trained(model, path)


def test_stage_one_aligns_to_the_frozen_encoder_output_from_a_partial_cache(torch_threads):
    """With tuned blocks the cache stops before them; stage 1 still sees what the whole
    ImageNet encoder writes (to the cache's fp16 rounding)."""
    from mobilevlm.training.data import _frozen_tower, frozen_outputs

    torch = torch_threads
    tower = _frozen_tower()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cached = tower.blocks(pixels, 11).half().numpy()
        whole = tower.blocks(pixels).numpy()
    out = frozen_outputs(tower, cached, 11)
    assert out.dtype == np.float16 and out.shape == whole.shape
    np.testing.assert_allclose(out.astype(np.float32), whole, rtol=0.02, atol=0.05)
    assert frozen_outputs(tower, cached, len(tower._blocks)) is cached


def test_replay_answers_are_the_models_own_greedy_answers(tiny_models):
    """Batched, left-padded generation gives what `generate` gives one prompt at a time
    (prompts of different lengths); an answer cut off by max_new_tokens is left out."""
    from mobilevlm.generation.sampling import GenerationConfig
    from mobilevlm.training.data import _greedy_answers, _greedy_tokens

    model = tiny_models(template="chatml")
    questions = ["What is the capital of Spain?", "Hi", "Write one sentence about the sea."]
    one_by_one = [model.generate(None, q, GenerationConfig(max_new_tokens=6)) for q in questions]
    assert all(r.stats.stop_reason == "max_new_tokens" for r in one_by_one)
    written = {t for r in one_by_one for t in r.token_ids}
    no_stop = [min(set(range(model.config.llm.vocab_size)) - written)]  # never written here
    assert _greedy_tokens(model, questions, 6, no_stop) == [r.token_ids for r in one_by_one]
    assert _greedy_answers(model, questions, max_new_tokens=6) == [None, None, None]
    # stopping at a token it writes: cut there, the stop included
    first = one_by_one[1].token_ids[0]
    assert _greedy_tokens(model, questions[1:2], 6, [first]) == [[first]]


def test_bf16_stage_two_loss_and_gradients_follow_fp32(torch_threads):
    """bfloat16 autocast halves a stage-2 step on CPUs with native bfloat16; the loss it
    trains on is fp32's to bf16 rounding, and the gradients land in the fp32 weights."""
    from dataclasses import replace

    from peft import get_peft_model
    from tiny_models import random_init_, tiny_config, tiny_tokenizer

    from mobilevlm.config import EfficientNetLiteConfig, ProjectorConfig
    from mobilevlm.default_model.assemble import lora_config
    from mobilevlm.reference.model import MobileVLM
    from mobilevlm.training.config import TrainConfig
    from mobilevlm.training.data import QA, encode_conversation
    from mobilevlm.training.losses import autocast, batch_loss

    torch = torch_threads
    # the default model's kind of tower (random weights) under a tiny LLM
    base = tiny_config(template="chatml")
    config = replace(
        base,
        vision=EfficientNetLiteConfig(image_size=128, feature="blocks"),
        projector=ProjectorConfig("ldpnetv2", 320, base.llm.hidden_size),
    )
    model = MobileVLM(config, tiny_tokenizer(config.llm.vocab_size, add_bos=False))
    model = random_init_(model, 0).eval()
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    model.language_model = get_peft_model(model.language_model, lora_config(4, 8))
    first = len(model.vision_tower._blocks)
    seqs = [
        encode_conversation(model, [QA("What color is the star?", "red")]),
        encode_conversation(model, [QA("How many shapes are there?", "3")]),
    ]
    size = config.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.vision_tower.blocks(pixels)
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with autocast(precision):
            loss, _ = batch_loss(model, features, seqs, first)
        loss.backward()
        losses[precision] = loss.detach()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.projector.parameters()])
        assert loss.dtype == torch.float32 and grads[precision].dtype == torch.float32
    assert losses["bf16"] != losses["fp32"]  # the LLM did run in bfloat16
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0.02, atol=0.0)
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.99
    with pytest.raises(ValueError, match="precision: 'fp16' is not one of bf16, fp32"):
        TrainConfig(precision="fp16")
