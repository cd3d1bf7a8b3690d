"""A `mobilevlm serve` app on a free loopback port, in a thread of the test process, and
the plain HTTP calls the server tests make to it (the openai client aside)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import uvicorn

from mobilevlm.runtime.pipeline import Pipeline
from mobilevlm.serve.app import ServerSettings, build_app

KEY = "test-key"


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def post_raw(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    """The status and the body of the answer, whatever they are."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    status, answer = post_raw(url, body, headers)
    return status, json.loads(answer)


def is_error_object(answer: bytes) -> bool:
    """Whether ``answer`` is OpenAI's error object: a message and a type."""
    error = json.loads(answer)["error"]
    return isinstance(error["message"], str) and bool(error["message"]) and bool(error["type"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A server on a free loopback port, in a thread of this process."""

    def __init__(self, pipeline: Pipeline, **settings) -> None:
        self.port = free_port()
        app = build_app(pipeline, ServerSettings("default", **settings))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str = KEY):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
