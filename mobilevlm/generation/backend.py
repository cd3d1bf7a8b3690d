"""The backend protocol: what an engine implements so that the shared decode loop runs it.

An engine (the torch reference, ONNX Runtime, llama.cpp) encodes an image,
prefills a prompt (token ids with the image embeddings at the placeholder)
and decodes one token at a time while keeping its own KV cache. The two base
classes are the two ways of prefilling: from an empty cache with spliced
input embeddings, or reusing the cached prefix the new prompt begins with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from mobilevlm.config import ModelConfig
from mobilevlm.generation.preprocess import ImageInput, load_image, preprocess_image
from mobilevlm.generation.splice import image_slot, splice
from mobilevlm.generation.tokenizer import Tokenizer


class LanguageBackend(Protocol):
    """What the decode loop needs of an engine (the runtime's whole contract:
    :class:`mobilevlm.runtime.engine.Engine`)."""

    config: ModelConfig
    tokenizer: Tokenizer | None
    last_prefill: int  # positions the last prefill_prompt ran; the rest came from its cache

    @property
    def context_length(self) -> int:
        """Positions the KV cache holds."""

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """(num_image_tokens, hidden) float32 image embeddings."""

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        """Make the KV cache hold exactly this prompt (IMAGE_TOKEN_ID marks where
        ``image_embeds`` go); logits (vocab,) of its last position. A backend may keep a
        cached prefix that matches. The array may be reused by the next call."""

    def decode(self, token: int) -> np.ndarray:
        """Append one token; logits (vocab,) of its position (reused by the next call)."""


class PixelEncoder:
    """Images in two steps, so that a caller that decodes an image once (the Pipeline:
    for its cache key and the encoder) does not decode it again: ``image_input`` (the
    preprocessed pixels; an encoder that preprocesses itself overrides it) and
    ``encode_pixels``, which subclasses provide."""

    config: ModelConfig

    def image_input(self, image: Image.Image) -> np.ndarray:
        return preprocess_image(image, self.config.preprocess)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """(num_image_tokens, hidden) float32 embeddings of any image input."""
        return self.encode_pixels(self.image_input(load_image(image)))


class CachingBackend:
    """A backend that keeps its KV cache between prompts: a prompt that begins with what the
    cache holds (the last prompt and answer, as the next turn of a conversation does) runs
    only its new positions. Image rows are identified by a hash of their embeddings.
    Subclasses provide ``_truncate(length)``, ``_run_tokens(ids)``,
    ``_run_embeddings(rows)`` (each returning the last position's logits) and ``_step``."""

    _history: list[int | str] | None = None  # one entry a cached position; None: unknown
    last_prefill = 0  # positions the last prompt actually ran
    # run a prompt's new positions as one array of embeddings (``embed_tokens`` needed): a
    # static-shape graph pads every run to its rows, so three runs (text, image, text) of
    # a short prompt would cost three chunks instead of one
    prefill_whole = False

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        ids = list(input_ids)
        at = image_slot(ids, image_embeds)
        items: list[int | str] = list(ids)
        segments = [("tokens", 0, len(items))]
        if at is not None:
            n = len(image_embeds)
            key = hashlib.sha1(np.ascontiguousarray(image_embeds).tobytes()).hexdigest()
            items[at : at + 1] = [f"image:{key}:{i}" for i in range(n)]
            segments = [("tokens", 0, at), ("image", at, at + n), ("tokens", at + n, len(items))]
        keep = 0
        for old, new in zip(self._history or (), items[:-1], strict=False):  # the last runs
            if old != new:
                break
            keep += 1
        self._truncate(keep)
        self._history = items[:keep]
        self.last_prefill = len(items) - keep
        logits = None
        if self.prefill_whole and keep < len(items):
            rows = [
                image_embeds[max(keep, start) - start : end - start]
                if kind == "image"
                else self.embed_tokens(items[max(keep, start) : end])
                for kind, start, end in segments
                if max(keep, start) < end
            ]
            logits = self._run_embeddings(np.concatenate(rows).astype(np.float32, copy=False))
            self._history = items
            return logits
        for kind, start, end in segments:
            begin = max(keep, start)
            if begin >= end:
                continue
            if kind == "image":
                logits = self._run_embeddings(image_embeds[begin - start : end - start])
            else:
                logits = self._run_tokens(items[begin:end])
            self._history = items[:end]
        return logits

    def decode(self, token: int) -> np.ndarray:
        logits = self._step(token)
        if self._history is not None:
            self._history.append(token)
        return logits

    def reset(self) -> None:
        """Empty the KV cache."""
        self._truncate(0)
        self._history = []

    def _truncate(self, length: int) -> None:
        raise NotImplementedError

    def _run_tokens(self, ids: list) -> np.ndarray:
        raise NotImplementedError

    def _run_embeddings(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step(self, token: int) -> np.ndarray:
        raise NotImplementedError


class EmbeddingBackend:
    """A backend whose LLM takes input embeddings: it prefills the spliced prompt from an
    empty cache. Subclasses provide ``embed_tokens``, ``reset`` and ``prefill``."""

    last_prefill = 0  # positions the last prompt ran: all of them

    def embed_tokens(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), hidden) float32 input embeddings."""
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the KV cache."""
        raise NotImplementedError

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (seq, hidden) to the cache; logits (vocab,) of the last position."""
        raise NotImplementedError

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        self.reset()
        embeds = splice(input_ids, image_embeds, self.embed_tokens)
        self.last_prefill = len(embeds)
        return self.prefill(embeds)
