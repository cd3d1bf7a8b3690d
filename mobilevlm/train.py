"""Train the default model's parts on Shapes-VQA: ``python -m mobilevlm.train``.

What is trained: the LDPv2 projector (from scratch), a LoRA adapter on
SmolLM2-135M's linear layers and EfficientNet-Lite0's last ``--tuned-blocks``
blocks (the shipped recipe: 5, the stride-32 stage). What is frozen: the rest of
EfficientNet-Lite0 (ImageNet weights) and SmolLM2's own weights. The frozen
blocks' output is computed once per image and cached (rendering and the CNN
are a real cost on 2 cores); the tuned blocks run on the fly from it.

Supervision is dense: every training sequence is a multi-turn chat about one
image in the runtime's exact template (the first turn is exactly what
``mobilevlm run`` sends), with a loss on every answer and its end token;
some end with a caption turn listing every object. With ``--text-per-batch``
and ``--text-turn-rate`` stage 2 also replays the base LLM's own answers to
text-only prompts, so the adapter keeps its language. The loop is seeded and
resumable: features are cached in ``WORK/features-{split}-{image size}-b{first tuned}``,
``WORK/checkpoint.pt`` is written after the grounding stage and every
``--checkpoint-every`` steps and picked up on restart (refused when another
recipe wrote it); the log is ``WORK/log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mobilevlm import decode_loop, shapes_vqa
from mobilevlm.default_model import TRAINED_WEIGHTS, default_config
from mobilevlm.default_model.assemble import (
    LORA_PREFIX,
    PROJECTOR_PREFIX,
    TRAINED_FORMAT,
    VISION_PREFIX,
    base_model,
    lora_config,
)
from mobilevlm.default_model.text_prompts import TRAIN_PROMPTS
from mobilevlm.efficientnet_lite import EfficientNetLiteTower, tower_weights
from mobilevlm.preprocess import preprocess
from mobilevlm.projectors import labelled_order
from mobilevlm.prompts import Turn, get_template
from mobilevlm.tokenizer import IMAGE_TOKEN_ID

log = logging.getLogger("mobilevlm.train")
SHARD = 250
PRECISIONS = ("bf16", "fp32")
# what may differ between a run and the checkpoint it resumes
RUN_ONLY = ("work", "eval_every", "checkpoint_every", "threads", "output")


@dataclass
class TrainConfig:
    work: str = ".cache/train"
    train_images: int = 5000
    eval_images: int = 200
    steps: int = 1000
    batch_size: int = 8
    projector_lr: float = 1e-3
    lora_lr: float = 5e-4
    warmup: int = 30
    lora_rank: int = 16
    lora_alpha: int = 32
    max_turns: int = 4
    caption_rate: float = 0.25
    align_steps: int = 1000
    align_batch: int = 64
    aux_weight: float = 1.0
    grounding_tau: float = 0.05
    tuned_blocks: int = 5
    tower_lr: float = 3e-4
    # how often each kind is asked (unnamed kinds 1; empty: uniformly, as the held-out split
    # asks them). Counting is asked more: the image tokens of held-out scenes read as the
    # right number of objects for 87% of scenes (93% of present colors) while the uniform
    # recipe answered count 78% and count_color 64%, so the LLM's counting lagged the image
    kind_weights: str = "count=1.5,count_color=2.5,exists=0.75"
    # the language replay (MODEL_CARD): text-only conversations of the base LLM's own
    # answers per step, the share of image conversations with one such turn, and the
    # replay's mean token loss relative to the image answers' own
    text_per_batch: int = 0
    text_turn_rate: float = 0.0
    text_weight: float = 1.0
    # "bf16": the LLM, the tuned blocks and the projector compute under bfloat16 autocast in
    # stage 2 (fp32 master weights and optimizer): 2.5 s instead of 4.9 s for a forward
    # and backward of 8 conversations on this machine's AVX512-BF16 cores. "fp32" where the
    # CPU has no native bfloat16 (autocast would emulate it, slower than fp32)
    precision: str = "bf16"
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 50
    threads: int = 2
    output: str = str(TRAINED_WEIGHTS)

    def __post_init__(self) -> None:
        kind_weights(self.kind_weights)  # a bad spec fails here, not after stage 1
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")


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


def kind_weights(spec: str) -> np.ndarray:
    """``"color=1,count=2,..."`` -> probabilities in shapes_vqa.KINDS order."""
    weights = dict.fromkeys(shapes_vqa.KINDS, 1.0)
    for item in filter(None, spec.split(",")):
        kind, _, value = item.partition("=")
        if kind not in weights:
            raise ValueError(f"kind_weights: unknown question kind {kind!r}")
        weights[kind] = float(value)
    p = np.array([weights[k] for k in shapes_vqa.KINDS])
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"kind_weights: {spec!r} must be >= 0 and not all 0")
    return p / p.sum()


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


# ---------------------------------------------------------------- grounding


def _words(model, text: str) -> torch.Tensor:
    """The sum of the LLM's input embeddings of the words in ``text`` (each word the mean of
    its sub-tokens: " hexagon" is two)."""
    table = model.language_model.get_input_embeddings().weight
    return sum(table[model.tokenizer.encode(" " + w)].mean(dim=0) for w in text.split())


def cell_label_words(model) -> torch.Tensor:
    """(labels, hidden): the LLM's input embeddings of the words naming each of the spec's
    3x3 cells, in the projector's label order (" top", " left", " top", ...). The projector's
    labels are these, frozen, so the image reads like "top left <tokens> top <tokens> ..."."""
    table = model.language_model.get_input_embeddings().weight
    ids = [model.tokenizer.encode(" " + name) for name in shapes_vqa.POSITION_NAMES]
    if tuple(len(i) for i in ids) != model.config.projector.cell_labels:
        raise RuntimeError(
            f"cell_labels {model.config.projector.cell_labels} do not match the tokenizer's "
            f"words for the cells {[len(i) for i in ids]}"
        )
    return table[[t for i in ids for t in i]].detach().clone()


GROUNDING_WORDS = (
    "background",
    *(f"{c} {s}" for c in shapes_vqa.COLORS for s in shapes_vqa.SHAPES),
)


def grounding_words(model) -> torch.Tensor:
    """(41, hidden): what a grid token may say, in GROUNDING_WORDS order."""
    return torch.stack([_words(model, text) for text in GROUNDING_WORDS]).detach()


def grid_targets(
    scene: shapes_vqa.Scene, grid: int, words: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each grid token should say (the cell labels say where): (grid*grid, hidden)
    embeddings of the words " {color}" + " {shape}" for the object whose centre lies in the
    token's patch (summed when two do), the word " background" elsewhere, and (grid*grid,)
    their index in GROUNDING_WORDS (-100 where two objects share a patch). Written in the
    LLM's own input embeddings, the image tokens start out as text the frozen LLM already
    reads. ``words``: :func:`grounding_words`, computed once per split by the caller."""
    cells: dict[int, list[int]] = {}
    for o in scene.objects:
        cell = min(int(o.cy * grid), grid - 1) * grid + min(int(o.cx * grid), grid - 1)
        cells.setdefault(cell, []).append(GROUNDING_WORDS.index(f"{o.color} {o.shape}"))
    indices = [cells.get(c, [0]) for c in range(grid * grid)]
    targets = torch.stack([words[i].sum(dim=0) for i in indices])
    classes = torch.tensor([i[0] if len(i) == 1 else -100 for i in indices])
    return targets, classes


