"""Memory measured, for the planner's constants and its guarantee (not a device module).

``python -m mobilevlm.bench.memory --measure BUNDLE`` measures each part the planner
(:mod:`mobilevlm.runtime.memory`) sums, each in a fresh process, against its estimate;
``--check BUNDLE --budget 500MB ...`` loads under each budget, fills the planned
context and reports the peak resident memory against the budget.
"""

from __future__ import annotations

from typing import Any

from mobilevlm.errors import MobileVLMError
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.heap import current_rss, peak_rss
from mobilevlm.runtime.memory import MIB, candidates, estimate, parse_size
from mobilevlm.runtime.options import LLAMA_CPP, LoadOptions


def _mapped_rss(suffix: str) -> int:
    """Resident bytes of this process's mappings of files whose name ends with ``suffix``."""
    total, name = 0, ""
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            head = line.split()
            if head and not head[0].endswith(":"):  # a mapping's first line
                name = head[5] if len(head) > 5 else ""
            elif head and head[0] == "Rss:" and name.endswith(suffix):
                total += int(head[1]) * 1024
    return total


def _test_image(size: int = 320):
    """An RGB image of random pixels (memory does not depend on what it shows)."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _random_text(tokenizer: Any, vocab: int, count: int, seed: int) -> str:
    """``count`` random vocabulary entries: the worst case for the mapped embedding table,
    whose pages are read wherever the rows lie."""
    import numpy as np

    ids = np.random.default_rng(seed).integers(0, vocab, count)
    return " ".join(tokenizer.decode([int(i)]).strip() or "x" for i in ids)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in a process of its own (``spec["kind"]``): "tokenizer", "vision",
    "question" (one answer about an image) or "fill" (a conversation under a budget that
    fills the planned context)."""
    import gc

    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    from mobilevlm.generation.tokenizer import Tokenizer
    from mobilevlm.runtime.pipeline import Pipeline

    bundle = spec["bundle"]
    manifest = BundleManifest.read(bundle)
    if LoadOptions(precision=spec.get("precision")).implied_backend == LLAMA_CPP:
        import llama_cpp  # noqa: F401
    if spec["kind"] == "tokenizer":
        before = current_rss()
        tokenizer = Tokenizer.from_file(f"{bundle}/{manifest.tokenizer}")
        return {"tokenizer": current_rss() - before, "entries": tokenizer.vocab_size}
    if spec["kind"] == "vision":
        from mobilevlm.generation.preprocess import preprocess
        from mobilevlm.runtime.ort.providers import resolve_providers
        from mobilevlm.runtime.ort.vision import OnnxVisionEncoder

        pixels = preprocess(_test_image(), manifest.model.preprocess)
        base, resident = peak_rss(), current_rss()
        context = spec.get("context_path")  # an NPU's precompiled model, loaded first
        encoder = OnnxVisionEncoder(
            f"{bundle}/{spec['path']}",
            resolve_providers(spec.get("providers", ["cpu"])),
            context=f"{bundle}/{context}" if context else None,
        )
        encoder.encode(pixels)
        peak = peak_rss() - base
        del encoder
        gc.collect()
        return {"vision": peak, "kept": current_rss() - resident}
    if spec["kind"] == "question":
        base = peak_rss()
        vlm = Pipeline.load(bundle, precision=spec["precision"], context=spec["context"])
        result = vlm.generate(_test_image(), "What color is the circle?", max_new_tokens=16)
        return {
            "base": base,
            "peak": peak_rss(),
            "table": _mapped_rss(".npy"),
            "positions": result.stats.prefill_tokens + result.stats.generated_tokens,
        }
    # "fill": what the budget guarantee is about
    vlm = Pipeline.load(
        bundle,
        memory_budget=spec["budget"],
        precision=spec.get("precision"),
        vision_precision=spec.get("vision_precision"),
        context=spec.get("context"),
        threads=2,
    )
    chat = vlm.conversation(_test_image())
    tokenizer, vocab = vlm.model.tokenizer, manifest.model.llm.vocab_size
    positions, turn, words = 0, 0, spec.get("words", 40)
    while positions < vlm.model.context_length:
        text = _random_text(tokenizer, vocab, words, turn)
        turn += 1
        try:
            result = chat.ask(text, max_new_tokens=spec.get("tokens", 64), stop_strings=("\x01",))
        except MobileVLMError:  # the turn does not fit: a shorter one may, down to one word
            if words == 1:
                break
            words = max(1, words // 2)
            continue
        # the last token sampled is not written to the cache
        positions = result.stats.prefill_tokens + result.stats.generated_tokens - 1
        if result.stats.stop_reason == "context_full":
            break
    return {
        "peak": peak_rss(),
        "plan": vlm.plan.to_dict(),
        "positions": positions,
        "table": _mapped_rss(".npy"),
    }


def _in_subprocess(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mobilevlm.bench.memory", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_budget(
    bundle: str,
    budget: str | int,
    precision: str | None = None,
    words: int = 40,
    tokens: int = 64,
    vision_precision: str | None = None,
    context: int | None = None,
) -> dict[str, Any]:
    """In a fresh process: ``Pipeline.load(bundle, memory_budget=budget)`` (with
    ``context`` when given), then a conversation about an image, turns of ``words`` random
    vocabulary entries and answers of up to ``tokens`` tokens, until the planned context
    is full. Returns ``peak`` (bytes, VmHWM), ``plan`` (:meth:`MemoryPlan.to_dict`),
    ``positions`` filled and ``table`` (the embedding table's resident bytes)."""
    spec = {"kind": "fill", "bundle": str(bundle), "budget": str(budget), "words": words}
    spec.update({"precision": precision, "tokens": tokens, "vision_precision": vision_precision})
    return _in_subprocess({**spec, "context": context})


# budgets a sweep tries, as multiples of the smallest accepted one
SWEEP_STEPS = (1.0, 1.08, 1.25, 1.6)
PLAN_ABOVE_PEAK = 0.12  # the most a plan may be above the measured peak


def sweep_budgets(
    bundle: str,
    precisions: list[str],
    contexts: list[int | None],
    steps: tuple[float, ...] = SWEEP_STEPS,
    words: int = 120,
    tokens: int = 8,
    on_row: Any = None,
) -> list[dict[str, Any]]:
    """For each precision and context (None: the planner chooses), budgets from the
    smallest the planner accepts up by ``steps``; each a fresh process that fills the
    planned context (:func:`check_budget`: long turns, short answers, so a context of
    thousands of positions fills in seconds). One row each: the budget, the plan and the
    measured peak, and whether the guarantee held (peak <= budget, plan <= 1.12 x peak)."""
    from mobilevlm.errors import BudgetError
    from mobilevlm.runtime.memory import plan_memory

    manifest = BundleManifest.read(bundle)
    rows: list[dict[str, Any]] = []
    for precision in precisions:
        for context in contexts:
            try:
                plan_memory(manifest, 1, precision=precision, context=context)
                smallest = 1
            except BudgetError as exc:
                smallest = exc.smallest
            for step in steps:
                budget = int(smallest * step)
                run = check_budget(bundle, budget, precision, words, tokens, None, context)
                plan, peak = run["plan"], run["peak"]
                row = {
                    "precision": precision,
                    "context_asked": context,
                    "budget": budget,
                    "context": plan["context"],
                    "vision_resident": plan["vision_resident"],
                    "plan": plan["total"],
                    "estimate": plan["estimate"],
                    "peak": peak,
                    "positions": run["positions"],
                    "within_budget": peak <= budget,
                    "plan_close": plan["total"] <= (1 + PLAN_ABOVE_PEAK) * peak,
                }
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


def sweep_line(row: dict[str, Any]) -> str:
    """One row of a sweep, as ``--sweep`` prints it."""
    verdict = (
        "ok"
        if row["within_budget"] and row["plan_close"]
        else ("OVER BUDGET" if not row["within_budget"] else "PLAN HIGH")
    )
    asked = row["context_asked"] or "auto"
    vision = "resident" if row["vision_resident"] else "released"
    return (
        f"{row['precision']:<7} {asked!s:>5} {row['budget'] / MIB:8.0f} {row['context']:>7} "
        f"{vision:<9} {row['plan'] / MIB:6.0f} {row['peak'] / MIB:6.0f} "
        f"{row['peak'] / row['budget']:6.1%} {row['plan'] / row['peak'] - 1:+6.1%} "
        f"{row['positions']:>6}  {verdict}"
    )


SWEEP_HEADER = "prec.  context budget MiB context vision     plan   peak peak/bud plan-peak filled"


def measure_bundle(bundle: str, context: int = 2048) -> list[dict[str, Any]]:
    """Every exported precision of ``bundle`` at ``context`` positions, one answer about an
    image each in a fresh process: the estimate, the measured peak, and the measured
    residual (peak less base, tokenizer, weights, mapped table pages, vision and the KV
    cache in use) that the working-memory line stands for."""
    manifest = BundleManifest.read(bundle)
    tokenizer = _in_subprocess({"kind": "tokenizer", "bundle": str(bundle)})["tokenizer"]
    rows: list[dict[str, Any]] = []
    visions: dict[str, dict[str, int]] = {}
    for engine, precision in candidates(manifest, LoadOptions()):
        options = LoadOptions(precision=precision)
        memory = engine.memory(manifest, precision, options)
        backend = engine.backend
        vision_path = engine.select(manifest, options).vision.path
        if vision_path not in visions:
            spec = {"kind": "vision", "bundle": str(bundle), "path": vision_path}
            visions[vision_path] = _in_subprocess(spec)
        vision = visions[vision_path]
        spec = {"kind": "question", "bundle": str(bundle), "precision": precision}
        run = _in_subprocess({**spec, "context": context})
        kv = memory.kv_bytes(context if backend == LLAMA_CPP else run["positions"])
        residual = run["peak"] - run["base"] - tokenizer - memory.weights - run["table"]
        residual -= vision["vision"] + kv
        rows.append(
            {
                "backend": backend,
                "precision": precision,
                "context": context,
                "estimate": estimate(manifest, memory, context, False),
                "peak": run["peak"],
                "base": run["base"],
                "tokenizer": tokenizer,
                "table_pages": run["table"],
                "vision": vision["vision"],
                "vision_kept": vision["kept"],
                "residual": residual,
                "working_memory": memory.working_memory(context),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m mobilevlm.bench.memory --measure BUNDLE``: estimate against measured
    peak RSS for each precision, and the parts the constants come from;
    ``--check BUNDLE --budget 500MB ...``: the guarantee with the context filled."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.memory")
    parser.add_argument("--measure", metavar="BUNDLE", help="each precision's parts")
    parser.add_argument("--check", metavar="BUNDLE", help="peak RSS under each --budget")
    parser.add_argument("--budget", action="append", default=[], help="with --check")
    parser.add_argument("--precision", help="with --check: only this precision")
    parser.add_argument("--vision-precision", help="with --check: this vision graph (int8)")
    parser.add_argument("--context", type=int, default=2048, help="with --measure")
    parser.add_argument(
        "--sweep",
        metavar="BUNDLE",
        help="budgets from the smallest accepted up, per --precisions and --contexts: plan "
        "against peak with the context filled",
    )
    parser.add_argument("--precisions", default="int4,int8,fp32", help="with --sweep")
    parser.add_argument(
        "--contexts", default="auto,512,2048,8192", help="with --sweep ('auto': the planner's)"
    )
    parser.add_argument(
        "--steps",
        default=",".join(map(str, SWEEP_STEPS)),
        help="with --sweep: budgets as multiples of the smallest accepted",
    )
    parser.add_argument("--json-out", metavar="FILE", help="with --sweep: the rows as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    def mib(n: float) -> str:
        return f"{n / MIB:.0f}"

    if args.measure:
        rows = measure_bundle(args.measure, args.context)
        first = rows[0]
        print(f"tokenizer {mib(first['tokenizer'])} MiB")
        columns = ("estimate", "peak", "base", "table_pages", "vision", "vision_kept")
        print("precision  context  " + "  ".join(columns) + "  residual  working_memory (MiB)")
        for row in rows:
            cells = "  ".join(f"{mib(row[c]):>{len(c)}}" for c in columns)
            print(
                f"{row['precision']:<9}  {row['context']:>7}  {cells}  {mib(row['residual']):>8}"
                f"  {mib(row['working_memory']):>14}"
            )
    if args.sweep:
        print(SWEEP_HEADER, flush=True)
        rows = sweep_budgets(
            args.sweep,
            [p for p in args.precisions.split(",") if p],
            [None if c == "auto" else int(c) for c in args.contexts.split(",") if c],
            tuple(float(step) for step in args.steps.split(",") if step),
            on_row=lambda row: print(sweep_line(row), flush=True),
        )
        held = sum(r["within_budget"] and r["plan_close"] for r in rows)
        print(f"{held} of {len(rows)} runs held the guarantee")
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as out:
                json.dump(rows, out, indent=1)
    if args.check:
        print(
            "budget | plan | context | vision | estimate MiB | measured MiB | positions filled"
            " | embedding table resident MiB"
        )
        for budget in args.budget:
            run = check_budget(
                args.check, budget, args.precision, vision_precision=args.vision_precision
            )
            plan = run["plan"]
            vision = "resident" if plan["vision_resident"] else "released"
            print(
                f"{budget} ({mib(parse_size(budget))} MiB) | {plan['backend']} "
                f"{plan['precision']} | {plan['context']} | {vision} | {mib(plan['total'])} | "
                f"{mib(run['peak'])} | {run['positions']} | {mib(run['table'])}"
            )


if __name__ == "__main__":
    main()
