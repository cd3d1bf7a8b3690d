"""Train the default model's parts on Shapes-VQA: ``python -m mobilevlm.training``.

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
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from mobilevlm.training.config import TrainConfig
from mobilevlm.training.data import _frozen_tower, cache_features, first_tuned
from mobilevlm.training.loop import native_bf16, train

log = logging.getLogger("mobilevlm.training")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mobilevlm.training", description=__doc__.split("\n")[0]
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
