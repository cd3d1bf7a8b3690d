"""Execution providers by name, in order of preference, with fallback to the CPU.

A user names providers the short way (``qnn``, ``nnapi``, ``coreml``,
``xnnpack``, ``openvino``, ``cuda``, ``cpu``) or by ONNX Runtime's own name.
Providers this onnxruntime build lacks are skipped with a log line, and the
CPU provider always closes the list, because ORT places every node a
provider cannot run (GroupQueryAttention on an NPU, say) on the last one. A
name ending in ``!`` is required: if it is missing, loading fails with
:class:`~mobilevlm.errors.ProviderError` instead of falling back; a required
NPU must also take the whole vision graph (the session is created with CPU
fallback disabled, and a graph it refuses is an error naming the nodes).

The options below are the documented starting points of each provider for
this model family (an NPU running the static-QDQ vision graph, the CPU the
rest). QNN comes either built into onnxruntime (Android) or as the
``onnxruntime-qnn`` plugin (:mod:`mobilevlm.runtime.ort.qnn`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext

from mobilevlm.errors import BundleError, ProviderError, at
from mobilevlm.runtime.ort import qnn

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
QNN = qnn.QNN
ALIASES = {
    "cpu": CPU,
    "qnn": QNN,
    "nnapi": "NnapiExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
}
NPUS = frozenset({QNN})  # run the vision graph only: the decoder stays on the CPU side
# provider options passed to onnxruntime (see each provider's documentation)
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    QNN: {},  # qnn.default_options(): the HTP backend library, burst clocks
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
# option keys that are session configuration entries, not provider options
SESSION_CONFIG_PREFIXES = ("ep.", "session.")
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
# A session's threads spin after its run, and a generation alternates sessions: the
# decoder's spinning threads took the cores the next image's vision graph needed, and the
# vision graph's took the prefill's. They stop at the end of each run (spinning within a
# run is kept). Built-in model, int4, 2 cores, 4 paired runs of 11 new images each:
# encode 58 -> 36 ms, time to first token 187 -> 124 ms, decode 128 -> 126 tok/s (noise)
SPINNING_STOP = "session.force_spinning_stop"
# weights repacked for MLAS's kernels on the intra-op threads, not one by one (the
# decoder's: see mobilevlm.runtime.ort.decoder)
PARALLEL_PREPACK = "session.prepack.enable_parallel"

Providers = list[tuple[str, dict[str, str]]]


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
    """The providers this process can use, the QNN plugin registered where installed."""
    import onnxruntime

    qnn.plugin_devices()
    return list(onnxruntime.get_available_providers())


def default_options(name: str) -> dict[str, str]:
    return qnn.default_options() if name == QNN else dict(DEFAULT_OPTIONS.get(name, {}))


def resolve_providers(
    requested: Sequence[str] = ("cpu",),
    available: Sequence[str] | None = None,
    options: Mapping[str, str] | None = None,
) -> Providers:
    """``(provider, options)`` pairs for ``InferenceSession(providers=...)``, CPU last.
    ``options`` override the defaults of the first provider that is not the CPU (keys
    starting ``ep.`` or ``session.`` are session entries: :func:`session_config`)."""
    available = available_providers() if available is None else list(available)
    chosen: list[str] = []
    for entry in requested:
        required = entry.endswith("!")
        name = canonical_name(entry.rstrip("!"))
        if name not in available:
            if required:
                hint = f" ({qnn.INSTALL_NPU_EXTRA})" if name == QNN else ""
                raise ProviderError(
                    f"execution provider {name} is required but this onnxruntime has only "
                    f"{', '.join(available)}{hint}"
                )
            log.info("execution provider %s is not available; skipping it", name)
            continue
        if name not in chosen:
            chosen.append(name)
    if CPU not in chosen:
        chosen.append(CPU)
    pairs = [(name, default_options(name)) for name in chosen]
    extra = {k: str(v) for k, v in (options or {}).items() if not _session_key(k)}
    if extra and pairs[0][0] != CPU:
        pairs[0][1].update(extra)
    return pairs


def _session_key(key: str) -> bool:
    return key.startswith(SESSION_CONFIG_PREFIXES)


def session_config(options: Mapping[str, str] | None) -> dict[str, str]:
    """The ``ep.*`` / ``session.*`` entries of ``options`` (the EP context cache, say)."""
    return {k: str(v) for k, v in (options or {}).items() if _session_key(k)}


def accelerator(requested: Sequence[str]) -> str | None:
    """The provider first in line when it is not the CPU (what selects a vision graph's
    accelerated form), else None."""
    first = resolve_providers(requested)[0][0]
    return first if first != CPU else None


def requires_npu(requested: Sequence[str]) -> bool:
    """Whether an NPU provider is named required (``qnn!``)."""
    return any(e.endswith("!") and canonical_name(e.rstrip("!")) in NPUS for e in requested)


def without_npus(providers: Providers) -> Providers:
    """The providers for the decoder: NPUs take the vision graph only (their ops exclude
    GroupQueryAttention and MatMulNBits, so a decoder session would be CPU with copies)."""
    return [(name, opts) for name, opts in providers if name not in NPUS]


def create_session(
    path: str | os.PathLike,
    providers: Providers,
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
    whole_graph: bool = False,
):
    """An ``InferenceSession`` with every graph optimization on and ``threads`` intra-op
    threads (None: onnxruntime's default, one per physical core). ``config``: session
    entries; ``whole_graph``: the first provider must take every node (an NPU asked for
    with ``!``), else :class:`~mobilevlm.errors.ProviderError` names the nodes it refuses."""
    entries = {SPINNING_STOP: "1", **(config or {})}
    if providers[0][0] == QNN:
        entries.setdefault(RECORD_PLACEMENT, "1")  # what ran where: placement()
    if whole_graph and providers[0][0] != CPU:
        entries[DISABLE_CPU_FALLBACK] = "1"
    try:
        return _session(path, providers, threads, entries)
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        if entries.get(DISABLE_CPU_FALLBACK) == "1" and "fallback" in str(exc).lower():
            raise ProviderError(at(path, _refusal(path, providers, threads, entries))) from exc
        raise BundleError(at(path, f"onnxruntime cannot load it ({exc})")) from exc


def _session(path, providers: Providers, threads: int | None, entries: dict[str, str]):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no memory pattern: from its second run on, a session allocated the pattern's block
    # beside the arena its first run had filled (the default model's vision session: 83
    # MiB of activations instead of 40, no faster: 21.2 against 22.9 ms an image)
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    # errors only: ORT warns about unused initializers; QNN reports (as errors) every node
    # it leaves to the CPU, which is what its fallback is for
    options.log_severity_level = 4 if providers[0][0] == QNN else 3
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    devices = qnn.plugin_devices() if providers[0][0] == QNN else ()
    if devices:
        # a plugin provider joins through its device; the CPU provider is ORT's own fallback
        others = [name for name, _ in providers[1:] if name != CPU]
        if others:
            log.info(
                "with the QNN plugin the session falls back to the CPU only: %s unused",
                ", ".join(others),
            )
        options.add_provider_for_devices(list(devices), providers[0][1])
        with qnn.stdout_to_stderr():
            session = onnxruntime.InferenceSession(str(path), sess_options=options)
    else:
        if entries.get(DISABLE_CPU_FALLBACK) == "1":  # ORT refuses a CPU it may not use
            providers = [(name, opts) for name, opts in providers if name != CPU]
        with qnn.stdout_to_stderr() if providers[0][0] == QNN else nullcontext():
            session = onnxruntime.InferenceSession(
                str(path),
                sess_options=options,
                providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers],
            )
    # a run that fails on an accelerator is an error, not a silent re-run on the CPU
    session.disable_fallback()
    return session


def _assigned(session) -> list:
    """onnxruntime's record of which provider runs which nodes ([] where not recorded)."""
    try:
        return session.get_provider_graph_assignment_info()
    except Exception:  # noqa: BLE001 - older onnxruntime, or placement not recorded
        return []


def placement(session) -> dict[str, int]:
    """Nodes per provider in ``session`` (after ORT's fusions), where it recorded them."""
    counts: Counter[str] = Counter()
    for subgraph in _assigned(session):
        counts[subgraph.ep_name] += len(subgraph.get_nodes())
    return dict(counts)


def refused_nodes(session, provider: str) -> list[tuple[str, str]]:
    """``(node name, op type)`` of every node ``session`` placed off ``provider``."""
    return [
        (node.name, node.op_type)
        for subgraph in _assigned(session)
        if subgraph.ep_name != provider
        for node in subgraph.get_nodes()
    ]


def main_provider(session) -> str:
    """The provider that runs most of ``session``'s nodes (its first one where placement
    is not recorded)."""
    counts = placement(session)
    return max(counts, key=counts.get) if counts else session.get_providers()[0]


def _refusal(path, providers: Providers, threads: int | None, entries: dict[str, str]) -> str:
    """Why a required provider refused the graph: load it again with fallback allowed and
    name the first nodes that went to the CPU."""
    name = providers[0][0]
    entries = {**entries, DISABLE_CPU_FALLBACK: "0", RECORD_PLACEMENT: "1"}
    try:
        refused = refused_nodes(_session(path, providers, threads, entries), name)
    except Exception:  # noqa: BLE001 - the error below says enough without the list
        refused = []
    listed = ", ".join(f"{n} ({op})" for n, op in refused[:5])
    more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
    nodes = f": it refuses {len(refused)} nodes: {listed}{more}" if refused else ""
    return (
        f"{name} is required (!) but does not take the whole graph{nodes}; "
        f"name it without '!' to run those nodes on the CPU"
    )
