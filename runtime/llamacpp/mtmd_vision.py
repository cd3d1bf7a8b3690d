"""Image embeddings from llama.cpp's mtmd and the bundle's mmproj GGUF.

mtmd does its own preprocessing from the mmproj's metadata (for ``ldp``,
``ldpv2`` and ``mlp``: bicubic resize of the long side to the image size,
centred padding with CLIP's mean color, mean/std normalisation), so the
encoder hands it the decoded RGB pixels and nothing else. llama.cpp's graph
deviates from the reference in its token order (docs/llama-cpp.md); the
``hybrid`` mode of the llama.cpp backend avoids that with the ONNX vision graph.

llama-cpp-python is imported when an encoder is built, never at import time.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.errors import BundleError, MissingDependencyError, at
from mobilevlm.generation.preprocess import ImageInput, load_image

INSTALL_HINT = "mtmd needs llama-cpp-python: pip install 'mobilevlm-runtime[llama]'"
# ggml_log_level (ggml.h)
_GGML_LOG_ERROR = 4
_GGML_LOG_CONT = 5


class _MtmdLog:
    """mtmd's global log sink: quiet unless verbose, but the last error lines are kept so a
    failed load can say why. One instance for the process (``mtmd_log_set`` is global)."""

    def __init__(self) -> None:
        self.verbose = False
        self.errors: list[str] = []
        self._last_level = 0
        self._callback: Any = None  # the ctypes callback, kept alive while installed

    def install(self, mtmd_cpp: Any, llama_cpp: Any, verbose: bool) -> None:
        self.verbose = verbose
        if self._callback is None:
            self._callback = llama_cpp.llama_log_callback(self._on_log)
            mtmd_cpp.mtmd_log_set(self._callback, None)

    def take_errors(self) -> str:
        text = "; ".join(line.strip() for line in self.errors if line.strip())
        self.errors = []
        return text

    def _on_log(self, level: int, text: bytes, _user_data: Any) -> None:
        level = self._last_level if level == _GGML_LOG_CONT else level
        self._last_level = level
        message = text.decode("utf-8", errors="replace")
        if level == _GGML_LOG_ERROR:
            self.errors = (self.errors + [message])[-8:]
        if self.verbose:
            os.write(2, text)


_LOG = _MtmdLog()


def _bindings() -> tuple[Any, Any]:
    try:
        import llama_cpp
        from llama_cpp import mtmd_cpp
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    return llama_cpp, mtmd_cpp


class MtmdVisionEncoder:
    """An mmproj loaded by mtmd next to an already loaded ``llama_cpp.Llama``.

    mtmd checks the mmproj against the text model (their embedding widths must be equal)
    and tokenizes around the image with its vocabulary, so the LLM must outlive the encoder:
    :meth:`close` this first.
    """

    def __init__(
        self,
        mmproj: str | Path,
        llama: Any,
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self._ctx = None
        self._lib: Any = None
        self.path = Path(mmproj)
        if not self.path.is_file():
            raise BundleError(at(self.path, "no such mmproj file"))
        llama_cpp, mtmd = _bindings()
        _LOG.install(mtmd, llama_cpp, verbose)
        params = mtmd.mtmd_context_params_default()
        params.n_threads = threads or os.cpu_count() or 1
        params.print_timings = verbose
        _LOG.take_errors()
        ctx = mtmd.mtmd_init_from_file(str(self.path).encode(), llama.model, params)
        if not ctx:
            reason = _LOG.take_errors() or "see llama.cpp's log with verbose=True"
            raise BundleError(at(self.path, f"llama.cpp's mtmd cannot load it ({reason})"))
        self._lib, self._ctx = mtmd, ctx
        if not mtmd.mtmd_support_vision(ctx):
            self.close()
            raise BundleError(at(self.path, "the mmproj has no vision encoder"))
        self.n_embd = int(llama.n_embd())
        self._marker = mtmd.mtmd_default_marker()

    def encode(self, image: ImageInput) -> np.ndarray:
        """Image embeddings (image_tokens, n_embd) float32 of one image (a path, bytes, a
        Pillow image or a uint8 array; unreadable input raises ImageError)."""
        if self._ctx is None:
            raise BundleError(at(self.path, "the mtmd encoder is closed"))
        mtmd = self._lib
        pixels = np.ascontiguousarray(np.asarray(load_image(image), dtype=np.uint8))
        height, width = pixels.shape[:2]
        data = pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        bitmap = mtmd.mtmd_bitmap_init(width, height, data)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            if not bitmap or not chunks:
                raise MemoryError("mtmd could not allocate the image")
            text = mtmd.mtmd_input_text()
            text.text = self._marker
            text.text_len = len(self._marker)
            text.add_special = False
            text.parse_special = True
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            code = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1)
            if code != 0:
                raise BundleError(at(self.path, f"mtmd could not tokenize the image ({code})"))
            chunk = self._image_chunk(chunks)
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            code = mtmd.mtmd_encode_chunk(self._ctx, chunk)
            if code != 0:
                reason = _LOG.take_errors() or f"code {code}"
                raise BundleError(at(self.path, f"mtmd could not encode the image ({reason})"))
            out = mtmd.mtmd_get_output_embd(self._ctx)
            rows = np.ctypeslib.as_array(out, shape=(n_tokens * self.n_embd,))
            return rows.reshape(n_tokens, self.n_embd).copy()  # mtmd reuses its buffer
        finally:
            if chunks:
                mtmd.mtmd_input_chunks_free(chunks)
            if bitmap:
                mtmd.mtmd_bitmap_free(bitmap)

    def _image_chunk(self, chunks: Any) -> Any:
        mtmd = self._lib
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                return chunk
        raise BundleError(at(self.path, "mtmd made no image chunk from the image"))

    def info(self) -> dict[str, Any]:
        """Nothing beyond the provider: mtmd runs on llama.cpp's CPU backend."""
        return {}

    def close(self) -> None:
        """Free mtmd's context (idempotent)."""
        if self._ctx is not None:
            self._lib.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> MtmdVisionEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self.close()
