"""What a run saves and restores: the recipe that identifies it, the resumable
checkpoint's check, and the trained parts the package ships."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from mobilevlm.default_model.assemble import (
    LORA_PREFIX,
    PROJECTOR_PREFIX,
    TRAINED_FORMAT,
    VISION_PREFIX,
)
from mobilevlm.training.config import RUN_ONLY, TrainConfig

log = logging.getLogger("mobilevlm.training")


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
