"""What training reads: the frozen encoder blocks' cached output per image and its way
into the model, the chats about each scene tokenized in the runtime's template, the base
LLM's replayed text answers, and which images each step takes."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mobilevlm import shapes_vqa
from mobilevlm.default_model import default_config
from mobilevlm.default_model.text_prompts import TRAIN_PROMPTS
from mobilevlm.generation import decode_loop
from mobilevlm.generation.preprocess import preprocess
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.reference.efficientnet_lite import EfficientNetLiteTower, tower_weights
from mobilevlm.training.config import TrainConfig, kind_weights

log = logging.getLogger("mobilevlm.training")
SHARD = 250


# ---------------------------------------------------------------- features


def _frozen_tower() -> EfficientNetLiteTower:
    """The encoder in channels-last layout: its depthwise convs run faster on the CPU (250
    images in 28 s instead of 32-36 s here; the fp16 features agree to one rounding step)."""
    tower = EfficientNetLiteTower(default_config().vision)
    tower.load_state_dict(tower_weights(tower.config))
    return tower.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def first_tuned(tower: EfficientNetLiteTower, config: TrainConfig) -> int:
    """Index of the first fine-tuned block: the cache holds the output of the blocks before."""
    return len(tower._blocks) - config.tuned_blocks


def cache_features(
    split: str, count: int, work: Path, tower: EfficientNetLiteTower, stop: int
) -> np.ndarray:
    """(count, C, g, g) float16 output of the frozen blocks (those before ``stop``) for the
    split's first ``count`` images, computed in shards of 250 that survive an interruption."""
    prep = default_config().preprocess
    blocks = "" if stop == len(tower._blocks) else f"-b{stop}"
    folder = work / f"features-{split}-{prep.image_size}{blocks}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, count, SHARD):
        n = min(SHARD, count - start)
        path = folder / f"{start:06d}-{n}.npy"
        if not path.exists():
            t0 = time.perf_counter()
            out = []
            for batch in range(start, start + n, 25):
                pixels = np.stack(
                    [
                        preprocess(shapes_vqa.sample(split, i).image(), prep)
                        for i in range(batch, min(batch + 25, start + n))
                    ]
                )
                pixels = torch.from_numpy(pixels).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    out.append(tower.blocks(pixels, stop).contiguous().half().numpy())
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, np.concatenate(out))
            os.replace(tmp, path)
            log.info(
                "%s features %d-%d in %.1fs", split, start, start + n, time.perf_counter() - t0
            )
        shards.append(np.load(path))
    return np.concatenate(shards)


def frozen_outputs(tower: EfficientNetLiteTower, feats: np.ndarray, first: int) -> np.ndarray:
    """The last block's output with every block at its ImageNet weights, from a cache that
    stops before block ``first``: what stage 1 aligns the projector to."""
    if first == len(tower._blocks):
        return feats
    out = []
    with torch.no_grad():
        for start in range(0, len(feats), 50):
            x = torch.from_numpy(feats[start : start + 50]).float()
            out.append(tower.run_blocks(x, first).half().numpy())
    return np.concatenate(out)


def image_embeddings(model, features: torch.Tensor, first: int) -> torch.Tensor:
    """Cached output of the frozen blocks (those before ``first``) -> image embeddings
    (B, tokens, hidden), through the tuned blocks and the projector."""
    tower = model.vision_tower
    return model.projector(tower.tokens_from_blocks(tower.run_blocks(features.float(), first)))


# ---------------------------------------------------------------- sequences


CAPTION_QUESTION = "List every object with its color and position."


class QA(NamedTuple):
    question: str
    answer: str
    replay: bool = False  # the base LLM's own answer to a text-only question


@dataclass
class Example:
    """One training conversation, tokenized."""

    ids: list[int]  # IMAGE_TOKEN_ID marks the image, when there is one
    labels: list[int]  # -100 where no loss
    replay: list[bool]  # per label: part of a replayed text answer


def conversation(
    scene: shapes_vqa.Scene,
    rng: np.random.Generator,
    config: TrainConfig,
    replay: list[QA],
) -> list[QA]:
    """Turns about one scene, kinds drawn with ``config.kind_weights``; the last may be the
    dense caption, and one turn after the first may be a replayed text-only question."""
    count = int(rng.integers(1, config.max_turns + 1))
    if config.kind_weights:
        p, questions = kind_weights(config.kind_weights), []
        while len(questions) < count:
            q = shapes_vqa.ask(scene, str(rng.choice(shapes_vqa.KINDS, p=p)), rng)
            questions += [q] if q is not None else []
    else:  # uniformly over the kinds the scene allows
        questions = [shapes_vqa.random_question(scene, rng) for _ in range(count)]
    turns = [QA(q.question, q.answer) for q in questions]
    if rng.random() < config.caption_rate:
        turns.append(QA(CAPTION_QUESTION, shapes_vqa.describe(scene)))
    if replay and rng.random() < config.text_turn_rate:
        turns.insert(int(rng.integers(1, len(turns) + 1)), replay[rng.integers(len(replay))])
    return turns


