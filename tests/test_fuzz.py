"""Property-based fuzzing of every input boundary: each generated input either works or
raises a MobileVLMError subclass; nothing else escapes.

A bounded run is part of `make test`; `make fuzz` runs many more examples
(MOBILEVLM_FUZZ_EXAMPLES, default 10,000 per category, seeded by
MOBILEVLM_FUZZ_SEED) and prints what each category tried.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from conftest import REPO  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from mobilevlm import shapes_vqa  # noqa: E402
from mobilevlm.config import PreprocessConfig  # noqa: E402
from mobilevlm.errors import MobileVLMError  # noqa: E402
from mobilevlm.generation.preprocess import load_image, preprocess  # noqa: E402
from mobilevlm.generation.sampling import GenerationConfig  # noqa: E402
from mobilevlm.manifest import MANIFEST_FILE  # noqa: E402
from mobilevlm.runtime.loader import open_bundle, open_gguf_bundle  # noqa: E402
from mobilevlm.runtime.messages import parse_messages  # noqa: E402

EXAMPLES = int(os.environ.get("MOBILEVLM_FUZZ_EXAMPLES", "150"))
SEED = int(os.environ.get("MOBILEVLM_FUZZ_SEED", "20261203"))
# the long run keeps what it found (replayed first next time: an interrupted run resumes
# with its failures); the bounded run in `make test` depends on nothing left behind
LONG_RUN = EXAMPLES > 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=30_000,  # ms: no input may take 30 s
    suppress_health_check=list(HealthCheck),
    database=DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis"))
    if LONG_RUN
    else None,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "image_url", "url", "image"])
            | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)


TRIED: dict[str, int] = {}  # inputs run per category (the long run checks its count)


def _tried(category: str) -> None:
    TRIED[category] = TRIED.get(category, 0) + 1


def _ran_them_all(category: str) -> None:
    """After a category: the long run must have tried EXAMPLES inputs (hypothesis stops early
    only when a strategy runs dry)."""
    if LONG_RUN:
        assert TRIED.get(category, 0) >= EXAMPLES, TRIED
        print(f"\n{category}: {TRIED[category]:,} inputs")


def _survives(call, *args) -> None:
    try:
        call(*args)
    except MobileVLMError:
        pass


# ------------------------------------------------------------------------------ messages

PART = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "image", "audio"])},
        optional={"text": JSON, "image_url": JSON | st.text(max_size=30), "image": JSON},
    ),
)
MESSAGE = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "", None])},
        optional={"content": st.one_of(JSON, st.lists(PART, max_size=3))},
    ),
)


@seed(SEED)
@FUZZ
@given(st.one_of(JSON, st.lists(MESSAGE, max_size=5)))
def test_any_chat_is_parsed_or_refused_with_a_prompt_error(messages):
    _survives(parse_messages, messages)


def test_the_server_request_parser_takes_the_same_inputs():
    from mobilevlm.serve.protocol import ApiError, parse_request

    @seed(SEED)
    @FUZZ
    @given(st.dictionaries(
        st.sampled_from(["messages", "temperature", "top_p", "max_tokens", "seed", "stop",
                         "stream", "stream_options", "n", "max_completion_tokens"]),
        JSON | st.lists(MESSAGE, max_size=3), max_size=6))  # fmt: skip
    def run(body):
        _tried("server requests")
        try:
            parse_request(body)
        except ApiError as error:
            assert error.status == 400 and error.message

    run()
    _ran_them_all("server requests")


# ------------------------------------------------------------------------------ raw HTTP bodies

SHAPES = (REPO / "examples" / "shapes.png").read_bytes()
SHAPES_URL = "data:image/png;base64," + base64.b64encode(SHAPES).decode()
QUESTION = "What color is the circle?"
FUZZ_KEY = "fuzz-key"


def _chat(image_url: str = SHAPES_URL, question: str = QUESTION, **fields) -> bytes:
    parts = [{"type": "image_url", "image_url": {"url": image_url}}]
    parts.append({"type": "text", "text": question})
    message = {"role": "user", "content": parts}
    body = {"messages": [message], "max_tokens": 4, "temperature": 0, **fields}
    return json.dumps(body).encode()


CHAT = _chat()


def _edited(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(data)
    for at, value in edits:
        data[at % len(data)] = value
    return bytes(data)


def _nested(depth: int, kind: str, where: str) -> bytes:
    opening, closing = {"list": (b"[", b"]"), "object": (b'{"a": ', b"}")}[kind]
    inner = opening * depth + b"1" + closing * depth
    return inner if where == "body" else b'{"messages": ' + inner + b', "max_tokens": 4}'


HOSTILE = [
    b'{"messages": [], "seed": ' + b"9" * 5000 + b"}",  # past int()'s digit limit
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}',
    CHAT.decode().encode("utf-16"),
    b'{"messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}], "max_tokens": 4}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 4}',
    _chat("data:image/png;base64,!!!not base64"),
    _chat("data:image/png;base64," + base64.b64encode(b"not a png").decode()),
    _chat("http://example.com/cat.png"),
    _chat("/etc/passwd"),
    b"\x00" * 64,
    b"null",
    b'"messages"',
]
RAW_BODY = st.one_of(
    st.builds(
        _chat,
        question=st.text(max_size=40),
        stream=st.booleans(),
        max_tokens=st.integers(1, 8),
        temperature=st.floats(0, 2),
    ),
    st.binary(max_size=300),
    st.integers(0, len(CHAT)).map(lambda cut: CHAT[:cut]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8).map(
        lambda edits: _edited(CHAT, edits)
    ),
    st.builds(
        _nested,
        st.integers(1, 100_000),
        st.sampled_from(["list", "object"]),
        st.sampled_from(["body", "messages"]),
    ),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.lists(MESSAGE, max_size=3).map(
        lambda messages: json.dumps({"messages": messages, "max_tokens": 4}).encode()
    ),
    st.sampled_from(HOSTILE),
)
RAW_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(["application/json", "text/plain", "", "image/png",
                                         "multipart/form-data; boundary=x",
                                         "application/json; charset=utf-16"]),
        "Authorization": st.sampled_from(["Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer", "",
                                          f"bearer {FUZZ_KEY}", "Bearer " + "k" * 1000]
                                         + [f"Bearer {FUZZ_KEY}"] * 6),  # mostly the key
    },
)  # fmt: skip


@pytest.fixture(scope="module")
def chat_server(torch_threads):
    pytest.importorskip("uvicorn")
    from serving import Running

    from mobilevlm.runtime.pipeline import Pipeline

    running = Running(Pipeline.load(precision="int4"), api_key=FUZZ_KEY, max_body=1 << 20)
    yield running
    running.stop()


def _check_answer(status: int, answer: bytes) -> None:
    """Below 500; an error is OpenAI's error object; an answer is a completion or a stream."""
    from serving import is_error_object

    assert status < 500, (status, answer[:300])
    if answer.startswith(b"data: "):
        events = answer.decode().strip().split("\n\n")
        assert events[-1] == "data: [DONE]" and status == 200
        return
    if status >= 400:
        assert is_error_object(answer), answer[:300]
    else:
        assert json.loads(answer)["choices"][0]["message"]["role"] == "assistant", answer[:300]


