"""One variant in a process of its own: load it, answer, report times and peak memory.

`mobilevlm bench` and `mobilevlm eval` start one worker per variant (bench: per
repeat too), so each variant's peak RSS is its own, a variant cannot warm up
another's caches, and a crash costs one row. A worker reads one JSON job from
its argument and prints JSON lines: ``{"record": ...}`` per eval question, then
``{"result": ...}``. Task ``llm`` (``bench --llm-only``) times the LLM alone on
token ids (:func:`mobilevlm.bench.llm_only.timed_runs`).

This runtime's variants (and the torch reference) run through
:class:`~mobilevlm.runtime.pipeline.Pipeline`, the API users call, with the image
given as its file: every number includes what a user's call pays (decoding the
file, the embeddings cache's key, the lock). Only the peers run their own loops.

    python -m mobilevlm.bench.worker '{"task": "bench", "variant": "int4", ...}'
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from mobilevlm.bench.variants import LLAMA_CPP_PYTHON, TORCH, TRANSFORMERS, parse_variant
from mobilevlm.generation.result import GenerationStats
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.manifest import DEFAULT_MODEL_SOURCE
from mobilevlm.runtime.heap import peak_rss
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME

WARMUP = GenerationConfig(max_new_tokens=4, ignore_eos=True)


def _import_engine(engine: str) -> None:
    """Import the engine's libraries before the load is timed: load time is the model's."""
    if engine in (TORCH, TRANSFORMERS):  # torch and transformers, through the reference
        import mobilevlm.bench.peers.hf_transformers  # noqa: F401
    elif engine in (LLAMA_CPP, LLAMA_CPP_PYTHON):
        import llama_cpp  # noqa: F401
    import onnxruntime  # noqa: F401


def load(job: dict[str, Any]):
    """The variant of ``job``, as something with ``generate(image, prompt, config)`` and
    ``reset()``: a :class:`Pipeline`, or a peer's own loop. A bundle's variants also take
    ``providers`` and ``vision_precision`` (the variant's own, e.g. ``int4/int8-vision``,
    wins)."""
    from mobilevlm.runtime.pipeline import Pipeline

    variant = parse_variant(job["variant"])
    threads, context = job.get("threads"), job.get("context")
    if variant.uses_reference:
        from mobilevlm.reference import load_reference

        checkpoint = job["checkpoint"]
        if checkpoint == DEFAULT_MODEL_SOURCE:
            from mobilevlm.default_model.assemble import assemble

            checkpoint = assemble()
        model = load_reference(checkpoint, threads=threads)
        if variant.engine == TRANSFORMERS:
            from mobilevlm.bench.peers.hf_transformers import TransformersEager

            return TransformersEager(model)
        from mobilevlm.reference.backend import TorchBackend

        return Pipeline(TorchBackend(model))
    if variant.engine == LLAMA_CPP_PYTHON:
        from mobilevlm.bench.peers.llama_cpp_python import LlamaCppPythonChat

        return LlamaCppPythonChat(job["bundle"], None, threads, context or 2048)
    return Pipeline.load(
        job["bundle"],
        precision=variant.precision,
        mode=variant.mode or "hybrid",
        providers=variant.providers or job.get("providers") or ("cpu",),
        threads=threads,
        context=context,
        vision_precision=variant.vision_precision or job.get("vision_precision"),
        npu_parts=variant.npu_parts,
    )


def timings(stats: GenerationStats) -> dict[str, float | int | None]:
    """The numbers a bench row is made of; None where the engine does not expose one."""
    encode = stats.image_encode_ms
    known = not math.isnan(encode)
    return {
        "image_encode_ms": encode if known else None,
        "ttft_ms": (encode if known else 0.0) + stats.prefill_ms,
        "prefill_tokens": stats.prefill_tokens,
        "prefill_tokens_per_s": stats.prefill_tokens_per_s if known else None,
        "decode_tokens": stats.generated_tokens,
        "decode_tokens_per_s": stats.decode_tokens_per_s,
    }


def run(job: dict[str, Any], emit) -> None:
    if job["task"] == "llm":  # bench --llm-only: the LLM alone, on token ids
        from mobilevlm.bench.llm_only import timed_runs

        _import_engine(LLAMA_CPP if job.get("gguf") else ONNXRUNTIME)
        emit({"result": {**timed_runs(job), "peak_rss": peak_rss()}})
        return
    _import_engine(parse_variant(job["variant"]).engine)
    t0 = time.perf_counter()
    model = load(job)
    load_s = time.perf_counter() - t0
    result: dict[str, Any] = {"load_s": load_s}
    if job["task"] == "bench":
        image, prompt = job.get("image"), job["prompt"]  # the image as a user gives it: a file
        model.generate(image, prompt, WARMUP)  # first touch of weights, thread pools
        config = GenerationConfig(max_new_tokens=job["decode_tokens"], ignore_eos=True)
        runs = []
        for _ in range(job.get("runs", 1)):
            model.reset()  # no prefix reuse, no cached image: every run does all the work
            runs.append(timings(model.generate(image, prompt, config).stats))
        result["runs"] = runs
    else:
        from dataclasses import asdict

        from mobilevlm.bench.evaluate import evaluate, items_for

        items = items_for(job["dataset"], job["n"])
        report = evaluate(model, items, job["dataset"], lambda r: emit({"record": asdict(r)}))
        result["seconds"] = report.seconds
    result["peak_rss"] = peak_rss()
    emit({"result": result})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)

    try:
        run(job, emit)
    except Exception as exc:  # one line for the parent to show, whatever went wrong
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
