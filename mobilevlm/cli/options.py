"""The options several commands share, declared once, and what they turn into: the
library's :class:`~mobilevlm.runtime.options.LoadOptions`, a
:class:`~mobilevlm.generation.sampling.GenerationConfig`, a loaded Pipeline."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mobilevlm.default_model.bundle import INSTALL_EXPORT_EXTRA
from mobilevlm.errors import MissingDependencyError, OptionsError
from mobilevlm.generation.sampling import DEFAULT_MAX_NEW_TOKENS, GenerationConfig
from mobilevlm.manifest import GGUF_PRECISIONS, PRECISIONS, VISION_PRECISIONS
from mobilevlm.runtime.loader import (
    DEFAULT_CONTEXT,
)
from mobilevlm.runtime.options import BACKENDS, MODES, LoadOptions
from mobilevlm.runtime.pipeline import Pipeline

# the options that choose how a bundle runs; none of them applies to --model
BUNDLE_OPTIONS = (
    "precision",
    "backend",
    "mode",
    "provider",
    "memory_budget",
    "context",
    "vision_precision",
    "npu_parts",
)


def comma_list(text: str) -> list[str]:
    """``"fp32, int4,"`` -> ``["fp32", "int4"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N")
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


def generation_config(args: argparse.Namespace) -> GenerationConfig:
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
        raise OptionsError(str(exc)) from exc


def add_bundle_argument(parser: argparse.ArgumentParser) -> None:
    """The optional positional BUNDLE_DIR of the commands that take one bundle (info, serve)."""
    parser.add_argument(
        "bundle",
        type=Path,
        nargs="?",
        metavar="BUNDLE_DIR",
        help="(default: the built-in model's bundle, exported once into $MOBILEVLM_CACHE)",
    )


def add_bundle_options(parser: argparse.ArgumentParser, bundle_flag: bool = True) -> None:
    """How a bundle runs: what LoadOptions holds. ``bundle_flag``: also ``--bundle DIR``."""
    b = parser.add_argument_group("runtime (ONNX Runtime or llama.cpp)")
    if bundle_flag:
        b.add_argument(
            "--bundle",
            type=Path,
            metavar="DIR",
            help="an exported bundle (default: the built-in model's, exported once into "
            "$MOBILEVLM_CACHE)",
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
        help="llama.cpp's image path: 'hybrid' (default) feeds it the bundle's ONNX vision "
        "embeddings, exactly the reference's; 'mtmd' uses llama.cpp's own mtmd with the "
        "mmproj (CLIP towers at 336 px only, with llama.cpp's deviations: docs/llama-cpp.md)",
    )
    b.add_argument(
        "--vision-precision",
        choices=VISION_PRECISIONS,
        help="vision graph precision (default: fp32 on the CPU; behind qnn the bundle's NPU "
        "graph, w8a16 or w8a8, from `export --npu qnn`; behind another accelerator the int8 "
        "QDQ graph for int8/int4 decoders)",
    )
    b.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="NAME",
        help="execution provider in order of preference (repeatable): cpu, qnn, nnapi, "
        "coreml, xnnpack, openvino; a trailing '!' makes it required (an NPU must then take "
        "the whole vision graph); CPU is always the fallback",
    )
    b.add_argument(
        "--provider-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the first provider that is not the CPU (repeatable), passed to "
        "onnxruntime as is, e.g. qnn's htp_performance_mode=balanced, soc_model=57, "
        "htp_arch=75, enable_htp_fp16_precision=0; ep.* and session.* keys are session "
        "entries (ep.context_enable=1 with ep.context_file_path=F: F caches the NPU's compiled "
        "vision graph)",
    )
    b.add_argument(
        "--npu-parts",
        type=comma_list,
        default=None,
        metavar="PARTS",
        help="with an NPU provider (qnn): which parts run there, of vision, prefill, decode "
        "(default: every part the bundle was exported for it); vision,prefill decodes on the "
        "CPU from the cache the NPU filled",
    )
    b.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="e.g. 512MB (powers of 10; 800MiB, 2G: powers of 2): the planner picks backend, "
        "precision, context and whether the vision encoder stays loaded so that the process "
        "stays under it (`mobilevlm info --memory-budget SIZE` shows the plan)",
    )
    b.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="N",
        help=f"KV cache positions to allocate (default: {DEFAULT_CONTEXT} or the model's limit)",
    )


