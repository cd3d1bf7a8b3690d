"""A bundle running on ONNX Runtime: preprocess -> vision graph -> splice -> decoder graph.

:class:`OnnxVLM` is a :class:`~mobilevlm.decode_loop.LanguageBackend`, so
generation (template, tokenizer, sampler, stop strings, streaming) is the
same code the torch reference runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mobilevlm.runtime.bundle import LoadedBundle, Selection, open_bundle
from mobilevlm.runtime.onnx_decoder import OnnxDecoder
from mobilevlm.runtime.onnx_vision import OnnxVisionEncoder
from mobilevlm.runtime.providers import CPU, resolve_providers

from mobilevlm.bundle import BundleManifest
from mobilevlm.errors import BundleError, at
from mobilevlm.preprocess import ImageInput, preprocess


class OnnxVLM(LoadedBundle):
    """A loaded bundle at one precision, with its KV cache allocated for ``context`` positions."""

    def __init__(
        self,
        root: Path,
        manifest: BundleManifest,
        selection: Selection,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        context: int | None = None,
    ) -> None:
        super().__init__(root, manifest, selection, context)
        self.providers = resolve_providers(providers)
        self.threads = threads
        self.vision: OnnxVisionEncoder | None = self._open_vision()
        self.decoder = OnnxDecoder(
            root / selection.decoder.path, self.config.llm, self.context, self.providers, threads
        )
        table_path = root / selection.embeddings.path
        try:  # memory-mapped: only the rows of tokens actually used are paged in
            self.table = np.load(table_path, mmap_mode="r")
        except ValueError as exc:
            raise BundleError(at(table_path, f"not a .npy embedding table ({exc})")) from exc
        expected = (self.config.llm.vocab_size, self.config.llm.hidden_size)
        if self.table.shape != expected:
            raise BundleError(at(table_path, f"shape {self.table.shape}, expected {expected}"))

    @classmethod
    def load(
        cls,
        path: str | Path,
        precision: str | None = None,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        context: int | None = None,
        vision_precision: str | None = None,
        verify: str = "auto",
    ) -> OnnxVLM:
        """Open, verify and load the bundle at ``path``; ``precision`` None picks the fastest.
        The vision graph is fp32 on the CPU and int8 QDQ when an NPU provider leads."""
        manifest, selection = cls.check(path, precision, vision_precision, providers, verify)
        return cls(Path(path), manifest, selection, providers, threads, context)

    @staticmethod
    def check(
        path: str | Path,
        precision: str | None = None,
        vision_precision: str | None = None,
        providers: Sequence[str] = ("cpu",),
        verify: str = "auto",
    ) -> tuple[BundleManifest, Selection]:
        """What :meth:`load` would run, verified, without loading it."""
        accelerator = resolve_providers(providers)[0][0] != CPU
        return open_bundle(path, precision, vision_precision, verify, accelerator)

    @property
    def variant(self) -> str:
        """What runs, in one word: the precision names the backend (ONNX Runtime)."""
        return self.precision

    def _open_vision(self) -> OnnxVisionEncoder:
        path = self.root / self.selection.vision.path
        return OnnxVisionEncoder(path, self.providers, self.threads)

    def release_vision(self) -> None:
        """Free the vision session (memory); the next image loads it again."""
        self.vision = None

    def encode_image(self, image: ImageInput) -> np.ndarray:
        pixels = preprocess(image, self.config.preprocess)
        if self.vision is None:
            self.vision = self._open_vision()
        return self.vision.encode(pixels)

    def embed_tokens(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.table[list(ids)], dtype=np.float32)

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append raw input embeddings (seq, hidden) to the cache; last position's logits."""
        self._history = None  # positions no longer identified by tokens: no reuse
        return self.decoder.forward(embeds)

    def _truncate(self, length: int) -> None:
        self.decoder.cache.length = min(length, self.decoder.cache.length)

    def _run_tokens(self, ids: list) -> np.ndarray:
        return self.decoder.forward(self.embed_tokens(ids))

    def _run_embeddings(self, rows: np.ndarray) -> np.ndarray:
        return self.decoder.forward(rows)

    def _step(self, token: int) -> np.ndarray:
        return self.decoder.decode(self.table[token])
