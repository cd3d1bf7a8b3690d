"""Qualcomm's Hexagon NPU through ONNX Runtime's QNN execution provider.

Two ways the provider reaches a process, one code path above them:

- the PyPI plugin ``onnxruntime-qnn`` (the ``[npu]`` extra; Windows on ARM,
  Linux on ARM, and x86-64, where its ``libQnnHtp.so`` *simulates* the HTP):
  registered once with ``onnxruntime.register_execution_provider_library`` and
  added to a session through its device (``add_provider_for_devices``);
- an onnxruntime built with QNN (Android's ``onnxruntime-android-qnn``), where
  ``QNNExecutionProvider`` is simply available and ``libQnnHtp.so`` is found on
  the device's library path.

``soc_model`` and ``htp_arch`` name the Snapdragon a context binary is compiled
for (:data:`SOCS`, from Qualcomm's SoC table); the other provider options
(``htp_performance_mode``, ``enable_htp_fp16_precision``, ...) pass through
unchanged, see ``docs/npu.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)

QNN = "QNNExecutionProvider"
NPU = "qnn"  # the NPU's name in bundle.json and in `export --npu qnn` (manifest.NPUS)
PLUGIN_PACKAGE = "onnxruntime-qnn"
HTP_LIBRARY = "libQnnHtp.so"  # resolved on the device's library path (Android)
INSTALL_NPU_EXTRA = "pip install 'mobilevlm-runtime[npu]'"


@dataclass(frozen=True)
class Soc:
    """A Snapdragon as the QNN HTP backend names it."""

    name: str  # Qualcomm's part number
    marketing: str
    soc_model: int
    htp_arch: int

    def provider_options(self) -> dict[str, str]:
        return {"soc_model": str(self.soc_model), "htp_arch": str(self.htp_arch)}


SOCS = {
    soc.name: soc
    for soc in (
        Soc("SM8350", "Snapdragon 888", 30, 68),
        Soc("SM8450", "Snapdragon 8 Gen 1", 36, 69),
        Soc("SM8475", "Snapdragon 8+ Gen 1", 42, 69),
        Soc("SM8550", "Snapdragon 8 Gen 2", 43, 73),
        Soc("SM8650", "Snapdragon 8 Gen 3", 57, 75),
        Soc("SM8750", "Snapdragon 8 Elite", 69, 79),
        Soc("SC8280X", "Snapdragon 8cx Gen 3", 37, 68),
        Soc("SC8380XP", "Snapdragon X Elite", 60, 73),
    )
}
DEFAULT_SOC = "SM8650"  # a current flagship phone's NPU (HTP v75)


def soc(name: str) -> Soc:
    """The SoC called ``name`` (its part number, case-insensitive); KeyError names the known."""
    key = name.strip().upper()
    if key not in SOCS:
        known = ", ".join(f"{s.name} ({s.marketing})" for s in SOCS.values())
        raise KeyError(f"unknown SoC {name!r} (known: {known})")
    return SOCS[key]


def plugin() -> ModuleType | None:
    """The ``onnxruntime_qnn`` module, or None where the package is not installed."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return None
    return onnxruntime_qnn


@functools.cache
def plugin_devices() -> tuple:
    """The QNN devices of the registered plugin (registering it on first call); empty where
    the plugin is not installed or this onnxruntime cannot load plugins."""
    module = plugin()
    if module is None:
        return ()
    import onnxruntime

    if not hasattr(onnxruntime, "register_execution_provider_library"):
        log.warning("onnxruntime %s cannot load provider plugins", onnxruntime.__version__)
        return ()
    try:
        onnxruntime.register_execution_provider_library(QNN, module.get_library_path())
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop CPU inference
        log.warning("cannot register the %s plugin: %s", PLUGIN_PACKAGE, exc)
        return ()
    return tuple(d for d in onnxruntime.get_ep_devices() if d.ep_name == QNN)


def plugin_version() -> str | None:
    """The plugin's version and the QNN SDK it ships, e.g. ``2.7.0 (QNN 2.45.0)``."""
    module = plugin()
    if module is None:
        return None
    info = getattr(module, "build_and_package_info", None)
    sdk = getattr(info, "qnn_version", None)
    return f"{module.__version__} (QNN {sdk})" if sdk else module.__version__


def simulated() -> bool:
    """Whether the HTP here is Qualcomm's x86-64 simulator (right numerics and placement,
    but nothing about a phone's latency or power)."""
    return plugin() is not None and platform.machine().lower() in ("x86_64", "amd64")


def default_options() -> dict[str, str]:
    """Provider options for the HTP: the plugin's own backend library where it is
    installed, else the device's; the NPU's fastest clock (what a one-shot image encode wants)."""
    module = plugin()
    backend = module.get_qnn_htp_path() if module is not None else HTP_LIBRARY
    return {"backend_path": backend, "htp_performance_mode": "burst"}


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """The HTP libraries print a banner on stdout when the first graph is prepared: keep
    stdout for the command's results (``--json``)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter)
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
