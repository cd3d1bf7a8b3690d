"""`mobilevlm bench`: every variant of a bundle and the peers, measured side by side.

Each measurement is a fresh process (:mod:`mobilevlm.bench.worker`)
that loads one variant, warms it up with a short answer (not recorded), then
answers the same image and prompt decoding exactly ``decode_tokens`` tokens
(EOS ignored). Rounds are interleaved (A B C, A B C, ...) after one unrecorded
round that fills the page cache, so a noisy shared machine slows every
variant alike; the report gives the median and the range over the repeats.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mobilevlm.bench.variants import Variant, disk_bytes, parse_variant, unavailable
from mobilevlm.errors import MobileVLMError
from mobilevlm.manifest import DEFAULT_MODEL_SOURCE, BundleManifest
from mobilevlm.runtime.loader import DEFAULT_CONTEXT

DEFAULT_PROMPT = "Describe the image in detail."
SETTLE_S = 0.25  # lets the previous process's worker threads and page writes settle
MIB = 1024 * 1024
# (key, column title, format, higher is better)
METRICS = (
    ("load_s", "load s", "{:.2f}", False),
    ("image_encode_ms", "encode ms", "{:.0f}", False),
    ("ttft_ms", "TTFT ms", "{:.0f}", False),
    ("prefill_tokens_per_s", "prefill tok/s", "{:.0f}", True),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}", True),
    ("peak_rss_mib", "peak MiB", "{:.0f}", False),
)
CPU_EXTENSIONS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_int8",
    "amx_bf16",
    "asimd",
)
PACKAGES = ("onnxruntime", "onnxruntime-qnn", "llama-cpp-python", "torch", "transformers", "numpy")
SIMULATED = "*"  # marks a variant whose image encode ran on the HTP simulator
SIMULATED_NOTE = (
    f"{SIMULATED} image encode on Qualcomm's HTP simulator (x86-64, onnxruntime-qnn): its "
    "placement and numerics are the NPU's, its times say nothing about a phone's latency"
)


def display_name(name: str) -> str:
    """The variant's name, marked when its image encode runs on the HTP simulator here."""
    from mobilevlm.runtime.ort import qnn

    return name + (SIMULATED if parse_variant(name).providers and qnn.simulated() else "")


def simulator_notes(names: Iterable[str]) -> list[str]:
    """The note that explains the mark, when one of ``names`` carries it."""
    return [SIMULATED_NOTE] if any(display_name(n) != n for n in names) else []


class WorkerError(MobileVLMError):
    """A measurement process failed; the message is its last line."""


@dataclass
class BenchSettings:
    prompt: str = DEFAULT_PROMPT
    decode_tokens: int = 64
    repeats: int = 5
    threads: int | None = None
    context: int | None = None  # None: the runtime's default
    image: Path | None = None  # None: a held-out Shapes-VQA scene