def _grid(model) -> int:
    return math.isqrt(model.config.num_image_tokens - sum(model.config.projector.cell_labels))


def grid_part(model, images: torch.Tensor) -> torch.Tensor:
    """The grid tokens (B, grid*grid, hidden), row-major, of the projector's output."""
    cells = model.config.projector.cell_labels
    if not cells:
        return images
    grid = _grid(model)
    order = labelled_order(grid, cells)
    return images[:, [order.index(k) for k in range(grid * grid)]]


@dataclass
class Grounding:
    """Word targets of a split's first scenes: (scenes, grid tokens, hidden) float16 and
    (scenes, grid tokens) classes, plus the words a token chooses among."""

    targets: torch.Tensor
    classes: torch.Tensor
    words: torch.Tensor
    tau: float

    def loss(self, images: torch.Tensor, idx) -> torch.Tensor:
        return grounding_loss(images, self.targets[idx], self.classes[idx], self.words, self.tau)


def scene_targets(model, split: str, count: int, tau: float) -> Grounding:
    grid, words = _grid(model), grounding_words(model)
    pairs = [grid_targets(shapes_vqa.sample(split, i).scene, grid, words) for i in range(count)]
    targets, classes = zip(*pairs, strict=True)
    return Grounding(torch.stack(targets).half(), torch.stack(classes), words, tau)


