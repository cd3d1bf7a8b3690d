"""The on-device runtime (torch-free): what a device needs to run a bundle.

``Pipeline`` (load once, then ask), ``LoadOptions`` (how to load, defaults in
one place), ``Conversation`` and ``Streaming``; underneath, loading (open,
verify, select), the memory planner and one subpackage per engine (``ort``:
ONNX Runtime; ``llamacpp``: llama.cpp). Nothing here imports torch,
transformers, the benchmark harness or the CLI.
"""

_EXPORTS = {
    "Pipeline": "pipeline",
    "Conversation": "pipeline",
    "Streaming": "pipeline",
    "LoadOptions": "options",
}


def __getattr__(name: str):
    """``from mobilevlm.runtime import Pipeline``: the embedded API, imported on first use."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
