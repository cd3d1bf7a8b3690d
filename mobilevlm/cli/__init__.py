"""The ``mobilevlm`` command: one small module per command, each a client of the library.

Every command module has ``add_parser(subparsers)`` and the ``main(args)`` its parser
calls; the options several share live in :mod:`mobilevlm.cli.options`. User errors
(:class:`~mobilevlm.errors.MobileVLMError`) become one line on stderr and exit code 2;
results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mobilevlm import __version__
from mobilevlm.errors import MobileVLMError

EXIT_USER_ERROR = 2
EXIT_SYSTEM_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C; `run` returns it too
COMMANDS = ("run", "chat", "eval", "export", "bench", "info", "serve")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="mobilevlm",
        description="Run MobileVLM-style vision-language models on the CPU or an NPU.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


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
    except OSError as exc:  # the machine's, not the input's: a full disk, a file-size limit
        print(f"mobilevlm: error: {exc}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        print("\nmobilevlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
