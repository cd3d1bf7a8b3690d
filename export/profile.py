"""Time and peak resident memory of each stage of an export, as the machine sees them.

An export's memory is mostly native (ONNX Runtime's sessions, protobufs, numpy and
torch buffers), which tracemalloc cannot see, so this reads the resident set itself: a
thread samples it every few milliseconds for each stage's peak, and a stage that raised
the process's high-water mark (VmHWM) has that mark as its exact peak, however short the
spike. The whole command's peak is VmHWM: what ``/usr/bin/time``'s maximum resident set
reports, and what a laptop must hold.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

from mobilevlm.runtime.heap import current_rss, peak_rss

MIB = 2**20
SAMPLE_SECONDS = 0.005


def _rss() -> int:
    """The resident set now; without /proc (macOS), the peak so far stands in for it."""
    try:
        return current_rss()
    except OSError:
        return peak_rss()


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    peak_mib: float = 0.0  # the resident set's peak during the stage
    end_mib: float = 0.0  # what the stage left resident


class StageProfile:
    """Stages in order: :meth:`stage` ends the running one and starts the next;
    :meth:`finish` ends the last and stops sampling."""

    def __init__(self, first: str | None = None) -> None:
        self.stages: list[Stage] = []
        self._started = self._stage_started = time.perf_counter()
        self._sampled = 0
        self._mark = peak_rss()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        if first is not None:
            self.stage(first)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            rss = _rss()
            with self._lock:
                self._sampled = max(self._sampled, rss)

    def _end_stage(self) -> None:
        if not self.stages:
            return
        now, mark, rss = time.perf_counter(), peak_rss(), _rss()
        with self._lock:
            peak = max(self._sampled, rss)
            self._sampled = 0
        if mark > self._mark:  # the process's high-water mark was set during this stage
            peak = mark
        self._mark = mark
        stage = self.stages[-1]
        stage.seconds = round(now - self._stage_started, 2)
        stage.peak_mib = round(peak / MIB, 1)
        stage.end_mib = round(rss / MIB, 1)

    def stage(self, name: str) -> None:
        self._end_stage()
        with self._lock:
            self._sampled = _rss()
        self._stage_started = time.perf_counter()
        self.stages.append(Stage(name))

    def finish(self) -> dict:
        """The record ``bundle.json`` keeps: seconds and peak MiB, whole and per stage."""
        self._end_stage()
        self._stop.set()
        self._sampler.join()
        return {
            "seconds": round(time.perf_counter() - self._started, 1),
            "peak_rss_mib": round(peak_rss() / MIB, 1),
            "stages": [asdict(s) for s in self.stages],
        }
