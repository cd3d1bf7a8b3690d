"""`mobilevlm serve` through the official openai client, against the server on 127.0.0.1.

The server runs in this process (uvicorn in a thread) over the built-in model's bundle,
so the answers are real Shapes-VQA answers."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request

import pytest
from conftest import REPO

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from serving import (  # noqa: E402
    KEY,
    Running,
    data_url,
    free_port,
    get_json,
    is_error_object,
    post,
    post_raw,
)

from mobilevlm import shapes_vqa  # noqa: E402
from mobilevlm.runtime.pipeline import Pipeline  # noqa: E402

IMAGE = REPO / "examples" / "shapes.png"
QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def pipeline(torch_threads):
    return Pipeline.load(precision="int4")  # the built-in model, exported once into the cache


@pytest.fixture(scope="module")
def server(pipeline):
    running = Running(pipeline, api_key=KEY, max_body=1 << 20, max_queue=16)
    yield running
    running.stop()


def ask(question: str = QUESTION, image: bytes | None = None) -> list[dict]:
    parts = [{"type": "text", "text": question}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return [{"role": "user", "content": parts}]


def complete(client, messages, **kw):
    return client.chat.completions.create(
        model="default", messages=messages, temperature=0, max_tokens=kw.pop("max_tokens", 32), **kw
    )


def test_a_chat_with_an_image_answers_it(server):
    reply = complete(server.client(), ask(image=IMAGE.read_bytes()))
    text = reply.choices[0].message.content
    assert shapes_vqa.is_correct(text, "red", "color"), text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 49 and reply.usage.completion_tokens >= 1
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["default"]


def test_the_streamed_answer_is_the_same_text_with_usage_last(server):
    client, messages = server.client(), ask("Describe the image.", IMAGE.read_bytes())
    whole = complete(client, messages, max_tokens=24)
    chunks = list(
        complete(
            client, messages, max_tokens=24, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert finish == whole.choices[0].finish_reason


def test_a_second_turn_reuses_the_cached_prompt(server):
    client = server.client()
    first = ask(image=IMAGE.read_bytes())
    answer = complete(client, first).choices[0].message.content
    follow = first + [{"role": "assistant", "content": answer}]
    follow += [{"role": "user", "content": "How many shapes are there?"}]
    reply = complete(client, follow)
    cached = reply.usage.prompt_tokens_details.cached_tokens
    assert cached > 49 and cached < reply.usage.prompt_tokens


def test_a_wrong_key_is_refused(server):
    with pytest.raises(openai.AuthenticationError):
        complete(server.client("wrong"), ask())
    assert get_json(server.url + "/health")["loaded"] is True  # health needs no key


def test_a_broken_image_and_malformed_messages_are_bad_requests(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="image"):
        complete(client, ask(image=b"not a png"))
    with pytest.raises(openai.BadRequestError, match="role"):
        complete(client, [{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="default", messages=ask(), temperature=7)


def test_a_body_over_the_limit_is_413(server):
    body = json.dumps({"model": "default", "messages": ask(image=b"x" * (2 << 20))}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, reply = post(server.url + "/v1/chat/completions", body, headers)
    assert status == 413 and "over" in reply["error"]["message"]


def test_eight_concurrent_clients_get_their_sequential_answers(server):
    questions = [
        s.question.question for s in map(lambda i: shapes_vqa.sample("heldout", i), range(8))
    ]
    image = IMAGE.read_bytes()
    alone = [complete(server.client(), ask(q, image)).choices[0].message.content for q in questions]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(
                lambda q: complete(server.client(), ask(q, image)).choices[0].message.content,
                questions,
            )
        )
    assert together == alone


def test_a_full_queue_is_429_and_a_client_that_leaves_frees_the_model(pipeline):
    running = Running(pipeline, max_queue=0)
    try:
        client = running.client()
        # greedy, this prompt runs to the token limit: seconds of generation
        long = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
        stream = complete(client, long, max_tokens=1000, stream=True)
        next(iter(stream))  # the generation has its turn
        with pytest.raises(openai.RateLimitError):
            complete(client, ask())
        stream.close()  # the client goes away mid-answer
        left = time.monotonic()
        while get_json(running.url + "/health")["running"]:
            assert time.monotonic() - left < 3, "the cancelled generation kept the model"
            time.sleep(0.05)
        assert complete(client, ask(image=IMAGE.read_bytes())).choices[0].message.content
    finally:
        running.stop()


def test_a_prompt_over_the_context_is_a_bad_request_and_a_short_limit_is_length(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="context"):
        complete(client, ask("shape " * 3000))
    reply = complete(client, ask("Describe the image.", IMAGE.read_bytes()), max_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2


def test_the_command_serves_and_exits_cleanly_on_sigterm(torch_threads):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "mobilevlm.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = get_json(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert health["runtime"]["backend"] == "onnxruntime" and health["queue"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert b"<title>MobileVLM chat</title>" in reply.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        said = proc.stderr.read()
        assert f"http://127.0.0.1:{port}/v1" in said and f"page: http://127.0.0.1:{port}/" in said
    finally:
        proc.kill()


def test_image_embeddings_on_disk_spare_another_process_the_encoder(tmp_path, torch_threads):
    first = Pipeline.load(precision="int4", embeddings_dir=tmp_path)
    encoded = first.encode_image(IMAGE)
    assert first.cache_misses == 1 and len(list(tmp_path.rglob("*.npy"))) == 1
    second = Pipeline.load(precision="int4", embeddings_dir=tmp_path)  # as a new process
    assert (second.encode_image(IMAGE) == encoded).all()
    assert (second.cache_hits, second.cache_misses) == (1, 0)
    other = Pipeline.load(precision="int4", vision_precision="int8", embeddings_dir=tmp_path)
    other.encode_image(IMAGE)  # another vision graph: its own entry, encoded
    assert other.cache_misses == 1 and len(list(tmp_path.rglob("*.npy"))) == 2


def test_local_image_paths_only_under_the_image_dir(pipeline, server):
    def by_path(path: str) -> list[dict]:
        parts = [{"type": "image_url", "image_url": {"url": path}}]
        return [{"role": "user", "content": parts + [{"type": "text", "text": QUESTION}]}]

    with pytest.raises(openai.BadRequestError, match="data: URL"):
        complete(server.client(), by_path(str(IMAGE)))  # no --image-dir: no files at all
    running = Running(pipeline, image_dir=IMAGE.parent)
    try:
        text = complete(running.client(), by_path(IMAGE.name)).choices[0].message.content
        assert shapes_vqa.is_correct(text, "red", "color"), text
        with pytest.raises(openai.BadRequestError, match="outside"):
            complete(running.client(), by_path("../README.md"))
    finally:
        running.stop()


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32 levels"),  # was a RecursionError: 500
        (b'{"messages": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "deeper than 32"),
        (b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", "not JSON"),  # int() digit limit
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        (b"[" + b"[]," * 200_000 + b"[]]", "more than 100,000 values"),
        (b'["messages"]', "JSON object"),
        (b"", "JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_error_object(server, body, problem):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, answer = post_raw(server.url + "/v1/chat/completions", body, headers)
    assert status == 400 and is_error_object(answer)
    assert problem in json.loads(answer)["error"]["message"]


def test_unknown_paths_and_methods_are_error_objects_and_the_page_is_at_the_root(server):
    status, answer = post_raw(server.url + "/v1/completions", b"{}", {})
    assert status == 404 and is_error_object(answer)
    status, answer = post_raw(server.url + "/v1/models", b"{}", {})
    assert status == 405 and is_error_object(answer)
    with urllib.request.urlopen(server.url + "/", timeout=30) as reply:
        page = reply.read().decode()
        assert reply.headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in page and "http://" not in page.replace(
        "http://www.w3.org", ""
    )  # everything it needs is in the page: nothing fetched from elsewhere
    health = get_json(server.url + "/health")
    assert health["auth_required"] is True and health["max_body"] == 1 << 20


def test_the_answer_carries_its_timings(server):
    reply = complete(server.client(), ask(image=IMAGE.read_bytes()), max_tokens=4)
    timings = reply.model_extra["timings"]
    assert timings["image_tokens"] > 0 and timings["time_to_first_token_ms"] > 0
    assert timings["generated_tokens"] == reply.usage.completion_tokens
    chunks = list(complete(server.client(), ask(image=IMAGE.read_bytes()), stream=True))
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[0].model_extra["timings"]["cached_tokens"] > 0  # the same prompt again


def test_a_wrong_key_with_a_large_body_is_answered_not_reset(server):
    """Found by fuzzing raw bodies: the 401 went out before the body was read, and a
    client still sending got a broken pipe instead of the answer."""
    body = b'{"messages": "' + b"x" * (4 << 20) + b'"}'  # under the 8 MiB drained
    for _ in range(3):
        status, answer = post_raw(server.url + "/v1/chat/completions", body, {})
        assert status == 401 and b"wrong API key" in answer
