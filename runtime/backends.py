"""Which backend runs a bundle: ONNX Runtime or llama.cpp, chosen from the precision asked.

ONNX precisions (fp32, int8, int4) run on ONNX Runtime, GGUF ones (f16, q8_0,
q4_k_m) on llama.cpp, so a precision alone names the backend. Without one, the
``backend`` asked for decides, else ONNX Runtime when the bundle has decoder
graphs and llama.cpp when it has only GGUF files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mobilevlm.bundle import GGUF_PRECISIONS, PRECISIONS, BundleManifest
from mobilevlm.errors import BundleError

ONNXRUNTIME = "onnxruntime"
LLAMA_CPP = "llama.cpp"
BACKENDS = (ONNXRUNTIME, LLAMA_CPP)


def backend_for(
    manifest: BundleManifest, precision: str | None = None, backend: str | None = None
) -> str:
    """The backend that runs ``precision`` (or the bundle's default) of ``manifest``."""
    if backend is not None and backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r} (expected {' or '.join(BACKENDS)})")
    implied = ONNXRUNTIME if precision in PRECISIONS else LLAMA_CPP if precision else None
    if precision is not None and precision not in PRECISIONS + GGUF_PRECISIONS:
        raise BundleError(
            f"unknown precision {precision!r} (ONNX: {', '.join(PRECISIONS)}; "
            f"GGUF: {', '.join(GGUF_PRECISIONS)})"
        )
    if implied and backend and implied != backend:
        raise BundleError(f"{precision} is a precision of {implied}, not of {backend}")
    if implied or backend:
        return implied or backend
    return ONNXRUNTIME if manifest.precisions or not manifest.gguf_precisions else LLAMA_CPP


def load_bundle(
    path: str | Path,
    precision: str | None = None,
    backend: str | None = None,
    mode: str = "hybrid",
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    context: int | None = None,
    vision_precision: str | None = None,
    verify: str = "auto",
):
    """The bundle at ``path`` loaded on the backend :func:`backend_for` picks: an
    :class:`~mobilevlm.runtime.onnx_model.OnnxVLM` or a
    :class:`~mobilevlm.runtime.llama_cpp_model.LlamaCppVLM`."""
    chosen = backend_for(BundleManifest.read(path), precision, backend)
    if chosen == LLAMA_CPP:
        from mobilevlm.runtime.llama_cpp_model import LlamaCppVLM

        return LlamaCppVLM.load(
            path, precision, mode, providers, threads, context, vision_precision, verify
        )
    from mobilevlm.runtime.onnx_model import OnnxVLM

    return OnnxVLM.load(path, precision, providers, threads, context, vision_precision, verify)


def check_bundle(
    path: str | Path,
    precision: str | None = None,
    backend: str | None = None,
    mode: str = "hybrid",
    providers: Sequence[str] = ("cpu",),
    vision_precision: str | None = None,
) -> str:
    """Verify what :func:`load_bundle` would run, without loading it; returns the backend."""
    chosen = backend_for(BundleManifest.read(path), precision, backend)
    if chosen == LLAMA_CPP:
        from mobilevlm.runtime.llama_cpp_model import LlamaCppVLM

        LlamaCppVLM.check(path, precision, mode, vision_precision, providers)
    else:
        from mobilevlm.runtime.onnx_model import OnnxVLM

        OnnxVLM.check(path, precision, vision_precision, providers)
    return chosen
