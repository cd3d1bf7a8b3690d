"""A bundle's LLM on llama.cpp (llama-cpp-python), with the image from ONNX or from mtmd.

Two modes, one decoder:

- ``hybrid``: the project's ONNX vision graph computes the image embeddings
  exactly as the reference does (on any execution provider: the NPU case);
- ``mtmd``: llama.cpp's own mtmd computes them from the bundle's mmproj, with
  llama.cpp's deviations (docs/llama-cpp.md), for the geometries it runs.

Either way the prompt goes to llama.cpp as token batches around one
embeddings batch at the placeholder, through ``llama_decode``; generation is
:func:`mobilevlm.generation.decode_loop.generate`, so sampling, stop strings and
streaming are the same code as every other backend. The KV cache keeps the
last prompt and answer: a prompt that starts with them (the next turn of a
conversation) only prefills what is new.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobilevlm.errors import BundleError, ContextOverflowError, MissingDependencyError, at
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.llamacpp import footprint
from mobilevlm.runtime.llamacpp.select import GGUF_PREFERENCE, GgufSelection, select_gguf
from mobilevlm.runtime.loader import LoadedBundle, describe_run
from mobilevlm.runtime.options import LLAMA_CPP, LoadOptions
from mobilevlm.runtime.ort.providers import accelerator, resolve_providers, without_npus
from mobilevlm.runtime.ort.vision import vision_npu

INSTALL_HINT = (
    "the llama.cpp backend needs llama-cpp-python: pip install 'mobilevlm-runtime[llama]'"
)


def import_llama_cpp():
    """The ``llama_cpp`` module, quieted; a clear error when it is not installed."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    # llama-cpp-python prints every llama.cpp log line until a Llama(verbose=False) quiets
    # it (the quantizer's per-tensor notes, for one); errors only, unless asked otherwise
    llama_logger = logging.getLogger("llama-cpp-python")
    if llama_logger.level == logging.NOTSET:
        llama_logger.setLevel(logging.ERROR)
    return llama_cpp


def open_llama(
    path: str | Path,
    context: int = 512,
    threads: int | None = None,
    batch: int = 512,
    vocab_only: bool = False,
    verbose: bool = False,
    **options,
):
    """A ``llama_cpp.Llama`` over the GGUF at ``path`` (memory-mapped); BundleError if
    llama.cpp cannot load it. ``options`` go to ``Llama`` as they are (a chat handler)."""
    llama_cpp = import_llama_cpp()
    path = Path(path)
    if not path.is_file():
        raise BundleError(at(path, "no such GGUF file"))
    threads = threads or os.cpu_count() or 1
    try:
        return llama_cpp.Llama(
            str(path),
            n_ctx=context,
            n_batch=batch,
            n_ubatch=batch,
            n_threads=threads,
            n_threads_batch=threads,
            vocab_only=vocab_only,
            verbose=verbose,
            **options,
        )
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise BundleError(at(path, f"llama.cpp cannot load it ({exc})")) from exc


class LlamaDecoder:
    """llama.cpp's context driven batch by batch: token batches, embeddings batches and
    single-token decode steps, all at explicit positions of one sequence."""

    def __init__(self, llama, hidden: int, context: int | None = None) -> None:
        self.lib = import_llama_cpp()
        self.llama = llama
        self.ctx = llama.ctx
        self.hidden = hidden
        self.n_batch = llama.n_batch
        self.n_ctx = min(llama.n_ctx(), context or llama.n_ctx())  # llama.cpp pads it up
        self.vocab = llama.n_vocab()
        self.length = 0  # positions in the KV cache
        self._tokens = self.lib.llama_batch_init(self.n_batch, 0, 1)
        self._embeds = self.lib.llama_batch_init(self.n_batch, hidden, 1)
        for batch in (self._tokens, self._embeds):
            for i in range(self.n_batch):
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0

    def close(self) -> None:
        if self._tokens is not None:
            self.lib.llama_batch_free(self._tokens)
            self.lib.llama_batch_free(self._embeds)
            self._tokens = self._embeds = None

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on."""
        memory = self.lib.llama_get_memory(self.ctx)
        self.lib.llama_memory_seq_rm(memory, 0, length, -1)
        self.length = length

    def _run(self, batch, count: int) -> None:
        if self.length + count > self.n_ctx:
            raise ContextOverflowError(
                f"{count} more positions do not fit: {self.length} of the context's "
                f"{self.n_ctx} are used"
            )
        batch.n_tokens = count
        for i in range(count):
            batch.pos[i] = self.length + i
            batch.logits[i] = i == count - 1
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
        self.length += count

    def tokens(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            for i, token in enumerate(chunk):
                self._tokens.token[i] = token
            self._run(self._tokens, len(chunk))

    def embeddings(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.hidden:
            raise ValueError(f"embeddings of shape {rows.shape}, expected (n, {self.hidden})")
        for start in range(0, len(rows), self.n_batch):
            chunk = rows[start : start + self.n_batch]
            ctypes.memmove(self._embeds.embd, chunk.ctypes.data, chunk.nbytes)
            self._run(self._embeds, len(chunk))

    def step(self, token: int) -> np.ndarray:
        """Decode one token; its logits (see :meth:`logits`)."""
        self.tokens([token])
        return self.logits()

    def logits(self) -> np.ndarray:
        """(vocab,) logits of the last position decoded: a view llama.cpp overwrites."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,))


