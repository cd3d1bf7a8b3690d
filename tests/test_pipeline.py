"""The embedded API: Pipeline, Conversation, streaming, cancellation, messages, errors."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from mobilevlm.errors import BundleError, ImageError, PromptError, ProviderError
from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.runtime import Pipeline

PROMPT = "What color is the circle?"
BACKENDS = ["fp32", "f16"]  # ONNX Runtime, llama.cpp


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    model = tiny_models(projector="ldpnetv2", template="chatml")
    path = tmp_path_factory.mktemp("pipeline") / "bundle"
    formats = ["onnx", "gguf"]
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        formats = ["onnx"]
    export_bundle(model, path, ["fp32", "f16"], formats=formats, check_parity=False)
    return model, path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, rgb_image_module):
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    Image.fromarray(rgb_image_module).save(path)
    return path


@pytest.fixture(scope="module")
def rgb_image_module():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)


def _pipeline(bundle, precision):
    if precision == "f16":
        pytest.importorskip("llama_cpp")
    return Pipeline.load(bundle[1], precision=precision, threads=2)


@pytest.mark.parametrize("precision", BACKENDS)
def test_generate_answers_like_the_reference(bundle, rgb_image_module, precision):
    model, _ = bundle
    vlm = _pipeline(bundle, precision)
    got = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=10)
    want = model.generate(rgb_image_module, PROMPT, GenerationConfig(max_new_tokens=10))
    assert got.token_ids == want.token_ids and got.text == want.text


@pytest.mark.parametrize("precision", BACKENDS)
def test_stream_yields_pieces_before_the_answer_is_complete(bundle, rgb_image_module, precision):
    vlm = _pipeline(bundle, precision)
    streaming = vlm.stream(rgb_image_module, PROMPT, max_new_tokens=12)
    pieces = []
    for piece in streaming:
        if not pieces:
            assert streaming.result is None  # the first piece comes while generating
        pieces.append(piece)
    assert pieces and "".join(pieces) == streaming.result.text
    expected = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=12)
    assert streaming.result.token_ids == expected.token_ids


@pytest.mark.parametrize("precision", BACKENDS)
def test_image_embeddings_are_cached_by_content(bundle, rgb_image_module, image_path, precision):
    vlm = _pipeline(bundle, precision)
    vlm.generate(image_path, PROMPT, max_new_tokens=2)
    second = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=2)  # same pixels, array
    vlm.generate(Image.open(image_path), PROMPT, max_new_tokens=2)
    assert (vlm.cache_misses, vlm.cache_hits) == (1, 2)
    assert second.stats.image_encode_ms == 0.0


@pytest.mark.parametrize("precision", BACKENDS)
def test_conversation_prefills_only_the_new_turn(bundle, rgb_image_module, precision):
    """Turn two finds turn one (image, prompt, answer) in the KV cache: only its own
    tokens run, and the answer is what a fresh pipeline computes from scratch."""
    vlm = _pipeline(bundle, precision)
    chat = vlm.conversation(rgb_image_module)
    first = chat.ask(PROMPT, max_new_tokens=6)
    ids_after_first = list(chat._ids)
    new_tokens = len(chat._input_ids("And which shape is it?")) - len(ids_after_first)
    second = chat.ask("And which shape is it?", max_new_tokens=6)
    ran = second.stats.prefill_tokens - second.stats.cached_tokens
    cached_before = first.stats.prefill_tokens + first.stats.generated_tokens - 1
    assert second.stats.cached_tokens >= cached_before
    assert ran <= new_tokens + 1  # the new turn (+ the last answer token, never decoded)
    assert vlm.cache_misses == 1  # the image was encoded once

    fresh = _pipeline(bundle, precision)  # an empty cache: everything is prefilled
    replay = fresh.conversation(rgb_image_module)
    replay._ids, replay.turns = ids_after_first, chat.turns[:1]
    assert replay.ask("And which shape is it?", max_new_tokens=6).token_ids == second.token_ids


@pytest.mark.parametrize("precision", BACKENDS)
def test_cancel_from_another_thread_stops_and_leaves_the_pipeline_usable(
    bundle, rgb_image_module, precision
):
    vlm = _pipeline(bundle, precision)
    streaming = vlm.stream(rgb_image_module, PROMPT, max_new_tokens=200, stop_strings=("@@",))
    next(streaming)
    threading.Thread(target=vlm.cancel).start()
    rest = list(streaming)
    assert streaming.result.stats.stop_reason == "cancelled"
    assert len(rest) < 199
    full = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=10)
    assert full.stats.stop_reason != "cancelled" and full.stats.generated_tokens > 0


def test_cancel_callback_is_polled_per_token(bundle, rgb_image_module):
    vlm = _pipeline(bundle, "fp32")
    seen = []
    result = vlm.generate(
        rgb_image_module,
        PROMPT,
        max_new_tokens=50,
        on_text=seen.append,
        cancel=lambda: len(seen) >= 3,
    )
    assert result.stats.stop_reason == "cancelled" and len(seen) == 3


def test_concurrent_calls_are_serialized_never_interleaved(bundle, rgb_image_module):
    vlm = _pipeline(bundle, "fp32")
    expected = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=12).token_ids
    results = [None] * 4

    def ask(i: int) -> None:
        results[i] = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=12).token_ids

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4 and not vlm.busy


def test_openai_messages_with_an_image_part(bundle, image_path, rgb_image_module):
    vlm = _pipeline(bundle, "fp32")
    data = base64.b64encode(image_path.read_bytes()).decode()
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": PROMPT},
            ],
        },
    ]
    got = vlm.chat(messages, max_new_tokens=8)
    want = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=8, system="Be brief.")
    assert got.token_ids == want.token_ids
    messages[1]["content"][0] = {"type": "image_url", "image_url": str(image_path)}
    assert vlm.chat(messages, max_new_tokens=8).token_ids == want.token_ids


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "assistant", "content": "hi"}], "must follow a user message"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "in a row"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unknown message part"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y"}]}],
            "not fetched",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "a.png"},
                        {"type": "image", "image": "b.png"},
                    ],
                }
            ],
            "one image per conversation",
        ),
    ],
)
def test_malformed_messages_are_prompt_errors(bundle, messages, problem):
    vlm = _pipeline(bundle, "fp32")
    with pytest.raises(PromptError, match=problem):
        vlm.chat(messages)


def test_user_errors_are_typed_and_name_the_file_or_limit(bundle, tmp_path):
    vlm = _pipeline(bundle, "fp32")
    with pytest.raises(ImageError, match="nothing.png"):
        vlm.generate(tmp_path / "nothing.png", PROMPT)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        vlm.generate(broken, PROMPT)
    assert not vlm.busy  # a failed call releases the pipeline
    with pytest.raises(BundleError, match="no such bundle directory"):
        Pipeline.load(tmp_path / "missing")
    with pytest.raises(ProviderError, match="QNNExecutionProvider is required"):
        Pipeline.load(bundle[1], precision="fp32", providers=["qnn!"])
    from mobilevlm.errors import ContextOverflowError

    small = Pipeline.load(bundle[1], precision="fp32", context=8)
    with pytest.raises(ContextOverflowError, match="the context holds 8"):
        small.generate(None, PROMPT)


def test_new_image_starts_the_conversation_over(bundle, rgb_image_module, tmp_path):
    vlm = _pipeline(bundle, "fp32")
    chat = vlm.conversation(rgb_image_module)
    chat.ask(PROMPT, max_new_tokens=3)
    other = np.zeros((30, 30, 3), dtype=np.uint8)
    chat.set_image(other)
    assert chat.turns == [] and vlm.cache_misses == 2
    with pytest.raises(ImageError):
        chat.set_image(tmp_path / "missing.png")


@pytest.mark.parametrize("precision", BACKENDS)
def test_vision_released_after_the_image_when_not_resident(bundle, rgb_image_module, precision):
    resident = _pipeline(bundle, precision)
    if precision == "f16":
        pytest.importorskip("llama_cpp")
    vlm = Pipeline.load(bundle[1], precision=precision, threads=2, vision_resident=False)
    assert vlm.model.vision is None  # never loaded with the decoder
    first = vlm.generate(rgb_image_module, PROMPT, max_new_tokens=4)
    assert vlm.model.vision is None
    assert (
        first.token_ids == resident.generate(rgb_image_module, PROMPT, max_new_tokens=4).token_ids
    )
    chat = vlm.conversation(rgb_image_module)
    chat.ask(PROMPT, max_new_tokens=3)
    second = chat.ask("And the square?", max_new_tokens=3)
    assert second.stats.cached_tokens > 0  # the same image: the cache stays
    other = np.full((30, 30, 3), 200, dtype=np.uint8)
    vlm.generate(other, PROMPT, max_new_tokens=4)  # cache freed, encoder loaded, released
    assert vlm.model.vision is None
    assert vlm.generate(rgb_image_module, PROMPT, max_new_tokens=4).token_ids == first.token_ids


def test_pipeline_accepts_png_bytes(bundle, image_path, rgb_image_module):
    vlm = _pipeline(bundle, "fp32")
    buffer = io.BytesIO(image_path.read_bytes())
    got = vlm.generate(buffer.getvalue(), PROMPT, max_new_tokens=4)
    assert got.token_ids == vlm.generate(rgb_image_module, PROMPT, max_new_tokens=4).token_ids
