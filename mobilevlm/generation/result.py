"""What a generation returns: the text, its tokens and how long each stage took (torch-free)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STOP_REASONS = ("eos", "stop_string", "max_new_tokens", "context_full", "cancelled")


@dataclass
class GenerationStats:
    """Counts and wall-clock times (milliseconds) of one generation."""

    image_tokens: int = 0
    prompt_tokens: int = 0  # text tokens of the prompt
    generated_tokens: int = 0
    cached_tokens: int = 0  # prompt positions reused from the KV cache (not prefilled again)
    image_encode_ms: float = 0.0  # preprocessing + vision tower + projector
    prefill_ms: float = 0.0  # the LLM over image embeddings and prompt tokens
    decode_ms: float = 0.0  # every later token
    total_ms: float = 0.0
    stop_reason: str = "max_new_tokens"

    @property
    def prefill_tokens(self) -> int:
        return self.image_tokens + self.prompt_tokens

    @property
    def time_to_first_token_ms(self) -> float:
        return self.image_encode_ms + self.prefill_ms

    @property
    def prefill_tokens_per_s(self) -> float:
        ran = self.prefill_tokens - self.cached_tokens
        return 1000.0 * ran / self.prefill_ms if self.prefill_ms else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # the first token comes out of the prefill; the decode loop makes the rest
        steps = max(self.generated_tokens - 1, 0)
        return 1000.0 * steps / self.decode_ms if self.decode_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in (
            "prefill_tokens",
            "time_to_first_token_ms",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
        ):
            d[name] = getattr(self, name)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "stats": self.stats.to_dict()}