class LlamaCppVLM(LoadedBundle):
    """A bundle's GGUF LLM on llama.cpp, its image from ONNX (``hybrid``) or mtmd."""

    backend = LLAMA_CPP
    preference = GGUF_PREFERENCE
    footprint = staticmethod(footprint.engine_memory)
    MTMD_PROVIDER = "llama.cpp mtmd (CPU)"  # what encodes the image in mtmd mode
    DECODER_PROVIDER = "llama.cpp (CPU)"  # the CPU build's only device

    @classmethod
    def exported(cls, manifest: BundleManifest) -> list[str]:
        return list(manifest.gguf_precisions)

    @classmethod
    def select(cls, manifest: BundleManifest, options: LoadOptions) -> GgufSelection:
        return select_gguf(
            manifest,
            options.precision,
            options.mode,
            options.vision_precision,
            accelerator(options.providers) if options.on_npu("vision") else None,
        )

    @classmethod
    def describe_selection(cls, selection: GgufSelection, options: LoadOptions) -> dict[str, Any]:
        providers = resolve_providers(options.providers)
        if not options.on_npu("vision"):
            providers = without_npus(providers)
        vision = cls.MTMD_PROVIDER if selection.mode == "mtmd" else providers[0][0]
        return describe_run(cls.backend, selection, vision, cls.DECODER_PROVIDER)

    @classmethod
    def vision_npu(cls, options: LoadOptions) -> str | None:
        return None if options.mode == "mtmd" else vision_npu(options)

    def __init__(
        self,
        root: Path,
        manifest: BundleManifest,
        selection: GgufSelection,
        options: LoadOptions,
        verbose: bool = False,
    ) -> None:
        super().__init__(root, manifest, selection, options)
        self.providers, self.threads = options.providers, options.threads
        self.llama = open_llama(
            root / selection.llm.path, self.context, self.threads, verbose=verbose
        )
        self.decoder = LlamaDecoder(self.llama, self.config.llm.hidden_size, self.context)
        if options.vision_resident:  # else loaded for each image
            self.vision = self._open_vision()

    def _open_vision(self):
        path = self.root / self.selection.vision.path
        if self.selection.mode == "mtmd":
            from mobilevlm.runtime.llamacpp.mtmd_vision import MtmdVisionEncoder

            return MtmdVisionEncoder(path, self.llama, self.threads)
        from mobilevlm.runtime.ort.vision import open_vision_encoder

        return open_vision_encoder(self.root, self.selection, self.options)

    @property
    def vision_provider(self) -> str:
        if self.selection.mode == "mtmd":
            return self.MTMD_PROVIDER
        if self.vision is None:  # released: the provider it will load on
            return resolve_providers(self.providers)[0][0]
        return self.vision.provider

    @property
    def decoder_provider(self) -> str:
        return self.DECODER_PROVIDER

    @property
    def mode(self) -> str:
        return self.selection.mode

    @property
    def variant(self) -> str:
        """What runs, in one word: the (GGUF) precision and the image path."""
        return f"{self.precision}/{self.mode}"

    def image_input(self, image: Image.Image) -> np.ndarray:
        if self.selection.mode == "mtmd":  # mtmd preprocesses the pixels itself
            return np.asarray(image)
        return super().image_input(image)

    def _truncate(self, length: int) -> None:
        self.decoder.truncate(length)

    def _run_tokens(self, ids: list) -> np.ndarray:
        self.decoder.tokens(ids)
        return self.decoder.logits()

    def _run_embeddings(self, rows: np.ndarray) -> np.ndarray:
        self.decoder.embeddings(rows)
        return self.decoder.logits()

    def _step(self, token: int) -> np.ndarray:
        return self.decoder.step(token)

    def close(self) -> None:
        self.release_vision()
        self.decoder.close()
        self.llama.close()