def test_any_raw_request_body_gets_an_answer_or_an_error_object(chat_server):
    """Bodies as bytes: random, cut, overwritten, nested 100,000 deep, any JSON value,
    hostile numbers and encodings, with wrong content types and keys; then the server
    still answers the question right."""
    from serving import post_raw

    url = chat_server.url + "/v1/chat/completions"
    statuses: dict[int, int] = {}

    @seed(SEED)
    @FUZZ
    @given(RAW_BODY, RAW_HEADERS)
    def run(body, headers):
        _tried("raw request bodies")
        status, answer = post_raw(url, body, {"Authorization": f"Bearer {FUZZ_KEY}", **headers})
        statuses[status] = statuses.get(status, 0) + 1
        _check_answer(status, answer)

    run()
    _ran_them_all("raw request bodies")
    if LONG_RUN:
        print("statuses:", dict(sorted(statuses.items())))
    status, answer = post_raw(url, CHAT, {"Authorization": f"Bearer {FUZZ_KEY}"})
    text = json.loads(answer)["choices"][0]["message"]["content"]
    assert status == 200 and shapes_vqa.is_correct(text, "red", "color"), text


# ------------------------------------------------------------------------------ images


def _encoded_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8))
    out = []
    for fmt, mode in [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"),
                      ("GIF", "P"), ("WEBP", "RGB"), ("TIFF", "RGB"), ("BMP", "RGB")]:  # fmt: skip
        buffer = io.BytesIO()
        base.convert(mode).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, format="PNG")  # a decompression bomb's header
    return out + [big.getvalue()]


