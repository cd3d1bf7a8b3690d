"""``mobilevlm eval``: accuracy on Shapes-VQA (or a JSONL of questions), one model or
several variants side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilevlm.bench.evaluate import SHAPES_VQA, evaluate, items_for
from mobilevlm.cli.options import (
    add_model_options,
    comma_list,
    load_options,
    load_pipeline,
    model_name,
)
from mobilevlm.errors import OptionsError
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import default_bundle, needed_precisions
from mobilevlm.runtime.options import LLAMA_CPP


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="score a model on Shapes-VQA or a JSONL of questions",
        description="Ask every question as `run` would (greedy) and score the answers with "
        "the Shapes-VQA rule; print accuracy overall and per question kind.",
    )
    add_model_options(ev)
    ev.add_argument(
        "--dataset",
        default=SHAPES_VQA,
        metavar="NAME|FILE",
        help=f"'{SHAPES_VQA}' (generated held-out split, the default) or a JSONL file of "
        '{"image": path, "question": ..., "answer": ..., "kind": optional} lines',
    )
    ev.add_argument("--n", type=int, default=200, metavar="N", help="questions to ask (200)")
    ev.add_argument(
        "--precisions",
        metavar="LIST",
        help="comma-separated precisions to score side by side, ONNX and GGUF ones mixed "
        "(default: the one --precision selects)",
    )
    ev.add_argument(
        "--modes",
        metavar="LIST",
        help="llama.cpp modes to score side by side for each GGUF precision (e.g. hybrid,mtmd)",
    )
    ev.add_argument(
        "--variants",
        metavar="LIST",
        help="variants to score side by side, as `bench` names them (torch, fp32, int4, "
        "int4/int8-vision, int4/qnn-vision, q4_k_m, q4_k_m/mtmd, transformers, ...); each runs "
        "in its own "
        "process and is compared with the reference's greedy tokens",
    )
    ev.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write eval.md, records.jsonl and the accuracy/latency/memory trade-off chart",
    )
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise OptionsError(f"--n must be at least 1, got {args.n}")
    items = items_for(args.dataset, args.n)  # a bad JSONL fails before any model loads
    if args.variants or args.precisions or args.modes or args.report:
        return _compare(args, len(items))
    from tqdm.auto import tqdm

    pipeline = load_pipeline(args)
    name = model_name(args, pipeline)
    done = correct = 0
    bar = tqdm(total=len(items), desc=name, unit="q", disable=not sys.stderr.isatty())

    def progress(record) -> None:
        nonlocal done, correct
        done, correct = done + 1, correct + record.correct
        bar.update()
        bar.set_postfix_str(f"accuracy {correct / done:.1%}")

    report = evaluate(pipeline, items, args.dataset, on_record=progress)
    bar.close()
    if args.json:
        model = str(args.bundle or args.model or "built-in model")
        out = {**report.to_dict(), "model": model, "run": name}
        print(json.dumps({**out, "runtime": pipeline.runtime_info()}))
    else:
        print(report.table())
    return 0


def _bundle_for_variants(args: argparse.Namespace) -> Path:
    """--bundle, or the built-in model's bundle holding what the variants name."""
    if args.bundle is not None:
        return args.bundle
    from mobilevlm.bench.variants import parse_variant

    options = load_options(args)
    if args.variants:  # the reference's variants need no artefact, llama-cpp-python a GGUF
        parsed = [parse_variant(n) for n in comma_list(args.variants)]
        wanted = [v.precision or "q4_k_m" for v in parsed if not v.uses_reference]
    elif args.precisions:
        wanted = comma_list(args.precisions)
    elif args.modes and not args.precision:  # modes are llama.cpp's
        wanted = needed_precisions(options.replace(backend=LLAMA_CPP))
    else:
        wanted = needed_precisions(options)
    return default_bundle(options, precisions=list(dict.fromkeys(wanted)) or None)


def _compare(args: argparse.Namespace, count: int) -> int:
    """Each variant in its own process: accuracy, agreement with the reference, latency and
    peak memory; optionally a Markdown report with the trade-off chart."""
    from tqdm.auto import tqdm

    from mobilevlm.bench.evaluate import compare, comparison_table
    from mobilevlm.bench.harness import checkpoint_for
    from mobilevlm.bench.variants import disk_bytes, parse_variant, unavailable, variant_names

    if args.memory_budget is not None:
        raise OptionsError(
            "--memory-budget picks one variant; it does not combine with --variants, "
            "--precisions, --modes or --report"
        )
    bundle = _bundle_for_variants(args)
    manifest = BundleManifest.read(bundle)
    if args.variants:
        names = comma_list(args.variants)
    else:
        precisions = comma_list(args.precisions) if args.precisions else []
        modes = comma_list(args.modes) if args.modes else []
        names = variant_names(manifest, precisions, modes, args.precision, args.mode)
    variants = list(dict.fromkeys(parse_variant(n) for n in names))
    checkpoint = checkpoint_for(manifest, args.model)
    for variant in variants:
        why = unavailable(variant, manifest, checkpoint)
        if why:
            raise OptionsError(f"{bundle}: cannot evaluate {variant.name}: {why}")
    bar = tqdm(total=count * len(variants), unit="q", disable=not sys.stderr.isatty())
    tally: dict[str, list[int]] = {}

    def progress(name: str, record) -> None:
        done = tally.setdefault(name, [0, 0])
        done[0], done[1] = done[0] + 1, done[1] + record.correct
        bar.update()
        bar.set_postfix_str(f"{name} accuracy {done[1] / done[0]:.1%}")

    results = compare(
        bundle,
        variants,
        args.dataset,
        args.n,
        checkpoint,
        args.threads,
        progress,
        providers=args.provider,
        context=args.context,
        vision_precision=args.vision_precision,
    )
    bar.close()
    for result, variant in zip(results, variants, strict=True):
        result.disk_bytes = disk_bytes(variant, manifest, bundle, checkpoint)
    if args.report:
        from mobilevlm.bench.report import write_eval_report

        written = write_eval_report(results, args.report, str(bundle))
        print(f"report: {written}", file=sys.stderr)
    if args.json:
        rows = [{**r.to_dict(), "model": str(bundle)} for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        print(comparison_table(results))
    return 0
