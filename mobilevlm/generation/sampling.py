"""Next-token selection in numpy: one sampler for the torch reference and every backend.

Semantics follow transformers' logits processors, applied in its order:
repetition penalty (over every text token of the prompt and the answer so
far), then temperature, top-k, top-p. ``temperature == 0`` is greedy. A
sampled token is drawn by inverse CDF from one uniform number of numpy's
PCG64 generator seeded with ``seed``: the same seed and logits give the same
tokens on every backend, and the rule is simple to port to a device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mobilevlm.errors import OptionsError

DEFAULT_MAX_NEW_TOKENS = 128  # the API's and the CLI's (--max-new-tokens) default
SETTING_TYPES = {
    "max_new_tokens": int,
    "temperature": (int, float),
    "top_k": int,
    "top_p": (int, float),
    "repetition_penalty": (int, float),
    "seed": int,
}


def kind_name(kind) -> str:
    return "whole number" if kind is int else "number"


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 selects greedy decoding
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    repetition_penalty: float = 1.0  # 1 disables; >1 discourages tokens already present
    seed: int | None = None  # None draws a fresh seed
    stop_strings: tuple[str, ...] = ()  # in addition to the template's own
    # benchmarks: EOS and stop tokens are never sampled and no stop string ends the answer,
    # so exactly max_new_tokens are decoded (llama.cpp's --ignore-eos)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for name, kind in SETTING_TYPES.items():
            value = getattr(self, name)
            if value is None and name == "seed":
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise OptionsError(f"{name} must be a {kind_name(kind)}, got {value!r:.40}")
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionsError(f"{name} must be finite, got {value}")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise OptionsError("stop strings must be non-empty strings")
        if self.seed is not None and not 0 <= self.seed < 2**128:
            raise OptionsError(f"seed must be from 0 to 2**128 - 1, got {self.seed}")
        if self.max_new_tokens < 0:
            raise OptionsError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise OptionsError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise OptionsError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise OptionsError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise OptionsError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Divide positive, multiply negative logits of ``seen`` token ids by ``penalty``."""
    if penalty == 1.0 or not seen.any():
        return logits
    out = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits (and ties with the k-th); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p``."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, kind="stable")  # ascending, as transformers' TopPLogitsWarper
    probs = softmax(logits[order])
    remove_sorted = np.cumsum(probs) <= (1.0 - p)
    remove_sorted[-1] = False  # always keep the most likely token
    out = logits.copy()
    out[order[remove_sorted]] = -np.inf
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


class Sampler:
    """Chooses tokens one at a time and remembers them for the repetition penalty."""

    def __init__(
        self, config: GenerationConfig, vocab_size: int, context_ids: Iterable[int] = ()
    ) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.seen = np.zeros(vocab_size, dtype=bool)
        ids = np.fromiter((i for i in context_ids if 0 <= i < vocab_size), dtype=np.int64)
        self.seen[ids] = True

    def __call__(self, logits: np.ndarray) -> int:
        """``logits``: float array of shape (vocab,) for the next position."""
        cfg = self.config
        scores = apply_repetition_penalty(
            np.asarray(logits, dtype=np.float32), self.seen, cfg.repetition_penalty
        )
        if cfg.greedy:
            token = int(np.argmax(scores))
        else:
            # shifted first: a tiny temperature sends the rest to -inf, not the best to inf
            with np.errstate(over="ignore"):
                scaled = (scores - scores.max()) / cfg.temperature
            scores = top_p_filter(top_k_filter(scaled, cfg.top_k), cfg.top_p)
            cdf = np.cumsum(softmax(scores))
            token = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
            token = min(token, len(cdf) - 1)
        self.seen[token] = True
        return token
