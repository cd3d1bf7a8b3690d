"""The built-in model exported as a bundle: what the runtime loads when it is given none.

The runtime (torch-free) only finds the cached bundle and asks for what it
lacks; building it assembles the model and exports it, which needs the
[export] extra (torch), so those imports wait until a build is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mobilevlm.errors import MissingDependencyError
from mobilevlm.manifest import DEFAULT_MODEL_SOURCE, GGUF_PRECISIONS, PRECISIONS

INSTALL_EXPORT_EXTRA = "pip install torch==2.13.0 && pip install 'mobilevlm-runtime[export]'"


def export_default_bundle(
    target: Path,
    precisions: Sequence[str],
    progress: bool | None = None,
    npu: str | None = None,
    npu_parts: Sequence[str] | None = None,
) -> Path:
    """Export the built-in model into ``target`` with ``precisions`` (ONNX and GGUF ones
    mixed) and the graphs of ``npu_parts`` (None: all) for ``npu``, replacing what is there
    atomically."""
    try:
        from mobilevlm.default_model.assemble import load_default_model
        from mobilevlm.export.bundle_export import export_bundle
        from mobilevlm.export.profile import StageProfile
    except ImportError as exc:
        raise MissingDependencyError(
            f"building the built-in model's bundle needs the [export] extra ({exc.name} is "
            f"missing): {INSTALL_EXPORT_EXTRA}; or pass the path of an exported bundle"
        ) from exc
    formats = [
        name
        for name, members in (("onnx", PRECISIONS), ("gguf", GGUF_PRECISIONS))
        if set(precisions) & set(members)
    ]
    profile = StageProfile("assembly")
    export_bundle(
        load_default_model(),
        target,
        list(precisions),
        formats,
        source=DEFAULT_MODEL_SOURCE,
        progress=progress,
        npu=npu,
        npu_parts=npu_parts,
        profile=profile,
        consume=True,
    )
    return target
