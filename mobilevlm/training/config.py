"""The training recipe's settings: :class:`TrainConfig` (every field is a command-line
option of ``python -m mobilevlm.training``) and the question-kind weights it names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobilevlm import shapes_vqa
from mobilevlm.default_model import TRAINED_WEIGHTS

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
