"""Execution providers by name, in order of preference, with fallback to the CPU.

A user names providers the short way (``qnn``, ``nnapi``, ``coreml``,
``xnnpack``, ``openvino``, ``cuda``, ``cpu``) or by ONNX Runtime's own name.
Providers this onnxruntime build lacks are skipped with a log line, and the
CPU provider always closes the list, because ORT places every node a
provider cannot run (GroupQueryAttention on an NPU, say) on the last one. A
name ending in ``!`` is required: if it is missing, loading fails with
:class:`~mobilevlm.errors.ProviderError` instead of falling back.

The options below are the documented starting points of each provider for
this model family (an NPU running the static-QDQ vision graph, the CPU the
rest); on this project's x86 machine only the CPU provider exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from mobilevlm.errors import BundleError, ProviderError, at

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
}
# provider options passed to onnxruntime (see each provider's documentation)
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    # Qualcomm Hexagon NPU: the HTP backend runs the static QDQ int8 graph
    "QNNExecutionProvider": {"backend_path": "libQnnHtp.so", "htp_performance_mode": "burst"},
    # Android NNAPI: keep fp32 math on the NPU unless the graph is quantized
    "NnapiExecutionProvider": {},
    # Apple Neural Engine / GPU / CPU through Core ML's ML Program format
    "CoreMLExecutionProvider": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"},
    "XnnpackExecutionProvider": {},
    "OpenVINOExecutionProvider": {"device_type": "CPU"},
    "CUDAExecutionProvider": {},
    "DmlExecutionProvider": {},
    CPU: {},
}


def canonical_name(name: str) -> str:
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    if key in DEFAULT_OPTIONS or key.endswith("ExecutionProvider"):
        return key
    raise ProviderError(
        f"unknown execution provider {name!r} (expected one of {', '.join(ALIASES)} "
        "or an onnxruntime provider name)"
    )


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def resolve_providers(
    requested: Sequence[str] = ("cpu",), available: Sequence[str] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """``(provider, options)`` pairs for ``InferenceSession(providers=...)``, CPU last."""
    available = available_providers() if available is None else list(available)
    chosen: list[str] = []
    for entry in requested:
        required = entry.endswith("!")
        name = canonical_name(entry.rstrip("!"))
        if name not in available:
            if required:
                raise ProviderError(
                    f"execution provider {name} is required but this onnxruntime build has only "
                    f"{', '.join(available)} (install the onnxruntime package built with it)"
                )
            log.info("execution provider %s is not available; skipping it", name)
            continue
        if name not in chosen:
            chosen.append(name)
    if CPU not in chosen:
        chosen.append(CPU)
    return [(name, dict(DEFAULT_OPTIONS.get(name, {}))) for name in chosen]


def create_session(
    path: str | os.PathLike, providers: list[tuple[str, dict[str, str]]], threads: int | None = None
):
    """An ``InferenceSession`` with every graph optimization on and ``threads`` intra-op
    threads (None: onnxruntime's default, one per physical core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    try:
        return onnxruntime.InferenceSession(
            str(path),
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        raise BundleError(at(path, f"onnxruntime cannot load it ({exc})")) from exc
