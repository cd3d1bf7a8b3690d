"""The training loops: stage 1 aligns the projector to the grounding targets, stage 2
(:func:`train`) trains projector, LoRA adapter and tuned blocks on the conversations,
with held-out accuracy, a log line per step and checkpoints on the way."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from mobilevlm import shapes_vqa
from mobilevlm.default_model.assemble import base_model, lora_config
from mobilevlm.training.checkpoints import load_checkpoint, recipe, write_trained
from mobilevlm.training.config import TrainConfig
from mobilevlm.training.data import (
    QA,
    _batch,
    conversation,
    encode_conversation,
    first_tuned,
    frozen_outputs,
    image_embeddings,
    replay_answers,
)
from mobilevlm.training.grounding import (
    Grounding,
    cell_label_words,
    grid_part,
    grounding_accuracy,
    scene_targets,
)
from mobilevlm.training.losses import autocast, batch_loss

log = logging.getLogger("mobilevlm.training")


def _trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _log(record: dict, log_file) -> None:
    log.info(json.dumps(record))
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()


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


def _lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine down to a tenth."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


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


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), judged from Linux's
    /proc/cpuinfo; elsewhere assumed so."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags
