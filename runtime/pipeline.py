"""The embedded API: load a bundle once, then ask it questions about images.

    from mobilevlm.runtime import Pipeline

    vlm = Pipeline.load(precision="int4", memory_budget="512MB")  # or a bundle's path first
    print(vlm.generate("photo.png", "What color is the circle?").text)
    for piece in vlm.stream("photo.png", "Describe it."):
        print(piece, end="", flush=True)
    chat = vlm.conversation("photo.png")
    chat.ask("How many shapes are there?"); chat.ask("Which one is red?")

A :class:`Pipeline` owns one backend (ONNX Runtime or llama.cpp) and its KV
cache. Calls on one pipeline are serialized by a lock: a second thread waits
until the running generation ends (an unfinished :meth:`stream` holds the
pipeline until it is exhausted or closed). :meth:`cancel` stops the running
generation after its current token, from any thread; the pipeline stays
usable. Image embeddings are cached by image content (the pixels the encoder
takes, after preprocessing), up to ``image_cache_bytes``, so asking again about
the same image skips the
vision encoder; with ``embeddings_dir`` they are also kept on disk, keyed by
the bundle's vision graph and the pixels, so that another process (the CLI,
a restarted server) does not encode the same image again. A
:class:`Conversation` also keeps the KV cache of its earlier turns, so a new
turn prefills only its own tokens. Loaded with ``vision_resident=False`` (what a
tight memory budget plans), the vision encoder is loaded for each new image and
freed after it, the KV cache freed before it, so the two never add up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.generation import decode_loop
from mobilevlm.generation.preprocess import ImageInput, load_image
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.generation.result import GenerationResult
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime import heap
from mobilevlm.runtime.engine import Engine
from mobilevlm.runtime.loader import load_bundle, open_default_bundle
from mobilevlm.runtime.memory import MemoryPlan, plan_memory
from mobilevlm.runtime.messages import parse_messages
from mobilevlm.runtime.options import LoadOptions

log = logging.getLogger(__name__)

IMAGE_CACHE_BYTES = 64 << 20  # image embeddings kept in memory (the default model: 110 KiB each)


def image_key(pixels: np.ndarray) -> str:
    """Identity of an image by what the encoder takes (the engine's ``image_input``: the
    preprocessed pixels): the same image gives the same key, whatever the form (path,
    bytes, Pillow image, array) it came in, and a 12-megapixel photo is hashed at the
    encoder's size, not its own."""
    digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes())
    digest.update(f"{pixels.shape}{pixels.dtype}".encode())
    return digest.hexdigest()


def _embeddings_dir(model: Engine, root: str | Path | None) -> Path | None:
    """Where ``model``'s image embeddings are kept on disk under ``root``: one directory per
    vision graph (its sha256), so another bundle or precision never reads them."""
    key = model.vision_key
    return Path(root) / key if root is not None and key is not None else None


def _load_embeddings(path: Path, config: Any) -> np.ndarray | None:
    """Embeddings stored by an earlier process, or None when the file is damaged (it is
    then encoded and written again)."""
    shape = (config.num_image_tokens, config.llm.hidden_size)
    try:
        embeds = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("%s: unreadable cached image embeddings (%s); encoding again", path, exc)
        return None
    if embeds.shape != shape or embeds.dtype != np.float32:
        log.warning("%s: cached image embeddings of shape %s, not %s", path, embeds.shape, shape)
        return None
    return embeds