def grounding_loss(
    images: torch.Tensor,
    targets: torch.Tensor,
    classes: torch.Tensor | None = None,
    words: torch.Tensor | None = None,
    tau: float = 0.05,
) -> torch.Tensor:
    """Squared error of the image tokens against their word targets, relative to the
    targets' own energy (scale-free: embeddings of a small LLM are small); with ``classes``
    plus the cross-entropy of each token's choice among ``words``, scored by squared distance
    relative to the words' energy over ``tau``. The squared error alone spends itself on
    what all the words share: after 3000 steps 23% of object tokens were still nearest a
    wrong word; with the choice term 14% after 1000 steps, most of them read as background
    (probes on the same features find the token of an object's centre for 90% of objects)."""
    images, targets = images.float(), targets.float()  # bfloat16 under autocast
    loss = ((images - targets) ** 2).sum(-1).mean() / (targets**2).sum(-1).mean()
    if classes is not None:
        distances = torch.cdist(images.reshape(-1, images.shape[-1]), words) ** 2
        logits = -distances / ((words**2).sum(-1).mean() * tau)
        loss = loss + F.cross_entropy(logits, classes.reshape(-1), ignore_index=-100)
    return loss


def grounding_accuracy(model, features: np.ndarray, targets: torch.Tensor, first: int) -> float:
    """Share of object tokens (targets other than background) whose nearest word target,
    among all the split's targets, is their own."""
    with torch.no_grad():
        images = grid_part(model, image_embeddings(model, torch.from_numpy(features), first))
        images = images.reshape(-1, targets.shape[-1])
        flat = targets.float().reshape(-1, targets.shape[-1])
        vocab, inverse = torch.unique(flat, dim=0, return_inverse=True)
        nearest = torch.cdist(images, vocab).argmin(dim=1)
    objects = inverse != inverse.mode().values
    return float((nearest == inverse)[objects].float().mean())


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


