"""`mobilevlm bench --llm-only`: the LLM alone, this runtime against the engines users pick instead.

The same token ids go through every backend: a prefill of ``prompt_tokens``
random ids (seeded), then ``decode_tokens`` greedy steps, EOS ignored. Each
measurement is a fresh process that loads one backend (timed), warms it up on
8 tokens, then runs the prompt once and reports its rates and peak RSS, so a
backend's memory is its own and none warms another's caches. Backends
alternate within each repeat after one unrecorded round that fills the page
cache, so a noisy shared machine slows them alike; the report gives medians
and the ratio of each backend to llama.cpp's.

The backends: this runtime's decoders (:mod:`mobilevlm.bench.worker`, task
``llm``: ONNX Runtime, and the GGUFs through its llama.cpp loop), the peer
llama.cpp (llama-cpp-python's ``Llama.generate``), and the GenAI peers, ONNX
Runtime GenAI and OpenVINO GenAI (:mod:`mobilevlm.bench.peers.genai`, their
own environment and models converted from the same weights).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.bench import harness
from mobilevlm.bench.harness import MIB, SETTLE_S, WorkerError, worker

LLAMA_CPP = "llama.cpp"
WARMUP_TOKENS = (8, 4)  # prompt ids, decoded tokens: every worker's warm-up, given in its job


@dataclass
class Backend:
    """One row: how to start its measuring process, and the job it is given."""

    name: str
    job: dict[str, Any]
    command: Sequence[str] = ()  # empty: this project's worker in this Python
    skipped: str | None = None  # why it cannot run here


@dataclass
class Throughput:
    name: str
    prefill: list[float] = field(default_factory=list)  # tokens/s, one per repeat
    decode: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill)

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"backend": self.name, "skipped": self.skipped}
        if self.skipped is None:
            row |= {
                "prefill_tokens_per_s": self.prefill,
                "decode_tokens_per_s": self.decode,
                "load_s": self.load_s,
                "peak_rss_mib": self.peak_mib,
                "prefill_median": self.prefill_median,
                "decode_median": self.decode_median,
                "load_s_median": statistics.median(self.load_s),
                "peak_rss_mib_median": statistics.median(self.peak_mib),
                "versions": self.versions,
            }
        return row


Runner = Callable[[list[int], int], tuple[float, float]]


def greedy_runner(
    reset: Callable[[], None],
    prefill: Callable[[list[int]], np.ndarray],
    decode: Callable[[int], np.ndarray],
) -> Runner:
    """One timing loop for this runtime's backends: prefill the ids, then ``steps`` argmax
    tokens, as :mod:`mobilevlm.generation.decode_loop` drives them."""

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


def bundle_runner(bundle: str, precision: str, threads: int | None, context: int) -> Runner:
    """Prefill and greedy decode through a loaded bundle (ONNX Runtime or llama.cpp)."""
    from mobilevlm.runtime.loader import load_bundle
    from mobilevlm.runtime.options import LoadOptions

    # no image comes: the vision encoder is never loaded, so the peak is the LLM's alone
    options = LoadOptions(
        precision=precision, threads=threads, context=context, vision_resident=False
    )
    model = load_bundle(bundle, options)
    return greedy_runner(model.reset, lambda ids: model.prefill_prompt(ids, None), model.decode)


def llama_cpp_runner(gguf: str | Path, threads: int | None, context: int) -> Runner:
    """The peer: llama-cpp-python's own generation loop (``Llama.generate``, greedy)."""
    from mobilevlm.runtime.llamacpp.model import import_llama_cpp, open_llama

    import_llama_cpp()  # a MissingDependencyError that says how to install it
    llm = open_llama(gguf, context, threads, batch=context)

    def run(prompt: list[int], steps: int) -> tuple[float, float]:
        llm.reset()  # no prompt reuse from the previous run
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


