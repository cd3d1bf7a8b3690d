"""Accuracy of a model on Shapes-VQA or on a JSONL of image/question/answer.

Backend-agnostic and torch-free: it needs only something with
``generate(image, prompt, config) -> GenerationResult``. Questions are asked
exactly as ``mobilevlm run`` asks them (one user turn in the model's
template) and decoded greedily; answers are scored with the spec's rule.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from mobilevlm import shapes_vqa
from mobilevlm.bench.variants import Variant
from mobilevlm.errors import MobileVLMError, at
from mobilevlm.generation.preprocess import load_image
from mobilevlm.generation.result import GenerationResult
from mobilevlm.generation.sampling import GenerationConfig

SHAPES_VQA = "shapes-vqa"
EVAL_GENERATION = GenerationConfig(max_new_tokens=16, temperature=0.0)


class Answerer(Protocol):
    def generate(
        self, image, prompt: str, config: GenerationConfig | None = None, on_text=None
    ) -> GenerationResult: ...


@dataclass(frozen=True)
class Item:
    image: Callable[[], Image.Image]
    question: str
    answer: str
    kind: str | None = None


@dataclass
class Record:
    question: str
    expected: str
    predicted: str
    kind: str
    correct: bool
    token_ids: list[int] = field(default_factory=list)  # greedy answer, for agreement
    ms: float = 0.0  # wall-clock time of the whole answer, image encode included


@dataclass
class EvalReport:
    dataset: str
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0

    def accuracy(self, kind: str | None = None) -> float:
        rows = [r for r in self.records if kind is None or r.kind == kind]
        return sum(r.correct for r in rows) / len(rows) if rows else float("nan")

    @property
    def kinds(self) -> list[str]:
        return sorted({r.kind for r in self.records})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n": len(self.records),
            "accuracy": self.accuracy(),
            "per_kind": {
                k: {"n": sum(r.kind == k for r in self.records), "accuracy": self.accuracy(k)}
                for k in self.kinds
            },
            "seconds": round(self.seconds, 2),
        }

    def table(self) -> str:
        lines = [f"{'kind':<12} {'n':>5} {'accuracy':>9}"]
        for k in self.kinds:
            n = sum(r.kind == k for r in self.records)
            lines.append(f"{k:<12} {n:>5} {self.accuracy(k):>9.1%}")
        lines.append(f"{'overall':<12} {len(self.records):>5} {self.accuracy():>9.1%}")
        return "\n".join(lines)


def shapes_vqa_items(n: int, split: str = "heldout", start: int = 0) -> Iterator[Item]:
    """The first ``n`` samples of a Shapes-VQA split (generated, deterministic)."""
    for i in range(start, start + n):
        s = shapes_vqa.sample(split, i)
        yield Item(s.image, s.question.question, s.question.answer, s.question.kind)


def jsonl_items(path: str | Path, n: int | None = None) -> Iterator[Item]:
    """Items of a JSONL file: ``{"image": ..., "question": ..., "answer": ..., "kind": ...}``
    per line, image paths relative to the file; ``kind`` optional."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise MobileVLMError(at(path, f"cannot read ({e.strerror or e})")) from None
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = path.parent / row["image"]
            question, answer = str(row["question"]), str(row["answer"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise MobileVLMError(
                at(path, f"line {number} is not an image/question/answer object ({e})")
            ) from None
        yield Item(lambda image=image: load_image(image), question, answer, row.get("kind"))
        count += 1
        if n is not None and count >= n:
            return


def items_for(dataset: str, n: int) -> list[Item]:
    """The first ``n`` items of ``dataset``: "shapes-vqa" or a JSONL file (read and checked
    whole before anything runs)."""
    if dataset == SHAPES_VQA:
        return list(shapes_vqa_items(n))
    return list(jsonl_items(dataset, n))


def score(prediction: str, expected: str, kind: str | None) -> bool:
    """The Shapes-VQA rule for its kinds; normalized exact match otherwise."""
    if kind in shapes_vqa.VOCABULARY:
        return shapes_vqa.is_correct(prediction, expected, kind)
    return shapes_vqa.normalize(prediction) == shapes_vqa.normalize(expected)


def evaluate(
    model: Answerer,
    items: Iterable[Item],
    dataset: str,
    on_record: Callable[[Record], None] | None = None,
) -> EvalReport:
    report = EvalReport(dataset)
    t0 = time.perf_counter()
    for item in items:
        result = model.generate(item.image(), item.question, EVAL_GENERATION)
        predicted = result.text.strip()
        record = Record(
            item.question,
            item.answer,
            predicted,
            item.kind or "all",
            score(predicted, item.answer, item.kind),
            result.token_ids,
            result.stats.total_ms,
        )
        report.records.append(record)
        if on_record:
            on_record(record)
    report.seconds = time.perf_counter() - t0
    return report


def side_by_side(reports: dict[str, EvalReport]) -> str:
    """Accuracy per kind (rows) for several models or precisions (columns)."""
    names = list(reports)
    kinds = sorted({k for r in reports.values() for k in r.kinds})
    width = max(10, *(len(n) for n in names))
    lines = [f"{'kind':<12} {'n':>5} " + " ".join(f"{n:>{width}}" for n in names)]
    first = reports[names[0]]
    for k in kinds:
        n = sum(r.kind == k for r in first.records)
        cells = " ".join(f"{reports[m].accuracy(k):>{width}.1%}" for m in names)
        lines.append(f"{k:<12} {n:>5} {cells}")
    cells = " ".join(f"{reports[m].accuracy():>{width}.1%}" for m in names)
    lines.append(f"{'overall':<12} {len(first.records):>5} {cells}")
    return "\n".join(lines)


@dataclass
class VariantEval:
    """One variant's answers, measured in a process of its own (:func:`compare`)."""

    name: str
    report: EvalReport
    load_s: float = 0.0
    peak_rss: int = 0  # bytes
    disk_bytes: int | None = None
    agreement: float | None = None  # questions answered with the reference's exact tokens

    @property
    def ms_per_question(self) -> float:
        return statistics.median(r.ms for r in self.report.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "run": self.name,
            "agreement": self.agreement,
            "ms_per_question": self.ms_per_question,
            "load_s": round(self.load_s, 3),
            "peak_rss": self.peak_rss,
            "disk_bytes": self.disk_bytes,
        }


def token_agreement(records: Sequence[Record], reference: Sequence[Record]) -> float | None:
    """Share of questions whose greedy tokens equal the reference's (None without tokens)."""
    pairs = [(a, b) for a, b in zip(records, reference, strict=True) if a.token_ids and b.token_ids]
    return sum(a.token_ids == b.token_ids for a, b in pairs) / len(pairs) if pairs else None


def reference_of(names: Sequence[str]) -> str:
    """The variant others are compared with: the torch reference, else ONNX fp32, else the
    first."""
    return next((n for n in ("torch", "fp32") if n in names), names[0])


def compare(
    bundle: str | Path,
    variants: Sequence[Variant],
    dataset: str,
    n: int,
    checkpoint: str | None = None,
    threads: int | None = None,
    on_record: Callable[[str, Record], None] | None = None,
    **load_options,
) -> list[VariantEval]:
    """Evaluate each variant of ``bundle`` in a fresh process (so its peak memory is its
    own), then each one's agreement with the reference (:func:`reference_of`).
    ``load_options``: ``providers``, ``context``, ``vision_precision`` for the bundle's
    variants (see :func:`mobilevlm.bench.worker.load`)."""
    from mobilevlm.bench.harness import worker

    job = {"task": "eval", "bundle": str(bundle), "checkpoint": checkpoint, "threads": threads}
    job.update({"dataset": str(dataset), "n": n, **load_options})
    results = []
    for variant in variants:
        report = EvalReport(dataset)

        def collect(row: dict, name: str = variant.name, report: EvalReport = report) -> None:
            record = Record(**row["record"])
            report.records.append(record)
            if on_record:
                on_record(name, record)

        done = worker({**job, "variant": variant.name}, collect)
        report.seconds = done["seconds"]
        results.append(VariantEval(variant.name, report, done["load_s"], done["peak_rss"]))
    reference = next(r for r in results if r.name == reference_of([r.name for r in results]))
    for r in results:
        r.agreement = token_agreement(r.report.records, reference.report.records)
    return results


def comparison_table(results: Sequence[VariantEval]) -> str:
    """Accuracy per kind, then agreement, latency and memory, one column per variant."""
    reports = {r.name: r.report for r in results}
    width = max(10, *(len(r.name) for r in results))
    reference = reference_of([r.name for r in results])
    lines = [side_by_side(reports), ""]

    def row(label: str, cells: Iterable[str]) -> str:
        return f"{label:<18}" + " ".join(f"{c:>{width}}" for c in cells)

    lines.append(row("", (r.name for r in results)))
    lines.append(
        row(
            f"same as {reference}",
            ("-" if r.agreement is None else f"{r.agreement:.1%}" for r in results),
        )
    )
    lines.append(row("ms / question", (f"{r.ms_per_question:.0f}" for r in results)))
    lines.append(row("peak MiB", (f"{r.peak_rss / 2**20:.0f}" for r in results)))
    return "\n".join(lines)
