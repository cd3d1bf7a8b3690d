"""`--report DIR` for `bench` and `eval`: a Markdown page, the raw JSON, and PNG charts.

Charts are drawn with matplotlib (the ``report`` extra) on the Agg backend, so
no display is needed. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from mobilevlm.bench.evaluate import VariantEval, reference_of
from mobilevlm.bench.harness import (
    METRICS,
    MIB,
    BenchReport,
    VariantResult,
    display_name,
    machine,
    simulator_notes,
    speedup,
)
from mobilevlm.bench.llm_only import LLMReport
from mobilevlm.errors import MissingDependencyError

# one color per engine, the same in every chart
COLORS = {
    "torch": "#7f7f7f",
    "onnxruntime": "#1f77b4",
    "llama.cpp": "#2ca02c",
    "transformers": "#9467bd",
    "llama-cpp-python": "#d62728",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            "--report draws charts with matplotlib: pip install 'mobilevlm-runtime[report]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def _text(path: Path, text: str) -> None:
    _write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _save(figure, path: Path, bottom: float = 0.0) -> None:
    """``bottom``: inches kept free under the axes (for a legend there)."""
    figure.tight_layout(rect=(0, bottom / figure.get_figheight(), 1, 1))
    _write(path, lambda p: figure.savefig(p, dpi=120, format="png"))


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _spread(row: VariantResult, key: str, fmt: str) -> str:
    values = row.values(key)
    if not values:
        return "–"
    median = fmt.format(row.median(key))
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _bars(ax, rows: Sequence[VariantResult], values: Sequence[float | None], label: str) -> None:
    names = [r.variant.name for r in rows]
    heights = [v or 0.0 for v in values]
    colors = [COLORS.get(r.variant.engine, "#333333") for r in rows]
    bars = ax.barh(names, heights, color=colors)
    for bar, value in zip(bars, values, strict=True):
        text = "n/a" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.2f}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {text}", va="center")
    ax.set_xlabel(label)
    if not ax.yaxis_inverted():  # the first variant on top (axes may share their y)
        ax.invert_yaxis()
    ax.margins(x=0.18)


def bench_charts(report: BenchReport, directory: Path) -> list[Path]:
    """latency.png (image encode + prefill = time to first token, and load), throughput.png
    (prefill and decode tokens/s), memory.png (peak RSS, estimate, disk size)."""
    plt = _pyplot()
    rows = report.ran
    names = [r.variant.name for r in rows]
    height = 1.6 + 0.45 * len(rows)
    paths = []

    fig, (ax, ax_load) = plt.subplots(1, 2, figsize=(12, height), width_ratios=(3, 1))
    encode = [r.median("image_encode_ms") for r in rows]
    ttft = [r.median("ttft_ms") or 0.0 for r in rows]
    split = [e is not None for e in encode]  # a peer may not expose its encode time
    encode = [e or 0.0 for e in encode]
    prefill = [t - e if ok else 0.0 for t, e, ok in zip(ttft, encode, split, strict=True)]
    whole = [0.0 if ok else t for t, ok in zip(ttft, split, strict=True)]
    ax.barh(names, encode, color="#ff7f0e", label="image encode")
    ax.barh(names, prefill, left=encode, color="#1f77b4", label="prefill")
    if not all(split):
        ax.barh(names, whole, color="#bbbbbb", hatch="//", label="encode + prefill (not split)")
    for y, t in enumerate(ttft):
        ax.text(t, y, f" {t:,.0f} ms", va="center")
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set_xlabel("time to first token, ms (median; lower is better)")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False)
    _bars(ax_load, rows, [r.median("load_s") for r in rows], "load, s")
    ax_load.set_yticks([])
    fig.suptitle(f"Latency: image + prompt to first token\n{report.machine}", fontsize=10)
    paths.append(directory / "latency.png")
    _save(fig, paths[-1], bottom=0.4)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    _bars(axes[0], rows, [r.median("prefill_tokens_per_s") for r in rows], "prefill tokens/s")
    _bars(axes[1], rows, [r.median("decode_tokens_per_s") for r in rows], "decode tokens/s")
    fig.suptitle("Throughput (median; higher is better)", fontsize=10)
    paths.append(directory / "throughput.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    _bars(axes[0], rows, [r.median("peak_rss_mib") for r in rows], "peak RSS, MiB (measured)")
    for y, r in enumerate(rows):
        if r.estimate_bytes:
            axes[0].plot(r.estimate_bytes / MIB, y, "k|", markersize=18)
    axes[0].plot([], [], "k|", markersize=12, label="planner's estimate")
    axes[0].legend(loc="lower right")
    _bars(axes[1], rows, [(r.disk_bytes or 0) / MIB for r in rows], "files on disk, MiB")
    fig.suptitle("Memory (lower is better)", fontsize=10)
    paths.append(directory / "memory.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def bench_markdown(report: BenchReport, baseline: str | None = None) -> str:
    s = report.settings
    base = report.baseline(baseline)
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    lines = [
        "# mobilevlm bench",
        "",
        f"- machine: {report.machine}",
        f"- versions: {versions}",
        f"- bundle: `{report.bundle}`",
        f"- workload: one image + {s.prompt!r}, exactly {s.decode_tokens} tokens decoded (EOS "
        f"ignored); {s.repeats} repeats, each a fresh process after an unrecorded warm-up "
        "round; median (min–max)",
        f"- ratios: times faster than `{base.variant.name}`" if base else "",
        "",
        "![latency](latency.png)",
        "![throughput](throughput.png)",
        "![memory](memory.png)",
        "",
    ]
    head = ["variant", "engine"] + [title for _, title, *_ in METRICS]
    head += ["estimate MiB", "disk MiB", "TTFT x", "decode x"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.results:
        if r.skipped:
            continue
        cells = [f"`{display_name(r.variant.name)}`", r.variant.engine]
        cells += [_spread(r, key, fmt) for key, _, fmt, _ in METRICS]
        cells += [_fmt(r.estimate_bytes and r.estimate_bytes / MIB, "{:.0f}")]
        cells += [_fmt(r.disk_bytes and r.disk_bytes / MIB, "{:.0f}")]
        if base:
            cells += [
                speedup(base, r, "ttft_ms", False),
                speedup(base, r, "decode_tokens_per_s", True),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [r for r in report.results if r.skipped]
    if skipped:
        lines += ["", "Not measured:"]
        lines += [f"- `{r.variant.name}`: {r.skipped}" for r in skipped]
    lines += [
        "",
        "Load: the model's load call, libraries already imported, files in the page cache. "
        "Encode: preprocessing, vision tower and projector. TTFT: encode plus the prefill of "
        "image and prompt. Peak: the worker process's VmHWM. llama-cpp-python's chat path "
        "encodes the image inside its first-token time and exposes no split.",
        *simulator_notes(r.variant.name for r in report.results if not r.skipped),
        "",
    ]
    return "\n".join(lines)


def write_bench_report(
    report: BenchReport, directory: str | Path, baseline: str | None = None
) -> Path:
    """report.md, bench.json and the charts in ``directory``; returns report.md's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bench_charts(report, directory)
    _text(directory / "bench.json", json.dumps(report.to_dict(baseline), indent=1))
    _text(directory / "report.md", bench_markdown(report, baseline))
    return directory / "report.md"


