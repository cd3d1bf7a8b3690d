"""``mobilevlm chat``: a conversation about an image, turn by turn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobilevlm.cli import console
from mobilevlm.cli.options import (
    add_embeddings_cache_option,
    add_generation_options,
    add_model_options,
    generation_config,
    load_pipeline,
    model_name,
)
from mobilevlm.errors import MobileVLMError, OptionsError
from mobilevlm.generation.preprocess import load_image

CHAT_HELP = "/image PATH: talk about another image; /reset: forget the turns; /stats; /quit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser(
        "chat",
        help="talk about an image, turn by turn",
        description="An interactive conversation about an image: each line is a turn, "
        "answered as it is generated; earlier turns stay in the KV cache, so a turn only "
        f"prefills its own tokens. Commands: {CHAT_HELP}. Reads lines from stdin when it "
        "is not a terminal. Ctrl-C stops the current answer.",
    )
    add_model_options(chat)
    add_embeddings_cache_option(chat)
    chat.add_argument("--image", type=Path, metavar="IMG", help="image to talk about")
    add_generation_options(chat)
    chat.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    config = generation_config(args)
    image = load_image(args.image) if args.image is not None else None
    pipeline = load_pipeline(args)
    chat = pipeline.conversation(image)
    if sys.stdin.isatty():
        print(f"chatting with {model_name(args, pipeline)}. {CHAT_HELP}", file=sys.stderr)
    for line in console.user_lines("> "):
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            try:
                _command(chat, command, argument.strip())
            except MobileVLMError as exc:  # a bad /image keeps the session
                print(f"mobilevlm: error: {exc}", file=sys.stderr)
            continue
        with console.cancel_on_ctrl_c(pipeline) as interrupted:
            chat.ask(line, config, on_text=console.write)
        print()
        if interrupted:
            print("[interrupted]", file=sys.stderr)
    return 0


def _command(chat, command: str, argument: str) -> None:
    if command == "/image":
        if not argument:
            raise OptionsError("usage: /image PATH")
        chat.set_image(Path(argument).expanduser())
        print(f"[image {argument}; the conversation starts over]", file=sys.stderr)
    elif command == "/reset":
        chat.reset()
        print("[the conversation starts over]", file=sys.stderr)
    elif command == "/stats":
        if chat.results:
            print(console.stats_line(chat.results[-1].stats), file=sys.stderr)
        p = chat.pipeline
        print(console.runtime_line(p.runtime_info()), file=sys.stderr)
        print(
            f"[{len(chat.turns)} turns; image cache {p.cache_hits} hits, {p.cache_misses} misses]",
            file=sys.stderr,
        )
    else:
        raise OptionsError(f"unknown command {command} ({CHAT_HELP})")