def _save_atomically(path: Path, embeds: np.ndarray) -> None:
    """Write the embeddings under a temporary name, then rename; a cache that cannot be
    written (read-only, full) costs only the cache."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(temporary, embeds)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("%s: cannot cache image embeddings (%s)", path.parent, exc)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


class Streaming:
    """The pieces of one answer as they are produced (iterate over it); ``result`` holds
    the :class:`GenerationResult` once the iteration has ended. ``cancel()`` stops it
    after the current token; ``close()`` (or leaving a ``with`` block) abandons it."""

    def __init__(self, pipeline: Pipeline, pieces: Callable[[Streaming], Iterator[str]]) -> None:
        self._pipeline = pipeline
        self.result: GenerationResult | None = None
        self._pieces = pieces(self)

    def __iter__(self) -> Streaming:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def cancel(self) -> None:
        self._pipeline.cancel()

    def close(self) -> None:
        self._pieces.close()

    def __enter__(self) -> Streaming:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Pipeline:
    """A loaded model that answers questions about images (see the module docstring)."""

    def __init__(
        self,
        model: Engine,
        vision_resident: bool = True,
        image_cache_bytes: int = IMAGE_CACHE_BYTES,
        plan: MemoryPlan | None = None,
        embeddings_dir: str | Path | None = None,
    ) -> None:
        self.model = model  # the engine: OnnxVLM, LlamaCppVLM, the torch reference
        self.vision_resident = vision_resident
        self.plan = plan  # the memory plan it was loaded under, if any
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._image_cache_bytes = image_cache_bytes
        self._disk = _embeddings_dir(model, embeddings_dir)
        self.cache_hits = self.cache_misses = 0
        self.last_encode_ms = 0.0
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    @classmethod
    def load(
        cls,
        bundle: str | Path | None = None,
        options: LoadOptions | None = None,
        *,
        image_cache_bytes: int = IMAGE_CACHE_BYTES,
        embeddings_dir: str | Path | None = None,
        **fields: Any,
    ) -> Pipeline:
        """Load ``bundle`` (None: the built-in model, exported into the cache on first use)
        with ``options``, whose fields ``fields`` override (precision="int4", ...).
        ``precision`` names the engine (fp32/int8/int4: ONNX Runtime; f16/q8_0/q4_k_m:
        llama.cpp); ``memory_budget`` (bytes, or text such as "512MB") lets the planner
        choose backend, precision, context and whether the vision encoder stays loaded,
        before anything is loaded."""
        options = LoadOptions.of(options, **fields)
        if bundle is None:
            path, manifest = open_default_bundle(options)
        else:
            path = Path(bundle)
            manifest = BundleManifest.read(path)
        plan = None
        if options.memory_budget is not None:
            plan = plan_memory(manifest, options.memory_budget, options)
            options = options.replace(
                backend=plan.backend,
                precision=plan.precision,
                context=plan.context,
                vision_resident=plan.vision_resident,
            )
        model = load_bundle(path, options, manifest)
        return cls(model, options.vision_resident, image_cache_bytes, plan, embeddings_dir)

    def runtime_info(self) -> dict[str, Any]:
        """What runs this pipeline: engine, precision, mode, the execution providers of the
        vision graph and the decoder, and the memory plan when it was loaded under one."""
        info = dict(self.model.runtime_info())
        if self.plan is not None:
            info["memory_plan"] = self.plan.to_dict()
        return info

    # ------------------------------------------------------------------ images

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """(image_tokens, hidden) embeddings, from the cache when these pixels were seen;
        ``last_encode_ms`` is what encoding took (decoding the file included), 0 on a hit."""
        start = time.perf_counter()
        self.last_encode_ms = 0.0
        pixels = self.model.image_input(load_image(image))  # decoded once, for key and encoder
        key = image_key(pixels)
        if key in self._images:
            self.cache_hits += 1
            self._images.move_to_end(key)
            return self._images[key]
        stored = self._disk / f"{key}.npy" if self._disk else None
        if stored is not None and stored.is_file():
            embeds = _load_embeddings(stored, self.model.config)
            if embeds is not None:
                self.cache_hits += 1
                return self._keep(key, embeds)
        self.cache_misses += 1
        if not self.vision_resident:  # the encoder and a filled cache never add up
            self.model.release_cache()
            heap.give_back()
        embeds = np.array(self.model.encode_pixels(pixels), dtype=np.float32)
        self.last_encode_ms = (time.perf_counter() - start) * 1000.0
        if not self.vision_resident:
            self.model.release_vision()
            heap.give_back()
        if stored is not None:
            _save_atomically(stored, embeds)
        return self._keep(key, embeds)

    def _keep(self, key: str, embeds: np.ndarray) -> np.ndarray:
        self._images[key] = embeds
        while sum(e.nbytes for e in self._images.values()) > self._image_cache_bytes:
            if len(self._images) == 1:
                break  # the image in use stays, however large
            self._images.popitem(last=False)
        return embeds

    # ------------------------------------------------------------------ generation

    def reset(self) -> None:
        """Forget what is cached in memory: the KV cache (the next prompt is prefilled
        whole) and the image embeddings (the next image is encoded again)."""
        with self._lock:
            self.model.reset()
            self._images.clear()

    def close(self) -> None:
        """Free the engine's native memory; the pipeline is unusable afterwards."""
        with self._lock:
            self.model.close()

    def cancel(self) -> None:
        """Stop the running generation after its current token (from any thread)."""
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def _pieces(
        self,
        image: ImageInput | None,
        prompt: decode_loop.Prompt,
        config: GenerationConfig,
        system: str | None,
        cancel: Callable[[], bool] | None,
        holder: Streaming,
        input_ids: Sequence[int] | None = None,
    ) -> Iterator[str]:
        with self._lock:
            self._cancel.clear()
            embeds = self.encode_image(image) if image is not None else None
            encode_ms = self.last_encode_ms if image is not None else 0.0

            def cancelled() -> bool:
                return self._cancel.is_set() or bool(cancel and cancel())

            pieces = decode_loop.stream(
                self.model,
                None,
                prompt,
                config,
                image_embeds=embeds,
                system=system,
                cancel=cancelled,
                input_ids=input_ids,
                image_encode_ms=encode_ms,
            )
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    holder.result = done.value
                    return
                yield piece

    def generate(
        self,
        image: ImageInput | None,
        prompt: decode_loop.Prompt,
        config: GenerationConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        system: str | None = None,
        cancel: Callable[[], bool] | None = None,
        input_ids: Sequence[int] | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """Answer ``prompt`` (a question, or turns ending in a question) about ``image``
        (None: text only). ``settings`` are GenerationConfig fields (max_new_tokens=...);
        ``on_text`` receives the answer piece by piece; ``cancel`` is polled per token."""
        streaming = self.stream(
            image, prompt, config, system=system, cancel=cancel, input_ids=input_ids, **settings
        )
        for piece in streaming:
            if on_text:
                on_text(piece)
        return streaming.result

    def stream(
        self,
        image: ImageInput | None,
        prompt: decode_loop.Prompt,
        config: GenerationConfig | None = None,
        *,
        system: str | None = None,
        cancel: Callable[[], bool] | None = None,
        input_ids: Sequence[int] | None = None,
        **settings: Any,
    ) -> Streaming:
        """The answer as an iterator of text pieces, produced as it is generated."""
        config = config or GenerationConfig(**settings)
        return Streaming(
            self,
            lambda holder: self._pieces(image, prompt, config, system, cancel, holder, input_ids),
        )

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        config: GenerationConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """Answer the last user message of an OpenAI-style chat (text and image parts)."""
        chat = parse_messages(messages)
        return self.generate(
            chat.image, chat.turns, config, on_text=on_text, system=chat.system, **settings
        )

    def conversation(self, image: ImageInput | None = None, system: str | None = None):
        """A multi-turn conversation about ``image`` that reuses its earlier turns' cache."""
        return Conversation(self, image, system)


class Conversation:
    """Turns over one image. The conversation keeps its token ids: the earlier prompts
    and the answers exactly as generated, then the template's text for the new turn. The
    backend finds all of it in its KV cache and prefills only the new turn, and the image
    is encoded once."""

    def __init__(
        self, pipeline: Pipeline, image: ImageInput | None = None, system: str | None = None
    ) -> None:
        self.pipeline = pipeline
        self.system = system
        self.image = image
        self.reset()

    def set_image(self, image: ImageInput | None) -> None:
        """Talk about another image: the template puts it in the first turn, so the
        conversation starts over."""
        if image is not None:
            self.pipeline.encode_image(image)  # fail now on a bad image, and cache it
        self.image = image
        self.reset()

    def reset(self) -> None:
        self.turns: list[Turn] = []
        self.results: list[GenerationResult] = []
        self._ids: list[int] = []  # prompt and answer ids so far

    def _input_ids(self, prompt: str) -> list[int]:
        model = self.pipeline.model
        with_image = self.image is not None
        turns = self.turns + [Turn(prompt)]
        if not self.turns:
            return decode_loop.conversation_ids(
                model.config, model.tokenizer, turns, with_image, self.system
            )
        # the template's text between the last answer and the new answer
        marker = "\x00answer\x00"
        turns[-2] = Turn(turns[-2].user, marker)
        system = model.config.system_prompt if self.system is None else self.system
        text = get_template(model.config.template).render(
            turns, system=system, with_image=with_image
        )
        return self._ids + model.tokenizer.encode(text.split(marker, 1)[1])

    def _record(self, prompt: str, ids: list[int], result: GenerationResult) -> None:
        answer = result.token_ids
        if result.stats.stop_reason == "eos":
            answer = answer[:-1]  # the template writes the end of the answer itself
        self._ids = ids + answer
        self.turns.append(Turn(prompt, result.text.strip()))
        self.results.append(result)

    def ask(
        self,
        prompt: str,
        config: GenerationConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """The next turn: answer ``prompt`` in the light of the earlier turns."""
        ids = self._input_ids(prompt)
        result = self.pipeline.generate(
            self.image, prompt, config, on_text=on_text, input_ids=ids, **settings
        )
        self._record(prompt, ids, result)
        return result

    def stream(
        self, prompt: str, config: GenerationConfig | None = None, **settings: Any
    ) -> Iterator[str]:
        """The next turn, piece by piece; the turn is recorded when the stream ends."""
        ids = self._input_ids(prompt)
        streaming = self.pipeline.stream(self.image, prompt, config, input_ids=ids, **settings)
        yield from streaming
        self._record(prompt, ids, streaming.result)