IMAGES = _encoded_images()
EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


@seed(SEED)
@FUZZ
@given(st.sampled_from(IMAGES), EDITS, st.integers(0, 10**6))
def test_any_damaged_image_is_decoded_or_refused_with_an_image_error(data, edits, cut):
    data = bytearray(data)
    for at, value in edits:
        data[at % len(data)] = value
    if cut % 3 == 0:
        data = data[: max(1, cut % (len(data) + 1))]
    _survives(lambda: preprocess(load_image(bytes(data)), PreprocessConfig(image_size=32)))


# ------------------------------------------------------------------------------ manifests


@pytest.fixture(scope="module")
def bundle_copy(tiny_models, tmp_path_factory):
    from mobilevlm.export.bundle_export import export_bundle

    source = tmp_path_factory.mktemp("fuzz-bundle")
    export_bundle(tiny_models(), source / "b", ["fp32"], check_parity=False)
    work = tmp_path_factory.mktemp("fuzz-work")
    for f in (source / "b").iterdir():
        shutil.copy(f, work / f.name)
    return work, json.loads((work / MANIFEST_FILE).read_text())


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, (*prefix, i))


VALUES = st.one_of(
    JSON,
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "a" * 5000, "x\x00y", "", "0" * 64]),
    st.integers(-(2**64), 2**64),
)


def test_any_damaged_manifest_loads_or_is_refused_with_a_bundle_error(bundle_copy):
    work, original = bundle_copy
    paths = list(_json_paths(original))

    @seed(SEED)
    @FUZZ
    @given(st.lists(st.tuples(st.sampled_from(paths), VALUES, st.booleans()), min_size=1,
                    max_size=4))  # fmt: skip
    def run(edits):
        _tried("manifests")
        data = copy.deepcopy(original)
        for path, value, delete in edits:
            if not path:
                data = value
                continue
            node = data
            try:
                for key in path[:-1]:
                    node = node[key]
                if delete and isinstance(node, dict):
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                pass
        try:
            text = json.dumps(data)
        except ValueError:
            return
        (work / MANIFEST_FILE).write_text(text)
        for opener in (open_bundle, open_gguf_bundle):
            _survives(opener, work)

    run()
    _ran_them_all("manifests")


# ------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return tiny_models().tokenizer


def test_any_text_tokenizes_and_decodes(tokenizer):
    @seed(SEED)
    @FUZZ
    @given(st.text(st.characters(), max_size=2000), st.integers(1, 50))
    def run(text, repeat):  # up to 100,000 characters
        _tried("tokenizer text")
        try:
            ids = tokenizer.encode(text * repeat)
        except MobileVLMError:
            return
        tokenizer.decode(ids)

    run()
    _ran_them_all("tokenizer text")


