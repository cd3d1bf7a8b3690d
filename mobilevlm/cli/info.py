"""``mobilevlm info``: a bundle's model, artefacts and measured parity, and what would run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilevlm.cli.console import runtime_line
from mobilevlm.cli.describe import describe_bundle
from mobilevlm.cli.options import add_bundle_argument, add_bundle_options, load_options
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import check_bundle, default_bundle
from mobilevlm.runtime.memory import plan_memory
from mobilevlm.runtime.verify import verify_files


def add_parser(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser(
        "info",
        help="describe a bundle: model, artefacts, measured parity, what would run",
        description="Read a bundle's manifest and check its files (sizes; sha256 with "
        "--verify); say what `run` would load with the same options (engine, precision, "
        "providers), or with --memory-budget the plan line by line. With an accelerator "
        "first (--provider qnn), each ONNX graph is loaded on it once to count the nodes it "
        "takes and name the op types it refuses.",
    )
    add_bundle_argument(info)
    info.add_argument("--verify", action="store_true", help="also check every file's sha256")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_bundle_options(info, bundle_flag=False)
    info.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    options = load_options(args)
    bundle = args.bundle if args.bundle is not None else default_bundle(options)
    manifest = BundleManifest.read(bundle)
    verify_files(bundle, manifest.artefacts, "full" if args.verify else "size")
    plan = None
    if options.memory_budget is not None:
        plan = plan_memory(manifest, options.memory_budget, options)
        options = options.replace(
            backend=plan.backend, precision=plan.precision, context=plan.context
        )
    runtime = check_bundle(bundle, options.replace(verify="size"))
    graphs = accelerator_placement(bundle, manifest, options, runtime)
    if args.json:  # the plan itself under a budget, else the manifest; either with "runtime"
        out = plan.to_dict() if plan is not None else manifest.to_dict()
        placed = {"placement": [g.to_dict() for g in graphs]} if graphs else {}
        print(json.dumps({**out, "runtime": runtime, **placed}))
        return 0
    print(plan.describe() if plan is not None else describe_bundle(bundle, manifest))
    print(f"runs as {runtime_line(runtime)}")
    if graphs:
        print(f"on {graphs[0].provider} (nodes after onnxruntime's fusions, taken/all):")
        for graph in graphs:
            print("  " + graph.describe())
    return 0


def accelerator_placement(bundle: Path, manifest: BundleManifest, options, runtime: dict):
    """Placement of the bundle's ONNX graphs when the first provider is an accelerator."""
    from mobilevlm.runtime.ort.placement import bundle_placement
    from mobilevlm.runtime.ort.providers import accelerator

    if accelerator(options.providers) is None:
        return []
    decoder = runtime["precision"] if runtime["backend"] == "onnxruntime" else None
    return bundle_placement(bundle, manifest, options, decoder)
