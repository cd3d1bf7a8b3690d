"""``mobilevlm run``: one answer about an image, streamed to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mobilevlm.cli import EXIT_INTERRUPTED, console
from mobilevlm.cli.options import (
    add_embeddings_cache_option,
    add_generation_options,
    add_model_options,
    generation_config,
    load_pipeline,
    model_name,
)
from mobilevlm.generation.preprocess import load_image


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="answer one prompt about an image",
        description="Answer one prompt about an image, streaming the answer to stdout, on the "
        "runtime (ONNX Runtime or llama.cpp; torch-free): the built-in model's bundle unless "
        "--bundle names another; --model runs a checkpoint on the PyTorch reference instead.",
    )
    add_model_options(run)
    add_embeddings_cache_option(run)
    run.add_argument("--image", type=Path, metavar="IMG", help="image file (omit for text only)")
    run.add_argument("--prompt", required=True, metavar="TEXT")
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with text, stats and what ran instead of streaming",
    )
    add_generation_options(run)
    run.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    config = generation_config(args)
    image = load_image(args.image) if args.image is not None else None  # fail before loading
    t0 = time.perf_counter()
    pipeline = load_pipeline(args)
    load_ms = (time.perf_counter() - t0) * 1000
    with console.cancel_on_ctrl_c(pipeline) as interrupted:
        result = pipeline.generate(
            image, args.prompt, config, on_text=None if args.json else console.write
        )
    if args.json:
        out = result.to_dict()
        out["stats"]["load_ms"] = round(load_ms, 3)
        out["model"] = model_name(args, pipeline)
        out["runtime"] = pipeline.runtime_info()
        print(json.dumps(out, ensure_ascii=False))
    else:
        print()
        print(console.stats_line(result.stats), file=sys.stderr)
        print(console.runtime_line(pipeline.runtime_info()), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0
