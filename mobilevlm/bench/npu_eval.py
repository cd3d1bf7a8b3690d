"""Held-out Shapes-VQA with the LLM on the NPU, resumable: the questions an HTP simulator
answers in about half a minute each are asked in the background, a line of results per
question, and a run that stops goes on where it stopped.

    python -m mobilevlm.bench.npu_eval BUNDLE --n 100 --out docs/bench/npu-llm-eval.jsonl \
        [--cpu-bundle FULL_BUNDLE]
    python -m mobilevlm.bench.npu_eval BUNDLE --out docs/bench/npu-llm-eval.jsonl --report

Each question runs every variant in turn (the same questions for every row, however far
the run got): the CPU fp32 reference first, then CPU int4, the vision graph and the
prompt on the NPU with the tokens on the CPU (``int4/qnn-prefill``), everything on the
NPU (``int4/qnn-all``). Each line records the answers, their tokens and times, and for
the NPU prefill the cosine of every layer's keys and values over the prompt against the
fp32 reference's cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from mobilevlm.bench.evaluate import EVAL_GENERATION, score, shapes_vqa_items
from mobilevlm.bench.variants import parse_variant
from mobilevlm.errors import BundleError
from mobilevlm.export.parity import cosine
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.pipeline import Pipeline

VARIANTS = ("fp32", "int4", "int4/qnn-prefill", "int4/qnn-all")
REFERENCE = "fp32"


def load(bundle: Path, name: str) -> Pipeline:
    variant = parse_variant(name)
    return Pipeline.load(
        bundle,
        precision=variant.precision,
        providers=variant.providers or ("cpu",),
        npu_parts=variant.npu_parts,
    )


def cache_rows(pipeline: Pipeline, length: int) -> list[np.ndarray]:
    """Every layer's keys, then values, over the first ``length`` positions (copies)."""
    cache = pipeline.model.decoder.cache
    return [b.numpy()[0, :, :length].copy() for b in (*cache.keys, *cache.values)]


def identity(bundle: Path) -> str:
    """A digest of ``bundle``'s graphs and tables, from the sha256 its manifest records of
    each: the same for the same export made again (a run resumes across machines that
    rebuild the bundle alike), other for anything that answers differently. The EPContext
    binaries are left out: they are compiled from the QDQ graphs, which are in."""
    manifest = BundleManifest.read(bundle)
    files = sorted(
        (f.path, f.sha256) for a in manifest.artefacts if a.format != EPCONTEXT for f in a.files
    )
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def run(
    bundle: Path, out: Path, n: int, variants: tuple[str, ...], cpu_bundle: Path | None = None
) -> None:
    """``cpu_bundle``: where the CPU variants load from (a bundle with the fp32 decoder the
    NPU bundle may lack; the same model), else ``bundle``. Each line records the bundles'
    identity, and a run goes on only from lines of the same ones: a table never mixes
    two exports' answers."""
    made_by = {"bundle": identity(bundle), "cpu_bundle": identity(cpu_bundle or bundle)}
    lines = [json.loads(text) for text in out.read_text().splitlines()] if out.is_file() else []
    if any({key: line.get(key) for key in made_by} != made_by for line in lines):
        raise BundleError(
            f"{out}: its answers are another bundle's (or older than the bundle check): "
            "write to another --out, or delete it to start again"
        )
    done = len(lines)
    pipelines = {
        name: load(bundle if parse_variant(name).providers else cpu_bundle or bundle, name)
        for name in variants
    }
    for index, item in enumerate(shapes_vqa_items(n), start=0):
        if index < done:
            continue
        line = {"index": index, "question": item.question, "answer": item.answer}
        line.update(kind=item.kind, **made_by)
        reference_rows = None
        for name, pipeline in pipelines.items():
            pipeline.reset()
            result = pipeline.generate(item.image(), item.question, EVAL_GENERATION)
            predicted = result.text.strip()
            line[name] = {
                "predicted": predicted,
                "correct": score(predicted, item.answer, item.kind),
                "token_ids": result.token_ids,
                "ms": round(result.stats.total_ms, 1),
            }
            prompt = result.stats.prefill_tokens
            if name == REFERENCE:
                reference_rows = cache_rows(pipeline, prompt)
            elif name.endswith("qnn-prefill") and reference_rows is not None:
                rows = cache_rows(pipeline, prompt)
                line[name]["kv_cosine"] = [
                    round(float(cosine(a.reshape(1, -1), b.reshape(1, -1))[0]), 6)
                    for a, b in zip(rows, reference_rows, strict=True)
                ]
        with out.open("a") as file:
            file.write(json.dumps(line) + "\n")
        print(f"{index + 1}/{n}: " + ", ".join(
            f"{v} {'ok' if line[v]['correct'] else 'wrong'}" for v in pipelines
        ), flush=True)  # fmt: skip


def report(out: Path, variants: tuple[str, ...]) -> str:
    """The table of what ``out`` holds: accuracy, answers token for token the reference's,
    median seconds per question, and the K/V cosine of the NPU prefill."""
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    rows = [
        "| variant | accuracy | same tokens as fp32 | s / question (median) |",
        "|---|---:|---:|---:|",
    ]
    for name in variants:
        got = [line[name] for line in lines if name in line]
        if not got:
            continue
        same = sum(
            line[name]["token_ids"] == line[REFERENCE]["token_ids"]
            for line in lines
            if name in line and REFERENCE in line
        )
        seconds = statistics.median(g["ms"] for g in got) / 1000
        rows.append(
            f"| `{name}` | {sum(g['correct'] for g in got) / len(got):.1%} | "
            f"{same / len(got):.1%} | {seconds:.2f} |"
        )
    cosines = [c for line in lines for c in line.get("int4/qnn-prefill", {}).get("kv_cosine", [])]
    tail = f"\n\n{len(lines)} questions."
    if cosines:
        per_layer = np.array(
            [line["int4/qnn-prefill"]["kv_cosine"] for line in lines if "int4/qnn-prefill" in line]
        )
        layers = per_layer.shape[1] // 2
        worst = per_layer.min(0)
        tail += (
            f" NPU prefill K/V cosine against the fp32 cache, over the prompt: mean "
            f"{np.mean(cosines):.4f}, lowest {min(cosines):.4f} (keys: layer "
            f"{int(worst[:layers].argmin())}, {worst[:layers].min():.4f}; values: layer "
            f"{int(worst[layers:].argmin())}, {worst[layers:].min():.4f})."
        )
    return "\n".join(rows) + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.npu_eval")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSONL, appended to (resumed)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--cpu-bundle", type=Path, help="the CPU variants' bundle (default: BUNDLE), same model"
    )
    parser.add_argument("--report", action="store_true", help="print the table and stop")
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if not args.report:
        try:
            run(args.bundle, args.out, args.n, variants, args.cpu_bundle)
        except BundleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(report(args.out, variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
