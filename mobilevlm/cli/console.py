"""Terminal output shared by the commands: streamed text, the stats and runtime lines,
Ctrl-C that stops an answer instead of the program, and lines read from the user."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mobilevlm.generation.result import GenerationStats
from mobilevlm.runtime.pipeline import Pipeline


def write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def stats_line(s: GenerationStats) -> str:
    cached = f" ({s.cached_tokens} from the cache)" if s.cached_tokens else ""
    return (
        f"[{s.image_tokens} image + {s.prompt_tokens} prompt tokens prefilled{cached} in "
        f"{s.time_to_first_token_ms:.0f} ms (image {s.image_encode_ms:.0f} ms); "
        f"{s.generated_tokens} tokens at {s.decode_tokens_per_s:.1f} tok/s; "
        f"stop: {s.stop_reason}]"
    )


def runtime_line(info: dict[str, Any]) -> str:
    """``runtime_info()`` in one line: what ran, on which providers, under which plan."""
    mode = f"/{info['mode']}" if info.get("mode") else ""
    parts = [f"{info['backend']} {info['precision']}{mode}"]
    vision = info.get("vision_precision")
    simulated = " (HTP simulator: not a phone's latency)" if info.get("vision_simulated") else ""
    parts.append(f"vision {vision + ' ' if vision else ''}on {info['vision_provider']}{simulated}")
    prefill = info.get("prefill_provider", info["decoder_provider"])
    if prefill != info["decoder_provider"]:
        parts.append(f"prefill on {prefill}")
    simulated = " (HTP simulator)" if info.get("llm_simulated") else ""
    parts.append(f"decoder on {info['decoder_provider']}{simulated}")
    if info.get("context"):
        parts.append(f"context {info['context']}")
    plan = info.get("memory_plan")
    if plan:
        resident = "resident" if plan["vision_resident"] else "released after the image"
        parts.append(
            f"memory plan {plan['total'] / 2**20:.0f} of {plan['budget'] / 2**20:.0f} MiB, "
            f"vision {resident}"
        )
    return "[" + "; ".join(parts) + "]"


@contextmanager
def cancel_on_ctrl_c(pipeline: Pipeline) -> Iterator[list[bool]]:
    """While generating, Ctrl-C stops the answer after the current token (what was
    generated so far stays); a second Ctrl-C interrupts at once."""
    interrupted: list[bool] = []

    def on_sigint(signum, frame) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        pipeline.cancel()

    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals reach the main thread only
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def user_lines(prompt: str) -> Iterator[str]:
    """User lines: from the terminal with a prompt, else from stdin as it comes."""
    if sys.stdin.isatty():
        while True:
            try:
                yield input(prompt)
            except EOFError:
                print(file=sys.stderr)
                return
    else:
        yield from (line.rstrip("\n") for line in sys.stdin)
