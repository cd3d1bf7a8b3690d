"""The OpenAI-compatible HTTP app over one loaded Pipeline (Starlette, served by uvicorn).

One generation runs at a time, never interleaved: requests wait in order for
their turn, up to ``max_queue`` waiting, after which they get 429 with
Retry-After. The generation runs in a worker thread and streams its pieces
back through the event loop; a client that goes away sets the generation's
cancel flag, so the model is free again after the current token. The KV cache
of the last answer is kept, so a request whose messages extend the previous
conversation prefills only its new tokens (``usage.prompt_tokens_details``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mobilevlm.errors import ContextOverflowError, ImageError, MobileVLMError, PromptError
from mobilevlm.generation.preprocess import load_image
from mobilevlm.runtime.pipeline import Pipeline
from mobilevlm.serve import protocol
from mobilevlm.serve.protocol import ApiError, ChatRequest

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServerSettings:
    model_name: str = "mobilevlm"
    api_key: str | None = None
    max_queue: int = 16  # requests waiting for their turn (the running one not counted)
    max_body: int = 20 << 20  # bytes of a request body
    image_dir: Path | None = None  # local image paths are read only under it


class Scheduler:
    """Admission and turns: at most one generation running, ``max_queue`` waiting."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.admitted = 0  # running + waiting
        self.turn = asyncio.Lock()

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - (1 if self.turn.locked() else 0))

    def admit(self) -> None:
        if self.admitted >= self.max_queue + 1:
            raise ApiError(
                429,
                f"the server is busy: {self.max_queue} requests are already waiting",
                kind="rate_limit_error",
                code="queue_full",
            )
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