def test_lone_surrogates_are_a_prompt_error(tokenizer):
    """Found by this file: ``tokenizers`` raised TypeError on them."""
    from mobilevlm.errors import PromptError

    with pytest.raises(PromptError, match="not valid Unicode"):
        tokenizer.encode("a\ud800b")
    with pytest.raises(PromptError):
        tokenizer.encode_prompt("<image>\ud800")


# ------------------------------------------------------------------------------ settings


SETTING = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.none(),
                    st.text(max_size=5))  # fmt: skip


@seed(SEED)
@FUZZ
@given(st.dictionaries(
    st.sampled_from(["temperature", "top_p", "top_k", "max_new_tokens", "seed",
                     "repetition_penalty"]), SETTING, max_size=4))  # fmt: skip
def test_any_generation_settings_make_a_config_or_an_options_error(settings_):
    _survives(lambda: GenerationConfig(**settings_))


LOAD_FIELD = st.sampled_from(["backend", "precision", "mode", "providers", "threads", "context",
                              "memory_budget", "vision_precision", "verify",
                              "provider_options"])  # fmt: skip


@seed(SEED)
@FUZZ
@given(st.dictionaries(LOAD_FIELD, SETTING | JSON, max_size=4))
def test_any_load_options_make_options_or_an_options_error(fields):
    from mobilevlm.runtime.options import LoadOptions

    _survives(lambda: LoadOptions(**fields))


# ------------------------------------------------------------------ regressions found here


@pytest.mark.parametrize(
    "messages, problem",
    [
        (["hi"], "must be an object"),  # was AttributeError
        ([["user", "hi"]], "must be an object"),  # was AttributeError
        ({"role": "user"}, "must be a list"),  # was AttributeError
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "must be a string"),
        ([{"role": "user", "content": [{"type": "image"}]}], "needs an image"),  # KeyError
        ([{"role": "user", "content": {"type": "text"}}], "string or a list"),  # TypeError
    ],
)
def test_malformed_chats_found_by_fuzzing_are_prompt_errors(messages, problem):
    from mobilevlm.errors import PromptError

    with pytest.raises(PromptError, match=problem):
        parse_messages(messages)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m["model"].__setitem__("vision", "clip"), "vision config must be an object"),
        (lambda m: m["model"]["llm"].__setitem__("hidden_size", "64"), "hidden_size must be int"),
        (lambda m: m["model"]["preprocess"].__setitem__("mean", "abc"), "mean must be a list"),
        (
            lambda m: m["artefacts"][0]["files"][0].__setitem__("path", "../../etc/passwd"),
            "not inside the bundle",
        ),  # fmt: skip
        (lambda m: m["artefacts"][0]["files"][0].__setitem__("path", "a" * 5000), "short"),
        (lambda m: m["artefacts"][0]["files"][0].__setitem__("bytes", None), "whole number"),
        (lambda m: m["artefacts"][0].__setitem__("files", 3), "list of objects"),
        (lambda m: m.__setitem__("tokenizer", "/etc/passwd"), "not inside the bundle"),
    ],
)
def test_malformed_manifests_found_by_fuzzing_are_bundle_errors(bundle_copy, edit, problem):
    from mobilevlm.errors import BundleError

    work, original = bundle_copy
    data = copy.deepcopy(original)
    edit(data)
    (work / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=problem):
        open_bundle(work, verify="size")
    (work / MANIFEST_FILE).write_text(json.dumps(original))


def test_a_panorama_is_padded_without_a_canvas_of_its_long_side_squared():
    """Found by `make fuzz`: a GIF whose width byte was bumped to 62,765 took 34 s and
    11 GB to pad to a square before the resize."""
    import time

    started = time.perf_counter()
    pixels = preprocess(Image.new("RGB", (62765, 30), (200, 0, 0)), PreprocessConfig(image_size=32))
    assert pixels.shape == (3, 32, 32) and time.perf_counter() - started < 5
