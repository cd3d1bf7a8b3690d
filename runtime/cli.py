"""The ``mobilevlm`` command: parses arguments, calls the library, prints.

User errors (:class:`mobilevlm.errors.MobileVLMError`) become one line on
stderr and exit code 2; results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from mobilevlm.runtime.evaluate import SHAPES_VQA, evaluate, jsonl_items, shapes_vqa_items

from mobilevlm import __version__
from mobilevlm.errors import MissingDependencyError, MobileVLMError
from mobilevlm.preprocess import load_image
from mobilevlm.sampling import GenerationConfig

EXIT_USER_ERROR = 2
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
        "Runs the PyTorch reference model (needs the [export] extra).",
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
    ev.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ev.set_defaults(handler=cmd_eval)
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
            "pip install torch==2.13.0 && pip install 'mobilevlm-runtime[export]'"
        ) from exc
    model = load_reference(model_dir, vision_tower=vision_tower, threads=threads)
    if has_random_weights(model_dir):
        print(
            f"warning: {model_dir} holds random weights (a test model): its answers are "
            "meaningless",
            file=sys.stderr,
        )
    return model


def cmd_run(args: argparse.Namespace) -> int:
    config = _generation_config(args)
    image = load_image(args.image) if args.image is not None else None  # fail before loading
    t0 = time.perf_counter()
    model = _load_reference_model(args.model, args.vision_tower, args.threads)
    load_ms = (time.perf_counter() - t0) * 1000

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = model.generate(image, args.prompt, config, on_text=None if args.json else stream)
    if args.json:
        out = result.to_dict()
        out["stats"]["load_ms"] = round(load_ms, 3)
        out["model"] = str(args.model or "default")
        print(json.dumps(out, ensure_ascii=False))
    else:
        print()
        s = result.stats
        print(
            f"[{s.image_tokens} image + {s.prompt_tokens} prompt tokens prefilled in "
            f"{s.time_to_first_token_ms:.0f} ms; {s.generated_tokens} tokens at "
            f"{s.decode_tokens_per_s:.1f} tok/s; stop: {s.stop_reason}]",
            file=sys.stderr,
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise MobileVLMError(f"--n must be at least 1, got {args.n}")
    if args.dataset == SHAPES_VQA:
        items = list(shapes_vqa_items(args.n))
    else:  # read and check the whole file before loading a model
        items = list(jsonl_items(args.dataset, args.n))
    model = _load_reference_model(args.model, args.vision_tower, args.threads)
    from tqdm.auto import tqdm

    done = correct = 0
    with tqdm(total=len(items), desc="eval", unit="q", disable=not sys.stderr.isatty()) as bar:

        def progress(record) -> None:
            nonlocal done, correct
            done, correct = done + 1, correct + record.correct
            bar.update()
            bar.set_postfix_str(f"accuracy {correct / done:.1%}")

        report = evaluate(model, items, args.dataset, on_record=progress)
    if args.json:
        print(json.dumps({**report.to_dict(), "model": str(args.model or "default")}))
    else:
        print(report.table())
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
    except MobileVLMError as exc:
        print(f"mobilevlm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nmobilevlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
