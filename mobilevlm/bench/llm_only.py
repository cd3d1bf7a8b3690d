"""`mobilevlm bench --llm-only`: LLM throughput of each backend in one process, side by side.

The same token ids go through every backend: a prefill of ``prompt_tokens``
random ids (seeded), then ``decode_tokens`` greedy steps, each taking the
argmax of the logits in numpy as generation does. Backends run in turn
within each repeat, so a noisy shared machine slows them alike; the report
gives medians and the ratio of each backend to the llama.cpp baseline.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm.errors import MissingDependencyError

LLAMA_CPP = "llama.cpp"
SETTLE_S = 0.25


@dataclass
class Throughput:
    name: str
    prefill: list[float] = field(default_factory=list)  # tokens/s, one per repeat
    decode: list[float] = field(default_factory=list)

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill)

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode)


Runner = Callable[[list[int], int], tuple[float, float]]


def greedy_runner(
    reset: Callable[[], None],
    prefill: Callable[[list[int]], np.ndarray],
    decode: Callable[[int], np.ndarray],
) -> Runner:
    """One timing loop for every backend: prefill the ids, then ``steps`` argmax tokens."""

    def run(prompt: list[int], steps: int) -> tuple[float, float]:
        reset()
        t0 = time.perf_counter()
        token = int(np.argmax(prefill(prompt)))
        t1 = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(decode(token)))
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), steps / (t2 - t1)

    return run


def runner(model) -> Runner:
    """Prefill and greedy-decode through a loaded bundle (ONNX Runtime or llama.cpp): the
    backend's own prefill and decode steps, as :mod:`mobilevlm.generation.decode_loop` drives
    them."""
    return greedy_runner(model.reset, lambda ids: model.prefill_prompt(ids, None), model.decode)


def llama_cpp_runner(gguf: str | Path, threads: int | None, context: int) -> Runner:
    """The peer: llama-cpp-python's own generation loop (``Llama.generate``, greedy)."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise MissingDependencyError(
            "the llama.cpp baseline needs llama-cpp-python: pip install 'mobilevlm-runtime[llama]'"
        ) from exc
    threads = threads or os.cpu_count() or 1
    llm = Llama(
        model_path=str(gguf),
        n_ctx=context,
        n_batch=context,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def run(prompt: list[int], steps: int) -> tuple[float, float]:
        llm.reset()  # no prompt reuse from the previous repeat
        tokens = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
        t0 = time.perf_counter()
        next(tokens)  # the prefill and the first token
        t1 = time.perf_counter()
        for _ in range(steps):
            next(tokens)
        t2 = time.perf_counter()
        tokens.close()
        return len(prompt) / (t1 - t0), steps / (t2 - t1)

    return run


def measure(
    runners: dict[str, Runner],
    vocab_size: int,
    prompt_tokens: int = 128,
    decode_tokens: int = 128,
    repeats: int = 5,
    seed: int = 0,
    on_repeat: Callable[[int], None] | None = None,
) -> list[Throughput]:
    """Interleaved repeats of every runner (one warm-up round first, not recorded)."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(100, vocab_size - 100, prompt_tokens).tolist()
    results = {name: Throughput(name) for name in runners}
    for run in runners.values():  # warm-up: first-touch of weights, thread pools
        run(prompt[:8], 4)
    for r in range(repeats):
        for name, run in runners.items():
            time.sleep(SETTLE_S)  # let the previous backend's spinning worker threads go idle
            prefill, decode = run(prompt, decode_tokens)
            results[name].prefill.append(prefill)
            results[name].decode.append(decode)
        if on_repeat:
            on_repeat(r)
    return list(results.values())


def table(results: Sequence[Throughput], baseline: str = LLAMA_CPP) -> str:
    base = next((r for r in results if r.name == baseline), None)
    width = max(22, *(len(r.name) + 2 for r in results))
    head = f"{'backend':<{width}}{'prefill tok/s':>14}{'decode tok/s':>14}"
    if base:
        head += f"{'prefill x':>11}{'decode x':>10}"
    lines = [head]
    for r in results:
        line = f"{r.name:<{width}}{r.prefill_median:>14.1f}{r.decode_median:>14.1f}"
        if base:
            line += f"{r.prefill_median / base.prefill_median:>11.2f}"
            line += f"{r.decode_median / base.decode_median:>10.2f}"
        lines.append(line)
    return "\n".join(lines)


def bundle_runners(
    bundles: Sequence[Path], precisions: Sequence[str] | None, threads: int | None, context: int
) -> dict[str, Runner]:
    """A runner for each exported precision (or each of ``precisions``) of each bundle,
    named by backend and precision (and bundle, when there are several)."""
    from mobilevlm.manifest import GGUF_PRECISIONS, BundleManifest
    from mobilevlm.runtime.loader import backend_for, load_bundle
    from mobilevlm.runtime.options import LoadOptions

    runners = {}
    for path in bundles:
        manifest = BundleManifest.read(path)
        for precision in precisions or manifest.precisions + manifest.gguf_precisions:
            options = LoadOptions(precision=precision, threads=threads, context=context)
            model = load_bundle(path, options)
            name = f"{backend_for(manifest, options)} {precision}"
            if precision in GGUF_PRECISIONS:
                name += " (mobilevlm loop)"
            runners[name if len(bundles) == 1 else f"{Path(path).name} {name}"] = runner(model)
    return runners


def default_gguf(root: Path) -> Path:
    """The llama.cpp baseline: the bundle's own fastest GGUF, else for the built-in model
    the GGUF of the package its LLM comes from."""
    from mobilevlm.errors import OptionsError
    from mobilevlm.manifest import DEFAULT_MODEL_SOURCE, BundleManifest
    from mobilevlm.runtime.llamacpp.select import GGUF_PREFERENCE

    manifest = BundleManifest.read(root)
    own = [a for a in (manifest.find("llm", p) for p in GGUF_PREFERENCE) if a is not None]
    if own:
        return Path(root) / own[0].path
    if manifest.exporter.get("source") != DEFAULT_MODEL_SOURCE:
        raise OptionsError(
            "give --gguf FILE (a GGUF of the same LLM) or --no-llama-cpp; a default baseline "
            "exists only for the built-in model"
        )
    from mobilevlm.default_model.smollm2 import locate_gguf

    return locate_gguf()
