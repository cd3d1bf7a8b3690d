"""Every engine holds to the written contract (mobilevlm.runtime.engine): what the
Pipeline, the CLI, the server and the benchmarks may ask of it, and what the loader and
the planner may ask of its class. One tiny model, each engine on it."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevlm.export.bundle_export import export_bundle
from mobilevlm.generation import decode_loop
from mobilevlm.generation.preprocess import load_image
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime import LoadOptions, Pipeline
from mobilevlm.runtime.engine import RUNTIME_KEYS, Engine, EngineMemory, engine_type
from mobilevlm.runtime.loader import check_bundle, load_bundle

PROMPT = "What color is the circle?"


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    model = tiny_models(projector="ldpnetv2", template="chatml")
    path = tmp_path_factory.mktemp("contract") / "bundle"
    export_bundle(model, path, ["fp32", "f16"], formats=["onnx", "gguf"], check_parity=False)
    return model, path


@pytest.fixture(params=["onnxruntime", "llama.cpp", "torch"])
def engine(request, bundle):
    model, path = bundle
    if request.param == "torch":
        from mobilevlm.reference.backend import TorchBackend

        yield TorchBackend(model)
        return
    precision = "fp32" if request.param == "onnxruntime" else "f16"
    loaded = load_bundle(path, precision=precision, threads=2)
    yield loaded
    loaded.close()


def test_every_engine_implements_the_protocol(engine):
    assert isinstance(engine, Engine)
    info = engine.runtime_info()
    assert set(RUNTIME_KEYS) <= set(info), info
    assert info["context"] == engine.context_length > 0
    assert isinstance(engine.variant, str) and engine.variant
    assert engine.vision_key is None or isinstance(engine.vision_key, str)
    assert engine.random_weights in (True, False)


def test_an_image_encodes_alike_in_one_step_or_two(engine, rgb_image):
    hidden, tokens = engine.config.llm.hidden_size, engine.config.num_image_tokens
    pixels = engine.image_input(load_image(rgb_image))
    embeds = engine.encode_pixels(pixels)
    assert embeds.shape == (tokens, hidden) and embeds.dtype == np.float32
    np.testing.assert_array_equal(engine.encode_image(rgb_image), embeds)
    engine.release_vision()  # the next image loads it again
    np.testing.assert_allclose(engine.encode_pixels(pixels), embeds, rtol=1e-5, atol=1e-6)


def test_prefill_decode_reset_and_the_positions_each_prefill_ran(engine, rgb_image):
    vocab = engine.config.llm.vocab_size
    embeds = engine.encode_image(rgb_image)
    ids = decode_loop.prompt_ids(engine.config, engine.tokenizer, PROMPT)
    positions = len(ids) - 1 + len(embeds)  # the placeholder becomes the image's rows
    logits = engine.prefill_prompt(ids, embeds)
    assert logits.shape == (vocab,) and engine.last_prefill == positions
    token = int(np.argmax(logits))
    step = engine.decode(token).copy()
    assert step.shape == (vocab,) and np.isfinite(step).all()
    # the prompt and its answer again, one more token: a caching engine runs only what is new
    engine.prefill_prompt(ids + [token, int(np.argmax(step))], embeds)
    assert 1 <= engine.last_prefill <= positions + 2
    engine.reset()
    again = engine.prefill_prompt(ids, embeds)
    assert engine.last_prefill == positions
    np.testing.assert_allclose(again, logits, rtol=1e-4, atol=1e-4)
    engine.release_cache()  # emptied and freed: the same prompt runs whole, alike
    np.testing.assert_allclose(engine.prefill_prompt(ids, embeds), logits, rtol=1e-4, atol=1e-4)
    assert engine.last_prefill == positions
    np.testing.assert_allclose(engine.decode(token), step, rtol=1e-4, atol=1e-4)


def test_a_pipeline_runs_every_engine_the_same_way(engine, rgb_image):
    vlm = Pipeline(engine)
    first = vlm.generate(rgb_image, PROMPT, max_new_tokens=6)
    vlm.reset()
    second = vlm.generate(rgb_image, PROMPT, max_new_tokens=6)
    assert second.token_ids == first.token_ids
    assert second.stats.image_encode_ms > 0 and vlm.cache_misses == 2  # reset forgot it
    assert vlm.runtime_info()["backend"] == engine.runtime_info()["backend"]


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "fp32"), ("llama.cpp", "f16")])
def test_every_engine_class_answers_the_loader_and_the_planner(bundle, backend, precision):
    _, path = bundle
    manifest = BundleManifest.read(path)
    engine_class = engine_type(backend)
    assert engine_class.backend == backend
    assert precision in engine_class.exported(manifest)
    assert set(engine_class.exported(manifest)) <= set(engine_class.preference)
    options = LoadOptions(precision=precision, threads=2)
    described = engine_class.describe(path, options, manifest)
    assert described == check_bundle(path, options)
    assert set(RUNTIME_KEYS) - {"context"} <= set(described)
    memory = engine_class.memory(manifest, precision, options)
    assert isinstance(memory, EngineMemory) and memory.backend == backend
    assert memory.weights > 0 and memory.vision.peak >= memory.vision.kept > 0
    assert memory.kv_bytes(100) >= 100 * memory.kv_bytes_per_position > 0
    assert engine_class.vision_npu(options) is None  # the CPU asks for no NPU form
    loaded = engine_class.load(path, options, manifest)
    try:
        assert isinstance(loaded, Engine) and loaded.runtime_info()["backend"] == backend
        info = loaded.runtime_info()
        assert {k: info[k] for k in described} == described
    finally:
        loaded.close()
        loaded.close()  # idempotent