@dataclass
class VariantResult:
    variant: Variant
    samples: dict[str, list[float | None]] = field(default_factory=dict)  # metric -> per repeat
    prefill_tokens: int = 0
    decode_tokens: int = 0
    disk_bytes: int | None = None
    estimate_bytes: int | None = None  # the memory planner's peak estimate
    skipped: str | None = None  # why it did not run

    def values(self, metric: str) -> list[float]:
        return [v for v in self.samples.get(metric, []) if v is not None]

    def median(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.median(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        stats = {
            m: {"median": self.median(m), "min": min(v), "max": max(v), "samples": v}
            for m, *_ in METRICS
            if (v := self.values(m))
        }
        return {
            **self.variant.to_dict(),
            "skipped": self.skipped,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "disk_bytes": self.disk_bytes,
            "estimate_bytes": self.estimate_bytes,
            "metrics": stats,
        }


@dataclass
class BenchReport:
    bundle: str
    settings: BenchSettings
    results: list[VariantResult]
    machine: str = field(default_factory=lambda: machine())
    versions: dict[str, str] = field(default_factory=lambda: versions())

    @property
    def ran(self) -> list[VariantResult]:
        return [r for r in self.results if r.skipped is None]

    def baseline(self, name: str | None = None) -> VariantResult | None:
        """The row ratios are taken against: ``name``, else the torch reference, else the
        first that ran."""
        ran = self.ran
        if name is not None:
            found = [r for r in ran if r.variant.name == name]
            if not found:
                raise MobileVLMError(f"baseline {name!r} is not among the variants that ran")
            return found[0]
        return next((r for r in ran if r.variant.name == "torch"), ran[0] if ran else None)

    def to_dict(self, baseline: str | None = None) -> dict[str, Any]:
        base = self.baseline(baseline)
        s = self.settings
        return {
            "machine": self.machine,
            "versions": self.versions,
            "bundle": self.bundle,
            "prompt": s.prompt,
            "image": str(s.image) if s.image else None,
            "decode_tokens": s.decode_tokens,
            "repeats": s.repeats,
            "threads": s.threads,
            "context": s.context,
            "baseline": base.variant.name if base else None,
            "results": [r.to_dict() for r in self.results],
        }

    def summary(self, baseline: str | None = None) -> str:
        """The machine, what was measured, and the table: what ``bench`` prints."""
        s = self.settings
        notes = simulator_notes(r.variant.name for r in self.results if not r.skipped)
        return "\n".join(
            [
                f"machine: {self.machine}",
                f"bundle {self.bundle}; image + prompt {s.prompt!r}, {s.decode_tokens} tokens "
                f"decoded; medians of {s.repeats} runs, each a fresh process; "
                "x: times faster than the baseline",
                self.table(baseline),
                *notes,
            ]
        )

    def table(self, baseline: str | None = None) -> str:
        base = self.baseline(baseline)
        head = [f"{'variant':<24}"] + [f"{title:>14}" for _, title, *_ in METRICS]
        head += [f"{'est. MiB':>9}", f"{'disk MiB':>9}"]
        if base:
            head += [f"{'TTFT x':>7}", f"{'decode x':>9}"]
        lines = ["".join(head)]
        for r in self.results:
            if r.skipped:
                lines.append(f"{r.variant.name:<24}  skipped: {r.skipped}")
                continue
            cells = [f"{display_name(r.variant.name):<24}"]
            for key, _, fmt, _ in METRICS:
                value = r.median(key)
                cells.append(f"{fmt.format(value) if value is not None else '-':>14}")
            for size in (r.estimate_bytes, r.disk_bytes):
                cells.append(f"{size / MIB:>9.0f}" if size else f"{'-':>9}")
            if base:
                cells.append(f"{speedup(base, r, 'ttft_ms', False):>7}")
                cells.append(f"{speedup(base, r, 'decode_tokens_per_s', True):>9}")
            lines.append("".join(cells))
        return "\n".join(lines)


def speedup(base: VariantResult, row: VariantResult, metric: str, higher_better: bool) -> str:
    """How many times faster ``row`` is than ``base`` on ``metric``."""
    a, b = base.median(metric), row.median(metric)
    if not a or not b:
        return "-"
    return f"{(b / a if higher_better else a / b):.2f}"


def machine() -> str:
    """The CPU, its vector extensions that decide the kernels (int8 dot products need VNNI),
    the core count and the OS: what a reader needs to compare numbers."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    extensions = [name for name in CPU_EXTENSIONS if name in flags]
    if extensions:
        cpu += f" ({', '.join(extensions)})"
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def worker(
    job: dict[str, Any],
    on_row: Callable[[dict], None] | None = None,
    command: Sequence[str] = (),
    name: str | None = None,
) -> dict:
    """Run one job in a fresh process, by default this project's worker in this Python (a
    peer's worker in its own environment gives its ``command``); its ``result`` row
    (WorkerError when it failed, named by ``name``, else the job's variant)."""
    command = [*(command or (sys.executable, "-m", "mobilevlm.bench.worker")), json.dumps(job)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    # stderr to a file: llama.cpp's logs could fill a pipe nobody reads while stdout is read
    with (
        tempfile.TemporaryFile("w+") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        ) as process,
    ):
        result = error = None
        for line in process.stdout:
            row = json.loads(line)
            if "result" in row:
                result = row["result"]
            elif "error" in row:
                error = row["error"]
            elif on_row:
                on_row(row)
        process.wait()
        log.seek(0)
        stderr = log.read()
    if result is None:
        last = error or (stderr.strip().splitlines() or ["no output"])[-1]
        raise WorkerError(f"{name or job['variant']}: {last}")
    return result


def checkpoint_for(manifest: BundleManifest, given: Path | None) -> str | None:
    """Where the torch variants load their weights: ``given``, the bundle's recorded source
    when it is a directory here, the built-in model when torch is installed (its assembled
    directory, or DEFAULT_MODEL_SOURCE until it is assembled); else None."""
    if given is not None:
        return str(given)
    source = manifest.exporter.get("source", "")
    if source == DEFAULT_MODEL_SOURCE:
        if not importlib.util.find_spec("torch"):
            return None
        from mobilevlm.default_model import default_model_dir

        assembled = default_model_dir()
        return str(assembled) if assembled.is_dir() else source
    return source if source and Path(source).is_dir() else None


def scene_image(directory: Path) -> Path:
    """The first held-out Shapes-VQA scene as a PNG (the default bench image)."""
    from mobilevlm import shapes_vqa

    path = directory / "scene.png"
    shapes_vqa.sample("heldout", 0).image().save(path)
    return path


def memory_estimate(manifest: BundleManifest, variant: Variant, context: int | None) -> int | None:
    """The planner's estimated peak for what the variant loads (runtime backends only)."""
    if variant.uses_reference or variant.peer:
        return None
    from mobilevlm.runtime.memory import plan_memory

    context = min(context or DEFAULT_CONTEXT, manifest.model.llm.max_position_embeddings)
    plan = plan_memory(
        manifest,
        1 << 50,
        backend=variant.engine,  # the backend's name
        precision=variant.precision,
        mode=variant.mode or "hybrid",
        context=context,
        vision_precision=variant.vision_precision,
        providers=variant.providers or ("cpu",),
        npu_parts=variant.npu_parts,
    )
    return plan.total


def run_bench(
    bundle: Path,
    variants: Sequence[Variant],
    settings: BenchSettings,
    checkpoint: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure ``variants`` of ``bundle`` (see the module docstring)."""
    manifest = BundleManifest.read(bundle)
    reference = checkpoint_for(manifest, checkpoint)
    results = []
    for v in variants:
        why = unavailable(v, manifest, reference)
        row = VariantResult(v, skipped=why)
        if why is None:
            row.disk_bytes = disk_bytes(v, manifest, bundle, reference)
            row.estimate_bytes = memory_estimate(manifest, v, settings.context)
        results.append(row)
    with tempfile.TemporaryDirectory() as scratch:
        image = settings.image or scene_image(Path(scratch))
        base_job = {
            "task": "bench",
            "bundle": str(bundle),
            "checkpoint": reference,
            "image": str(image),
            "prompt": settings.prompt,
            "decode_tokens": settings.decode_tokens,
            "threads": settings.threads,
            "context": settings.context,
        }
        for round_ in range(settings.repeats + 1):  # round 0 fills the page cache
            for row in results:
                if row.skipped:
                    continue
                if on_step:
                    stage = f"repeat {round_}" if round_ else "warm-up"
                    on_step(f"{stage} {row.variant.name}")
                time.sleep(SETTLE_S)
                job = {**base_job, "variant": row.variant.name}
                if round_ == 0:
                    job["decode_tokens"] = 4
                try:
                    result = worker(job)
                except WorkerError as exc:
                    row.skipped = f"failed: {exc}"
                    continue
                if round_ == 0:
                    continue
                _record(row, result)
    return BenchReport(str(bundle), settings, results)


def _record(row: VariantResult, result: dict) -> None:
    run = result["runs"][0]
    row.prefill_tokens, row.decode_tokens = run["prefill_tokens"], run["decode_tokens"]
    values = {**run, "load_s": result["load_s"], "peak_rss_mib": result["peak_rss"] / MIB}
    for key, *_ in METRICS:
        row.samples.setdefault(key, []).append(values[key])