def align_projector(
    model, config: TrainConfig, feats, grounding: Grounding, eval_feats, eval_targets, log_file
):
    """Stage 1: the projector learns to write each object as the words that name it, on the
    frozen encoder's output (the tuned blocks join in stage 2, so this stays cheap). No LLM
    pass, so thousands of images a minute."""
    first = len(model.vision_tower._blocks)
    optimizer = torch.optim.AdamW(_trained(model.projector), lr=config.projector_lr)
    gen = torch.Generator().manual_seed(config.seed)
    for step in range(config.align_steps):
        optimizer.param_groups[0]["lr"] = config.projector_lr * min(1.0, (step + 1) / config.warmup)
        idx = torch.randint(len(feats), (config.align_batch,), generator=gen).numpy()
        images = image_embeddings(model, torch.from_numpy(feats[idx]), first)
        loss = grounding.loss(grid_part(model, images), idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 250 == 0 or step + 1 == config.align_steps:
            record = {
                "align_step": step + 1,
                "loss": round(loss.item(), 4),
                "heldout_token_accuracy": round(
                    grounding_accuracy(model, eval_feats, eval_targets, first), 4
                ),
            }
            _log(record, log_file)


# ---------------------------------------------------------------- the loop


def _trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def image_embeddings(model, features: torch.Tensor, first: int) -> torch.Tensor:
    """Cached output of the frozen blocks (those before ``first``) -> image embeddings
    (B, tokens, hidden), through the tuned blocks and the projector."""
    tower = model.vision_tower
    return model.projector(tower.tokens_from_blocks(tower.run_blocks(features.float(), first)))


def autocast(precision: str):
    """Where stage 2's forward runs: bfloat16 autocast for "bf16" (the weights, their
    gradients and the optimizer stay fp32), plain fp32 otherwise."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def batch_loss(
    model,
    features: torch.Tensor,
    seqs: list[Example],
    first: int,
    grounding: Grounding | None = None,
    idx=None,
    aux_weight: float = 0.0,
    text_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """:func:`answer_loss` of the sequences on the images of ``features``, plus
    ``aux_weight`` times the grounding loss of the image tokens (scenes ``idx`` of
    ``grounding``) when given."""
    images = image_embeddings(model, features, first)
    loss, stats = answer_loss(model, images, seqs, text_weight)
    if grounding is not None and aux_weight:
        aux = grounding.loss(grid_part(model, images), idx)
        stats["grounding"] = round(aux.item(), 4)
        loss = loss + aux_weight * aux
    return loss, stats


def answer_loss(
    model, images: torch.Tensor, seqs: list[Example], text_weight: float = 1.0, rows: int = 4
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over answer tokens (logits only where a label is), plus
    ``text_weight`` times the mean over replayed text answers. The first ``len(images)``
    sequences hold the images, the rest are text only. The LLM runs on ``rows`` sequences
    at a time, sorted by length: less padding than one batch, as fast per token."""
    embeds, labels, replays = [], [], []
    for b, seq in enumerate(seqs):
        if b < len(images):  # the image's tokens take the placeholder's place, unsupervised
            embeds.append(model.embed(seq.ids, images[b])[0])
            at, n = seq.ids.index(IMAGE_TOKEN_ID), images.shape[1]
            labels.append(seq.labels[:at] + [-100] * n + seq.labels[at + 1 :])
            replays.append(seq.replay[:at] + [False] * n + seq.replay[at + 1 :])
        else:
            embeds.append(model.embed(seq.ids, None)[0])
            labels.append(seq.labels)
            replays.append(seq.replay)
    lm = model.language_model.get_base_model()  # the LlamaForCausalLM, LoRA layers inside
    order = sorted(range(len(seqs)), key=lambda b: embeds[b].shape[0])
    losses, flags, exact = [], [], {}
    for chunk in (order[i : i + rows] for i in range(0, len(order), rows)):
        length = max(embeds[b].shape[0] for b in chunk)
        mask = torch.zeros(len(chunk), length, dtype=torch.long)
        target = torch.full((len(chunk), length), -100, dtype=torch.long)
        is_replay = torch.zeros(len(chunk), length, dtype=torch.bool)
        padded = torch.zeros(len(chunk), length, embeds[0].shape[1])
        for row, b in enumerate(chunk):
            n = embeds[b].shape[0]
            padded[row, :n] = embeds[b]
            mask[row, :n] = 1
            target[row, :n] = torch.tensor(labels[b])
            is_replay[row, :n] = torch.tensor(replays[b])
        hidden = lm.model(inputs_embeds=padded, attention_mask=mask).last_hidden_state
        where = target[:, 1:] != -100
        logits = lm.lm_head(hidden[:, :-1][where])
        gold = target[:, 1:][where]
        losses.append(F.cross_entropy(logits, gold, reduction="none"))
        flags.append(is_replay[:, 1:][where])
        exact.update(zip(chunk, _exact(logits.argmax(-1), gold, where), strict=True))
    token_losses, replayed = torch.cat(losses), torch.cat(flags)
    answers = token_losses[~replayed]
    loss = answers.mean() if len(answers) else token_losses.new_zeros(())
    if replayed.any():
        loss = loss + text_weight * token_losses[replayed].mean()
    return loss, {"tokens": int((~replayed).sum()), "exact": [exact[b] for b in range(len(seqs))]}


def _exact(pred: torch.Tensor, gold: torch.Tensor, where: torch.Tensor) -> list[bool]:
    """Per sequence: every supervised token predicted (teacher forcing == greedy decoding)."""
    ok = (pred == gold).tolist()
    out, i = [], 0
    for n in where.sum(dim=1).tolist():
        out.append(all(ok[i : i + n]))
        i += n
    return out


def heldout_accuracy(model, features: np.ndarray, first: int, batch: int = 25) -> dict[str, float]:
    """Exact-answer accuracy per question kind on cached held-out images (single turn, as
    ``mobilevlm run`` asks): teacher-forced, so it equals greedy decoding's exact match."""
    correct: dict[str, list[bool]] = {}
    with torch.no_grad():
        for start in range(0, len(features), batch):
            idx = range(start, min(start + batch, len(features)))
            samples = [shapes_vqa.sample("heldout", i) for i in idx]
            seqs = [
                encode_conversation(model, [QA(s.question.question, s.question.answer)])
                for s in samples
            ]
            feats = torch.from_numpy(features[idx.start : idx.stop])
            _, stats = batch_loss(model, feats, seqs, first)
            for s, ok in zip(samples, stats["exact"], strict=True):
                correct.setdefault(s.question.kind, []).append(ok)
    acc = {k: float(np.mean(v)) for k, v in sorted(correct.items())}
    acc["overall"] = float(np.mean([x for v in correct.values() for x in v]))
    return acc


def _log(record: dict, log_file) -> None:
    log.info(json.dumps(record))
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()


def _batch(config: TrainConfig, step: int, count: int) -> list[int]:
    """Image indices of a step: epoch-wise permutations, a pure function of (seed, step)."""
    first = step * config.batch_size
    out = []
    for k in range(first, first + config.batch_size):
        epoch, pos = divmod(k, count)
        out.append(int(np.random.default_rng([config.seed, epoch]).permutation(count)[pos]))
    return out


def _lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine down to a tenth."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def recipe(config: TrainConfig) -> dict:
    """The settings that decide the weights (not where or how often things are written)."""
    return {k: v for k, v in asdict(config).items() if k not in RUN_ONLY}


def load_checkpoint(path: Path, config: TrainConfig) -> dict:
    """A checkpoint to resume, refused when another recipe wrote it."""
    ckpt = torch.load(path, weights_only=True)
    if json.loads(ckpt.get("recipe", "{}")) != recipe(config):
        raise SystemExit(
            f"{path} was written by another training configuration; use another --work or delete it"
        )
    return ckpt


def train(config: TrainConfig, train_feats: np.ndarray, eval_feats: np.ndarray) -> None:
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    work = Path(config.work)
    torch.manual_seed(config.seed)
    model = base_model()
    # the base LLM's answers, before any adapter exists
    replay = replay_answers(model, work) if config.text_per_batch or config.text_turn_rate else []
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    first = first_tuned(model.vision_tower, config)
    model.vision_tower._blocks[first:].requires_grad_(True)
    if model.projector.labels is not None:  # the cells' names stay the LLM's words
        model.projector.labels.requires_grad_(False)
        with torch.no_grad():
            model.projector.labels.copy_(cell_label_words(model))
    model.language_model = get_peft_model(
        model.language_model, lora_config(config.lora_rank, config.lora_alpha)
    )
    lora_params = [p for p in model.language_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": _trained(model.projector), "lr": config.projector_lr},
            {"params": lora_params, "lr": config.lora_lr},
            {"params": _trained(model.vision_tower), "lr": config.tower_lr},
        ],
        weight_decay=0.0,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    ckpt_path = work / "checkpoint.pt"

    def save_checkpoint(step: int) -> None:
        state = {
            "step": step,
            "recipe": json.dumps(recipe(config)),
            "projector": model.projector.state_dict(),
            "tuned_blocks": model.vision_tower._blocks[first:].state_dict(),
            "lora": get_peft_model_state_dict(model.language_model),
            "optimizer": optimizer.state_dict(),
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)

    log_file = open(work / "log.jsonl", "a")  # noqa: SIM115
    grounding = scene_targets(model, "train", len(train_feats), config.grounding_tau)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, config)
        model.projector.load_state_dict(ckpt["projector"])
        model.vision_tower._blocks[first:].load_state_dict(ckpt["tuned_blocks"])
        set_peft_model_state_dict(model.language_model, ckpt["lora"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        log.info("resumed at step %d", start)
    else:
        eval_targets = scene_targets(model, "heldout", len(eval_feats), config.grounding_tau)
        tower = model.vision_tower
        align_projector(
            model,
            config,
            frozen_outputs(tower, train_feats, first),
            grounding,
            frozen_outputs(tower, eval_feats, first),
            eval_targets.targets,
            log_file,
        )
        start = 0
        save_checkpoint(start)
    # the model stays in eval mode: nothing in it drops out, and the tuned encoder blocks'
    # batch norms keep ImageNet's statistics rather than those of batches of 8
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * _lr_factor(config, step)
        indices = _batch(config, step, len(train_feats))
        seqs = []
        for b, i in enumerate(indices):
            rng = np.random.default_rng([config.seed, step, b])
            scene = shapes_vqa.sample("train", i).scene
            seqs.append(encode_conversation(model, conversation(scene, rng, config, replay)))
        rng = np.random.default_rng([config.seed, step, len(indices)])
        for q in rng.choice(len(replay), size=config.text_per_batch if replay else 0):
            seqs.append(encode_conversation(model, [replay[q]], with_image=False))
        feats = torch.from_numpy(train_feats[indices])
        with autocast(config.precision):
            loss, stats = batch_loss(
                model, feats, seqs, first, grounding, indices, config.aux_weight, config.text_weight
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], 1.0)
        optimizer.step()
        record = {
            "step": step + 1,
            "loss": round(loss.item(), 4),
            "tokens": stats["tokens"],
            "grounding": stats.get("grounding"),
            "s_per_step": round((time.perf_counter() - t0) / (step + 1 - start), 2),
        }
        done = step + 1 == config.steps
        if (step + 1) % config.eval_every == 0 or done:
            record["heldout"] = heldout_accuracy(model, eval_feats, first)
        _log(record, log_file)
        if (step + 1) % config.checkpoint_every == 0 or done:
            save_checkpoint(step + 1)
    write_trained(model, config)


def write_trained(model, config: TrainConfig) -> Path:
    """The repository's part of the model: projector and LoRA tensors in fp16."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors = {PROJECTOR_PREFIX + k: v for k, v in model.projector.state_dict().items()}
    tensors.update(
        {VISION_PREFIX + k: v for k, v in model.vision_tower.named_parameters() if v.requires_grad}
    )
    lora = get_peft_model_state_dict(model.language_model)
    tensors.update({LORA_PREFIX + k: v for k, v in lora.items()})
    tensors = {k: v.detach().half().contiguous() for k, v in tensors.items()}
    meta = {
        "format": TRAINED_FORMAT,
        "lora": json.dumps({"rank": config.lora_rank, "alpha": config.lora_alpha}),
        "train_config": json.dumps(asdict(config)),
    }
    out = Path(config.output)
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), judged from Linux's
    /proc/cpuinfo; elsewhere assumed so."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mobilevlm.train", description=__doc__.split("\n")[0]
    )
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default: {value}"
        )
    parser.add_argument("--features-only", action="store_true", help="only build the caches")
    args = parser.parse_args(argv)
    features_only = args.__dict__.pop("features_only")
    try:
        config = TrainConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))  # exit 2, one line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(config.threads)
    if config.precision == "bf16" and not native_bf16():
        log.warning("this CPU has no native bfloat16: --precision fp32 may train faster")
    work = Path(config.work)
    tower = _frozen_tower()
    stop = first_tuned(tower, config)
    train_feats = cache_features("train", config.train_images, work, tower, stop)
    eval_feats = cache_features("heldout", config.eval_images, work, tower, stop)
    if features_only:
        return
    del tower
    train(config, train_feats, eval_feats)


if __name__ == "__main__":
    main()
