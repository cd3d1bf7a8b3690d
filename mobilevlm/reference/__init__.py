"""The PyTorch reference as a backend: what the CLI and the benchmarks call to run it.

Imported lazily by the torch-free runtime, so that a device install without
torch fails only when the reference is asked for, with the extra to install.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mobilevlm.reference.checkpoint import load_checkpoint, read_checkpoint_extra
from mobilevlm.reference.model import MobileVLM

log = logging.getLogger(__name__)


def load_reference(
    model_dir: str | Path, vision_tower: str | Path | None = None, threads: int | None = None
) -> MobileVLM:
    """Load a checkpoint for CPU inference with ``threads`` torch threads (default: all)."""
    if threads:
        torch.set_num_threads(threads)
    return load_checkpoint(model_dir, vision_tower=vision_tower)


def has_random_weights(model_dir: str | Path) -> bool:
    """True for checkpoints written by :mod:`tiny_models` (test models)."""
    return bool(read_checkpoint_extra(model_dir).get("random_weights"))