class Generation:
    """One answer produced in a worker thread; its events arrive in the event loop."""

    def __init__(self, pipeline: Pipeline, request: ChatRequest) -> None:
        self.pipeline, self.request = pipeline, request
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def start(self, on_end: Callable[[], None]) -> None:
        def put(kind: str, value: Any) -> None:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

        def work() -> None:
            chat = self.request.chat
            try:
                stream = self.pipeline.stream(
                    chat.image,
                    chat.turns,
                    self.request.config,
                    system=chat.system,
                    cancel=self.cancelled.is_set,
                )
                with stream:
                    for piece in stream:
                        put("piece", piece)
                put("done", stream.result)
            except Exception as exc:  # noqa: BLE001 - every failure reaches the client
                put("error", exc)
            finally:
                self._loop.call_soon_threadsafe(self._end, on_end)

        threading.Thread(target=work, name="mobilevlm-generation", daemon=True).start()

    def _end(self, on_end: Callable[[], None]) -> None:
        self.finished.set()
        on_end()

    def cancel(self) -> None:
        self.cancelled.set()


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (ImageError, PromptError)):
        return ApiError(400, str(exc), param="messages")
    if isinstance(exc, MobileVLMError):
        return ApiError(400, str(exc))
    log.exception("generation failed", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")


DRAIN_FACTOR = 8  # a body over the limit is read and dropped up to this many times it


async def _receive(request: Request, keep: int, limit: int) -> tuple[bytes, int]:
    """The body's first ``keep`` bytes and its size. What is over is read and dropped (up to
    ``DRAIN_FACTOR`` times ``limit``, never kept), so that a client still sending receives
    the answer (413, 401) instead of a reset connection."""
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= keep:
            chunks.append(piece)
    return b"".join(chunks), size


async def _read_body(request: Request, limit: int) -> Any:
    """The JSON body, or 413 once it is known to be over ``limit`` bytes."""
    too_large = ApiError(413, f"the request body is over {limit:,} bytes", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    data, size = await _receive(request, limit, limit)
    if size > limit or (declared is not None and declared.isdigit() and int(declared) > limit):
        raise too_large
    return await asyncio.to_thread(protocol.parse_body, data)  # 20 MB: a second


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) as OpenAI error objects."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    what = f"{request.method} {request.url.path}: {exc.detail.lower()}"
    return _error_response(ApiError(exc.status_code, what, code=code))


async def _crash(request: Request, exc: Exception) -> Response:
    """An exception that escaped a route, answered as a generation's would be (a bug: 500
    in OpenAI's shape, the traceback in the log)."""
    return _error_response(_as_api_error(exc))


def chat_page() -> str:
    """The chat page served at ``/``: one file shipped in the package."""
    return (resources.files("mobilevlm.serve") / "chat.html").read_text(encoding="utf-8")


def build_app(pipeline: Pipeline, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app: the chat page at /, /v1/chat/completions, /v1/models and /health
    over ``pipeline``."""
    settings = settings or ServerSettings()
    page = chat_page()
    state: dict[str, Any] = {"scheduler": None, "running": None, "started": time.time()}

    def scheduler() -> Scheduler:
        if state["scheduler"] is None:  # made in the event loop that serves
            state["scheduler"] = Scheduler(settings.max_queue)
        return state["scheduler"]

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise ApiError(
                401,
                "missing or wrong API key",
                kind="invalid_request_error",
                code="invalid_api_key",
            )

    async def chat_completions(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as error:
            await _receive(request, 0, settings.max_body)  # dropped, unread
            return _error_response(error)
        try:
            body = await _read_body(request, settings.max_body)
            chat_request = protocol.parse_request(body, settings.image_dir)
            if chat_request.chat.image is not None:  # a broken image fails before the queue
                image = await asyncio.to_thread(_decode, chat_request.chat.image)
                chat_request.chat = dataclasses.replace(chat_request.chat, image=image)
            queue = scheduler()
            queue.admit()
        except ApiError as error:
            return _error_response(error)
        try:
            await queue.turn.acquire()
        except asyncio.CancelledError:
            queue.leave()
            raise
        generation = Generation(pipeline, chat_request)

        def release() -> None:
            state["running"] = None
            queue.turn.release()
            queue.leave()

        state["running"] = generation
        generation.start(release)
        first = await _next_event(request, generation)
        if first[0] == "error":
            return _error_response(_as_api_error(first[1]))
        if chat_request.stream:
            return StreamingResponse(
                _events(request, generation, first, settings.model_name),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, event = [], first
        while event[0] == "piece":
            text.append(event[1])
            event = await _next_event(request, generation)
        if event[0] == "error":
            return _error_response(_as_api_error(event[1]))
        return JSONResponse(protocol.completion(chat_request, settings.model_name, event[1]))

    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as error:
            return _error_response(error)
        created = int(state["started"])
        model = {"id": settings.model_name, "object": "model", "created": created}
        return JSONResponse({"object": "list", "data": [{**model, "owned_by": "mobilevlm"}]})

    async def health(request: Request) -> Response:
        queue = scheduler()
        return JSONResponse(
            {
                "status": "ok",
                "model": settings.model_name,
                "loaded": True,
                "running": state["running"] is not None,
                "queue": queue.waiting,
                "max_queue": settings.max_queue,
                "max_body": settings.max_body,
                "auth_required": settings.api_key is not None,
                "runtime": pipeline.runtime_info(),
                "memory_plan": pipeline.plan.to_dict() if pipeline.plan else None,
            }
        )

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        running = state["running"]  # shutting down (SIGTERM): end the answer after its token
        if running is not None:
            running.cancel()
            await running.finished.wait()

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _crash},
    )


def _decode(image: Any) -> Any:
    try:
        return load_image(image)
    except ImageError as exc:
        raise protocol.bad_request(str(exc), "messages") from None


async def _next_event(request: Request, generation: Generation) -> tuple[str, Any]:
    """The generation's next event; a client that has gone away cancels it."""
    while True:
        try:
            return await asyncio.wait_for(generation.events.get(), timeout=0.5)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            if await request.is_disconnected():
                generation.cancel()


async def _events(
    request: Request, generation: Generation, first: tuple[str, Any], model: str
) -> AsyncIterator[str]:
    """Server-sent events: the role, the text pieces, the finish reason, usage, [DONE]."""
    chat_request = generation.request

    def sse(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield sse(protocol.chunk(chat_request, model, {"role": "assistant", "content": ""}))
        event = first
        while event[0] == "piece":
            yield sse(protocol.chunk(chat_request, model, {"content": event[1]}))
            event = await _next_event(request, generation)
        if event[0] == "error":
            yield sse(_as_api_error(event[1]).body())
        else:
            result = event[1]
            finish = protocol.finish_reason(result)
            yield sse(protocol.chunk(chat_request, model, {}, finish, result))
            if chat_request.include_usage:
                yield sse(protocol.chunk(chat_request, model, None, result=result))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or the stream ended): free the model
        generation.cancel()
