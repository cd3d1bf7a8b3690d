"""Accuracy of a model on Shapes-VQA or on a JSONL of image/question/answer.

Backend-agnostic and torch-free: it needs only something with
``generate(image, prompt, config) -> GenerationResult``. Questions are asked
exactly as ``mobilevlm run`` asks them (one user turn in the model's
template) and decoded greedily; answers are scored with the spec's rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from mobilevlm import shapes_vqa
from mobilevlm.errors import MobileVLMError, at
from mobilevlm.preprocess import load_image
from mobilevlm.result import GenerationResult
from mobilevlm.sampling import GenerationConfig

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