def _greedy_tokens(model, questions, max_new_tokens: int, stops: list[int]) -> list[list[int]]:
    """The LLM's greedy text-only replies to ``questions`` in one left-padded batch
    (transformers' generate: 16 prompts at a time are 4x faster than one by one on 2
    cores), each up to and including its first stop token."""
    config, tokenizer = model.config, model.tokenizer
    prompts = [decode_loop.conversation_ids(config, tokenizer, q, False) for q in questions]
    width = max(len(p) for p in prompts)
    pad = config.llm.pad_token_id if config.llm.pad_token_id is not None else stops[0]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.language_model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )
    replies = []
    for row in out[:, width:].tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
        replies.append(row[: end + 1])
    return replies


def _greedy_answers(model, questions, max_new_tokens: int) -> list[str | None]:
    """The replies' text; None where ``max_new_tokens`` ran out before the end token."""
    config = model.config
    stops = decode_loop.stop_token_ids(
        config, model.tokenizer, get_template(config.template).stop_strings
    )
    return [
        model.tokenizer.decode(reply[:-1]).strip() if reply[-1] in stops else None
        for reply in _greedy_tokens(model, questions, max_new_tokens, sorted(stops))
    ]


def replay_answers(model, work: Path, max_new_tokens: int = 64, batch: int = 16) -> list[QA]:
    """The base LLM's own greedy answers to the text-only TRAIN_PROMPTS, generated once
    before any training (cached in WORK/text-replay.json). Answers that run past
    ``max_new_tokens`` are left out, so no target teaches stopping mid-sentence."""
    path = work / "text-replay.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["prompts"] == list(TRAIN_PROMPTS) and cached["max_new_tokens"] == max_new_tokens:
            return [QA(q, a, True) for q, a in cached["answers"]]
    t0 = time.perf_counter()
    answers = []
    for start in range(0, len(TRAIN_PROMPTS), batch):
        questions = TRAIN_PROMPTS[start : start + batch]
        replies = _greedy_answers(model, questions, max_new_tokens)
        answers += [(q, a) for q, a in zip(questions, replies, strict=True) if a is not None]
    data = {"prompts": list(TRAIN_PROMPTS), "max_new_tokens": max_new_tokens, "answers": answers}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    log.info(
        "replay: %d of %d base answers in %.0fs",
        len(answers), len(TRAIN_PROMPTS), time.perf_counter() - t0,
    )  # fmt: skip
    return [QA(q, a, True) for q, a in answers]


def encode_conversation(model, turns: list[QA], with_image: bool = True) -> Example:
    """Token ids and labels of a chat in the model's template: loss on each answer and the
    stop token that ends it. Each turn's prompt is the template's own rendering of the whole
    history, so the text is exactly what the runtime sends after the same turns."""
    template = get_template(model.config.template)
    ids: list[int] = []
    labels: list[int] = []
    replay: list[bool] = []
    history: list[Turn] = []
    system, stop = model.config.system_prompt, template.stop_strings[0]
    for question, answer, replayed in turns:
        text = template.render([*history, Turn(question)], system=system, with_image=with_image)
        prompt = model.tokenizer.encode_prompt(text)
        if prompt[: len(ids)] != ids:
            raise RuntimeError(f"template {template.name!r} does not tokenize turn by turn")
        labels += [-100] * (len(prompt) - len(ids))
        # the answer as the template writes it (v1 puts a space before it), up to its stop
        full = template.render(
            [*history, Turn(question, answer), Turn("")], system=system, with_image=with_image
        )
        reply = model.tokenizer.encode(full[len(text) : full.index(stop, len(text)) + len(stop)])
        replay += [False] * (len(prompt) - len(replay)) + [replayed] * len(reply)
        ids = prompt + reply
        labels += reply
        history.append(Turn(question, answer))
    return Example(ids, labels, replay)


# ---------------------------------------------------------------- batches


def _batch(config: TrainConfig, step: int, count: int) -> list[int]:
    """Image indices of a step: epoch-wise permutations, a pure function of (seed, step)."""
    first = step * config.batch_size
    out = []
    for k in range(first, first + config.batch_size):
        epoch, pos = divmod(k, count)
        out.append(int(np.random.default_rng([config.seed, epoch]).permutation(count)[pos]))
    return out