def timed_runs(job: dict[str, Any]) -> dict[str, Any]:
    """The ``llm`` task of this project's worker: load the job's backend, warm it up, run the
    prompt once."""
    threads, context = job.get("threads"), job["context"]
    t0 = time.perf_counter()
    if job.get("gguf"):
        run = llama_cpp_runner(job["gguf"], threads, context)
    else:
        run = bundle_runner(job["bundle"], job["precision"], threads, context)
    load_s = time.perf_counter() - t0
    prompt, (warm_ids, warm_steps) = job["prompt"], job["warmup"]
    run(prompt[:warm_ids], warm_steps)  # first touch of weights, thread pools
    prefill, decode = run(prompt, job["decode_tokens"])
    return {"load_s": load_s, "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode}


def bundle_backends(bundles: Sequence[Path], precisions: Sequence[str] | None) -> list[Backend]:
    """A backend for each exported precision (or each of ``precisions``) of each bundle,
    named by engine and precision (and bundle, when there are several)."""
    from mobilevlm.manifest import GGUF_PRECISIONS, BundleManifest
    from mobilevlm.runtime.loader import backend_for
    from mobilevlm.runtime.options import LoadOptions

    backends = []
    for path in bundles:
        manifest = BundleManifest.read(path)
        for precision in precisions or manifest.precisions + manifest.gguf_precisions:
            name = f"{backend_for(manifest, LoadOptions(precision=precision))} {precision}"
            if precision in GGUF_PRECISIONS:
                name += " (mobilevlm loop)"
            name = name if len(bundles) == 1 else f"{Path(path).name} {name}"
            backends.append(Backend(name, {"bundle": str(path), "precision": precision}))
    return backends


def llama_cpp_backend(gguf: Path) -> Backend:
    return Backend(LLAMA_CPP, {"gguf": str(gguf)})


def genai_backends(bundle: Path, checkpoint: str | None, progress: bool = False) -> list[Backend]:
    """ONNX Runtime GenAI and OpenVINO GenAI on the bundle's LLM, their models converted
    (once, into ``BUNDLE-peers/``) from the checkpoint's weights; skipped rows say why."""
    from mobilevlm.bench.peers import genai

    work = Path(f"{bundle}-peers")
    why = genai.missing()
    hf_dir = work / "hf-llm"
    if why is None and not hf_dir.is_dir():
        if checkpoint is None:
            why = "no checkpoint to take the LLM's weights from (give --model DIR)"
        else:
            from mobilevlm.bench.peers.hf_llm import hf_llm_dir
            from mobilevlm.manifest import BundleManifest

            tokenizer = Path(bundle) / BundleManifest.read(bundle).tokenizer
            hf_llm_dir(checkpoint, tokenizer, hf_dir)
    backends = []
    for peer in genai.PEERS:
        command = (str(genai.peer_python()), str(genai.WORKER))
        row = Backend(peer.name, {"engine": peer.engine}, command)
        if why is None:
            try:
                row.job["model"] = str(genai.model_dir(peer, hf_dir, work, progress))
            except RuntimeError as exc:
                row.skipped = str(exc)
        row.skipped = row.skipped or why
        backends.append(row)
    return backends


def measure(
    backends: Sequence[Backend],
    vocab_size: int,
    prompt_tokens: int = 128,
    decode_tokens: int = 128,
    repeats: int = 5,
    threads: int | None = None,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> list[Throughput]:
    """Interleaved repeats of every backend, each run a fresh process (module docstring)."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(100, vocab_size - 100, prompt_tokens).tolist()
    context = prompt_tokens + decode_tokens + 8
    common = {"task": "llm", "prompt": prompt, "threads": threads, "context": context}
    common["warmup"] = WARMUP_TOKENS
    results = [Throughput(b.name, skipped=b.skipped) for b in backends]
    for round_ in range(repeats + 1):  # round 0 fills the page cache
        for backend, row in zip(backends, results, strict=True):
            if row.skipped:
                continue
            if on_step:
                on_step(f"{f'repeat {round_}' if round_ else 'warm-up'} {backend.name}")
            time.sleep(SETTLE_S)
            steps = decode_tokens if round_ else WARMUP_TOKENS[1]
            job = {**common, **backend.job, "decode_tokens": steps}
            try:
                result = worker(job, command=backend.command, name=backend.name)
            except WorkerError as exc:
                row.skipped = f"failed: {exc}"
                continue
            if round_:
                row.prefill.append(result["prefill_tokens_per_s"])
                row.decode.append(result["decode_tokens_per_s"])
                row.load_s.append(result["load_s"])
                row.peak_mib.append(result["peak_rss"] / MIB)
                row.versions = result.get("versions", {})
    return results


def table(results: Sequence[Throughput], baseline: str = LLAMA_CPP) -> str:
    ran = [r for r in results if r.skipped is None]
    base = next((r for r in ran if r.name == baseline), None)
    width = max(24, *(len(r.name) + 2 for r in results))
    head = f"{'backend':<{width}}{'load s':>8}{'prefill tok/s':>15}{'decode tok/s':>14}"
    head += f"{'peak MiB':>10}"
    if base:
        head += f"{'prefill x':>11}{'decode x':>10}"
    lines = [head]
    for r in results:
        if r.skipped:
            lines.append(f"{r.name:<{width}}skipped: {r.skipped}")
            continue
        line = f"{r.name:<{width}}{statistics.median(r.load_s):>8.2f}"
        line += f"{r.prefill_median:>15.1f}{r.decode_median:>14.1f}"
        line += f"{statistics.median(r.peak_mib):>10.0f}"
        if base:
            line += f"{paired_ratio(r.prefill, base.prefill):>11.2f}"
            line += f"{paired_ratio(r.decode, base.decode):>10.2f}"
        lines.append(line)
    return "\n".join(lines)


def paired_ratio(values: Sequence[float], base: Sequence[float]) -> float:
    """The median of the per-repeat ratios: each repeat's two runs are minutes apart at
    most, so the ratio holds while a shared machine's speed drifts between repeats."""
    return statistics.median(v / b for v, b in zip(values, base, strict=True))


@dataclass
class LLMReport:
    bundles: list[str]
    results: list[Throughput]
    prompt_tokens: int
    decode_tokens: int
    repeats: int
    threads: int | None
    gguf: str | None  # the llama.cpp baseline's file
    machine: str = field(default_factory=lambda: harness.machine())

    @property
    def versions(self) -> dict[str, str]:
        """This environment's packages and those each peer's process reported."""
        found = harness.versions()
        for r in self.results:
            found |= r.versions
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "versions": self.versions,
            "bundles": self.bundles,
            "gguf": self.gguf,
            "prompt_tokens": self.prompt_tokens,
            "decode_tokens": self.decode_tokens,
            "repeats": self.repeats,
            "threads": self.threads,
            "results": [r.to_dict() for r in self.results],
        }

    def summary(self) -> str:
        return "\n".join(
            [
                f"machine: {self.machine}",
                "versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                f"prompt {self.prompt_tokens} random token ids, {self.decode_tokens} decoded "
                f"greedily; medians of {self.repeats} repeats, each a fresh process; "
                f"llama.cpp: Llama.generate on {self.gguf}; x: times llama.cpp's rate, the "
                "median of the ratios within each repeat",
                table(self.results),
            ]
        )


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