def add_embeddings_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--embeddings-cache DIR``, for the commands that keep a Pipeline (run, chat, serve)."""
    parser.add_argument(
        "--embeddings-cache",
        type=Path,
        metavar="DIR",
        help="keep image embeddings on disk under DIR, keyed by the bundle's vision graph and "
        "the pixels: another run, chat or serve process with the same DIR skips the encoder",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model answers: a bundle on the runtime (the default), or the PyTorch reference."""
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="run this checkpoint on the PyTorch reference instead of a bundle (the project's "
        "own layout or an original MobileVLM / LLaVA one; needs the [export] extra)",
    )
    parser.add_argument(
        "--vision-tower",
        type=Path,
        metavar="DIR",
        help="with --model: local CLIP vision tower directory for an original checkpoint "
        "(default: its mm_vision_tower, when that is a local path)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)"
    )
    add_bundle_options(parser)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The LoadOptions the command line asks for (unset ones keep the library's defaults)."""
    fields = {
        "backend": args.backend,
        "precision": args.precision,
        "providers": tuple(args.provider) or ("cpu",),
        "provider_options": tuple(args.provider_option),
        "threads": getattr(args, "threads", None),
        "context": args.context,
        "memory_budget": args.memory_budget,
        "vision_precision": args.vision_precision,
        "npu_parts": getattr(args, "npu_parts", None),
    }
    if args.mode is not None:
        fields["mode"] = args.mode
    try:
        return LoadOptions(**fields)
    except OptionsError as exc:  # name the flag the user typed
        message = str(exc)
        flag = next((f for f in ("context", "threads") if message.startswith(f)), None)
        raise OptionsError(f"--{message}" if flag else message) from exc


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse what does not apply to the path chosen: bundle options with --model, and
    --vision-tower (a checkpoint's) without it."""
    if args.model is None:
        if args.vision_tower is not None:
            raise OptionsError("--vision-tower applies to --model (a checkpoint) only")
        return
    if args.bundle is not None:
        raise OptionsError("give either --model (PyTorch reference) or --bundle, not both")
    for name in BUNDLE_OPTIONS:
        if getattr(args, name) not in (None, []):
            raise OptionsError(
                f"{_flag(name)} does not apply to --model (the PyTorch reference runs its "
                "checkpoint as it is); drop --model to run the built-in model's bundle, or "
                "pass --bundle DIR"
            )


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """A Pipeline over --bundle, the built-in model's bundle (neither --model nor
    --bundle), or the PyTorch reference (--model)."""
    check_model_options(args)
    if args.model is not None:
        model = load_reference_model(args.model, args.vision_tower, args.threads)
        from mobilevlm.reference.backend import TorchBackend  # torch is there: it loaded

        return Pipeline(TorchBackend(model))
    pipeline = Pipeline.load(
        args.bundle, load_options(args), embeddings_dir=getattr(args, "embeddings_cache", None)
    )
    if pipeline.model.random_weights:
        warn_random_weights(args.bundle)
    return pipeline


def load_reference_model(model_dir: Path | None, vision_tower: Path | None, threads: int | None):
    """The PyTorch reference of ``model_dir`` (None: the built-in model's checkpoint)."""
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
        warn_random_weights(model_dir)
    return model


def warn_random_weights(source: Path) -> None:
    print(
        f"warning: {source} holds random weights (a test model): its answers are meaningless",
        file=sys.stderr,
    )


def model_name(args: argparse.Namespace, pipeline: Pipeline) -> str:
    if args.model is not None:
        return str(args.model)
    return f"{args.bundle or 'built-in model'} ({pipeline.model.variant})"
