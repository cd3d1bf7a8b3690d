"""``mobilevlm serve``: an OpenAI-compatible chat endpoint (with images) and a chat page in
the browser, over one bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobilevlm.cli.options import (
    add_bundle_argument,
    add_bundle_options,
    add_embeddings_cache_option,
    load_options,
    warn_random_weights,
)
from mobilevlm.errors import MissingDependencyError, OptionsError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTALL_SERVE_EXTRA = "pip install 'mobilevlm-runtime[serve]'"


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a chat page and the OpenAI chat-completions API (text and images)",
        description="Load one bundle (default: the built-in model's), open a chat page at / "
        "(pick or drop an image, ask, follow up) and answer OpenAI-style "
        "POST /v1/chat/completions (image_url parts as data: URLs; local paths only under "
        "--image-dir; stream with server-sent events), GET /v1/models and GET /health. One "
        "generation runs at a time; others wait their turn, up to --max-queue, then get 429. "
        "Binds to the loopback address unless --host says otherwise.",
    )
    add_bundle_argument(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (8080)")
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 requests (the page asks for it)",
    )
    serve.add_argument(
        "--max-queue", type=int, default=16, metavar="N", help="requests waiting (16)"
    )
    serve.add_argument(
        "--max-body", default="20MB", metavar="SIZE", help="largest request body (20MB)"
    )
    serve.add_argument(
        "--image-dir",
        type=Path,
        metavar="DIR",
        help="let image_url name local files under DIR (default: data: URLs only)",
    )
    serve.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    add_bundle_options(serve, bundle_flag=False)
    add_embeddings_cache_option(serve)
    serve.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from mobilevlm.runtime.memory import parse_size

    try:
        import uvicorn

        from mobilevlm.serve.app import ServerSettings, build_app
    except ImportError as exc:
        raise MissingDependencyError(
            f"serve needs the [serve] extra ({exc.name} is missing): {INSTALL_SERVE_EXTRA}"
        ) from exc
    if args.max_queue < 0:
        raise OptionsError(f"--max-queue must be at least 0, got {args.max_queue}")
    if args.image_dir is not None and not args.image_dir.is_dir():
        raise OptionsError(f"--image-dir {args.image_dir}: no such directory")
    max_body = parse_size(args.max_body)
    from mobilevlm.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(args.bundle, load_options(args), embeddings_dir=args.embeddings_cache)
    if pipeline.model.random_weights:
        warn_random_weights(args.bundle)
    name = args.bundle.name if args.bundle is not None else "mobilevlm-default"
    settings = ServerSettings(name, args.api_key, args.max_queue, max_body, args.image_dir)
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{host}:{args.port}"
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}, reachable from other machines", file=sys.stderr)
    print(f"serving {name} at {where}/v1 (one generation at a time, {args.max_queue} waiting)",
          file=sys.stderr)  # fmt: skip
    print(f"chat page: {where}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        build_app(pipeline, settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    server = _server_class()(config)
    server.run()
    print(f"stopped{f' ({server.stopped_by})' if server.stopped_by else ''}", file=sys.stderr)
    return 0


def _server_class():
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, ending with exit code 0 after a graceful SIGTERM/SIGINT
        (uvicorn raises the signal again once it has shut down)."""

        stopped_by: str | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", [])
                if captured:
                    self.stopped_by = signal.Signals(captured[-1]).name
                captured.clear()

    return Server
