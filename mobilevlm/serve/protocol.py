"""OpenAI's chat-completions format <-> the runtime: requests checked, answers shaped.

Only what the runtime does is accepted (one choice, text and image parts, the
sampling settings GenerationConfig has); anything else is an :class:`ApiError`
whose message names the field, which the app sends as OpenAI's error object.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.errors import PromptError
from mobilevlm.generation.result import GenerationResult
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.runtime.messages import ParsedChat, parse_messages

DEFAULT_MAX_TOKENS = 256
MAX_JSON_DEPTH = 32  # a chat body nests 6 levels; Python's json recurses once per level
MAX_JSON_VALUES = 100_000  # arrays, objects and commas: a chat of 10,000 turns has 30,000
MAX_STOP_STRINGS = 4  # as OpenAI's API
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length"}
FINISH_REASONS.update({"context_full": "length", "cancelled": "stop"})


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind  # OpenAI's error type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included


def structure_problem(data: bytes) -> str | None:
    """What makes ``data`` too deep or too many values for a request, before it is parsed
    (brackets and commas inside strings not counted). A linear scan in 1 MiB blocks, a few
    MiB of memory for any body: 20 MB of ``[`` is never recursed into, and 20 MB of
    ``[],`` never becomes 7 million Python lists (half a gigabyte)."""
    marks = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    depth = values = 0
    for start in range(0, len(marks), 1 << 20):
        block = marks[start : start + (1 << 20)]
        opens = (block == ord("[")) | (block == ord("{"))
        closes = (block == ord("]")) | (block == ord("}"))
        running = depth + np.cumsum(opens.view(np.int8) - closes.view(np.int8), dtype=np.int64)
        if running.max() > MAX_JSON_DEPTH:
            return f"nests deeper than {MAX_JSON_DEPTH} levels"
        values += int(np.count_nonzero(opens)) + int(np.count_nonzero(block == ord(",")))
        if values > MAX_JSON_VALUES:
            return f"holds more than {MAX_JSON_VALUES:,} values"
        depth = int(running[-1])
    return None


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(data: bytes) -> Any:
    """A request body as JSON (RFC 8259: no NaN or Infinity), nested at most
    ``MAX_JSON_DEPTH`` levels, of at most ``MAX_JSON_VALUES`` values; anything else is a
    400 that says why."""
    problem = structure_problem(data)
    if problem is not None:
        raise bad_request(f"the request body {problem}")
    try:
        return json.loads(data or b"null", parse_constant=_not_a_number)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError too
        raise bad_request(f"the request body is not JSON ({exc})") from None


@dataclass
class ChatRequest:
    chat: ParsedChat
    config: GenerationConfig
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def _number(body: dict, name: str, kind: type, low: float, high: float | None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise bad_request(f"{name} must be a {'number' if kind is float else 'whole number'}", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"{name} must be {bound}, got {value}", name)
    return kind(value)


def _image_path(image: Any, image_dir: Path | None) -> Any:
    """A local path is read only from under ``image_dir`` (data: URLs are always fine)."""
    if not isinstance(image, str):
        return image
    if image_dir is None:
        raise bad_request(
            "image_url must be a data: URL (this server reads no local files: start it with "
            "--image-dir DIR to allow paths under DIR)",
            "messages",
        )
    path = (image_dir / image).resolve() if not Path(image).is_absolute() else Path(image)
    if not path.resolve().is_relative_to(image_dir.resolve()):
        raise bad_request(f"image path {image!r} is outside the server's --image-dir", "messages")
    return path.resolve()


def parse_request(body: Any, image_dir: Path | None = None) -> ChatRequest:
    """Check a /v1/chat/completions body; :class:`ApiError` (400) names what is wrong."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    try:
        chat = parse_messages(messages)
    except PromptError as exc:
        raise bad_request(str(exc), "messages") from None
    except (AttributeError, TypeError) as exc:
        raise bad_request(f"malformed messages ({exc})", "messages") from None
    if chat.image is not None:
        chat = ParsedChat(_image_path(chat.image, image_dir), chat.turns, chat.system)
    if body.get("n", 1) != 1:
        raise bad_request("n must be 1 (one choice per request)", "n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _number({name: limit}, name, int, 1, None) or DEFAULT_MAX_TOKENS
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} strings", "stop")
    temperature = _number(body, "temperature", float, 0.0, 2.0)
    top_p = _number(body, "top_p", float, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("top_p must be above 0", "top_p")
    seed = _number(body, "seed", int, 0, 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,  # OpenAI's default
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        stop_strings=tuple(stop),
    )
    return ChatRequest(chat, config, stream, bool(options.get("include_usage")))


def usage(result: GenerationResult) -> dict[str, Any]:
    s = result.stats
    prompt = s.image_tokens + s.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": s.generated_tokens,
        "total_tokens": prompt + s.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    }


def timings(result: GenerationResult) -> dict[str, Any]:
    """Where the answer's time went (as llama.cpp's server adds ``timings``): the image
    encode, the time to first token, decode tokens/s, cached prompt tokens; OpenAI's
    clients ignore the field, the chat page shows it."""
    return result.stats.to_dict()


def finish_reason(result: GenerationResult) -> str:
    return FINISH_REASONS.get(result.stats.stop_reason, "stop")


def completion(request: ChatRequest, model: str, result: GenerationResult) -> dict[str, Any]:
    return {
        "id": request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": usage(result),
        "timings": timings(result),
    }


def chunk(
    request: ChatRequest,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    result: GenerationResult | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta`` None: the usage-only last chunk; the chunk
    with the finish reason carries the timings."""
    body: dict[str, Any] = {
        "id": request.id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if request.include_usage:
        body["usage"] = usage(result) if result is not None and delta is None else None
    if finish is not None and result is not None:
        body["timings"] = timings(result)
    return body