def write_llm_report(report: LLMReport, directory: str | Path) -> Path:
    """llm.md (the summary) and llm.json (every sample) in ``directory``; returns llm.md's
    path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _text(directory / "llm.json", json.dumps(report.to_dict(), indent=1))
    title = "# The LLM alone: this runtime against llama.cpp, ONNX Runtime GenAI, OpenVINO GenAI"
    _text(directory / "llm.md", f"{title}\n\n```\n{report.summary()}\n```\n")
    return directory / "llm.md"


def tradeoff_chart(results: Sequence[VariantEval], path: Path) -> None:
    """Accuracy against latency per question and against peak memory, one point a variant."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    markers = "osD^v<>pP*Xh"
    accuracy = [100 * r.report.accuracy() for r in results]
    for ax, (label, value) in zip(
        axes,
        (
            ("median latency per question, ms (lower is better)", lambda r: r.ms_per_question),
            ("peak RSS, MiB (lower is better)", lambda r: r.peak_rss / MIB),
        ),
        strict=True,
    ):
        for i, (r, y) in enumerate(zip(results, accuracy, strict=True)):
            color = COLORS.get(_engine(r.name), "#333333")
            ax.scatter([value(r)], [y], s=70, color=color, marker=markers[i % len(markers)])
            ax.scatter([], [], color=color, marker=markers[i % len(markers)], label=r.name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)
    axes[0].set_ylabel("accuracy, % (higher is better)")
    axes[0].set_ylim(max(-3.0, min(accuracy) - 10), min(103.0, max(accuracy) + 10))
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    n = len(results[0].report.records)
    fig.suptitle(f"Accuracy against cost: {results[0].report.dataset}, {n} questions", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def _engine(name: str) -> str:
    from mobilevlm.bench.variants import parse_variant

    return parse_variant(name).engine


def eval_markdown(results: Sequence[VariantEval], bundle: str) -> str:
    reference = reference_of([r.name for r in results])
    kinds = sorted({k for r in results for k in r.report.kinds})
    first = results[0].report
    lines = [
        "# mobilevlm eval",
        "",
        f"- machine: {machine()}",
        f"- bundle: `{bundle}`; dataset: {first.dataset}, {len(first.records)} questions, "
        "greedy, scored with the Shapes-VQA rule",
        f"- agreement: questions answered with exactly `{reference}`'s greedy tokens",
        "- each variant ran in a process of its own: latency is the median per question "
        "(image encode, prefill and answer), memory the process's peak RSS",
        "",
        "![trade-off](tradeoff.png)",
        "",
    ]
    head = ["variant", "accuracy", *kinds, "agreement", "ms / question", "peak MiB", "disk MiB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"`{display_name(r.name)}`", f"{r.report.accuracy():.1%}"]
        cells += [f"{r.report.accuracy(k):.1%}" for k in kinds]
        cells += ["–" if r.agreement is None else f"{r.agreement:.1%}"]
        cells += [f"{r.ms_per_question:.0f}", f"{r.peak_rss / MIB:.0f}"]
        cells += [_fmt(r.disk_bytes and r.disk_bytes / MIB, "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *simulator_notes(r.name for r in results)]
    return "\n".join(lines) + "\n"


def write_eval_report(results: Sequence[VariantEval], directory: str | Path, bundle: str) -> Path:
    """eval.md, eval.json, records.jsonl (every answer of every variant) and tradeoff.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tradeoff_chart(results, directory / "tradeoff.png")
    records = []
    for r in results:
        for record in r.report.records:
            row = {"variant": r.name, **vars(record)}
            records.append(json.dumps(row))
    _text(directory / "records.jsonl", "\n".join(records) + "\n")
    _text(directory / "eval.json", json.dumps([r.to_dict() for r in results], indent=1))
    _text(directory / "eval.md", eval_markdown(results, bundle))
    return directory / "eval.md"
