"""Selection on llama.cpp: the GGUF LLM for a precision, and the image path of a mode.

``hybrid`` takes the ONNX vision graph as ONNX Runtime's selection picks it (its
NPU form behind an NPU); ``mtmd`` takes the bundle's mmproj GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilevlm.errors import BundleError
from mobilevlm.manifest import Artefact, BundleManifest
from mobilevlm.runtime.ort.select import exported_artefact, vision_context, vision_graph

GGUF_PREFERENCE = ("q4_k_m", "q8_0", "f16")


@dataclass(frozen=True)
class GgufSelection:
    """What the llama.cpp backend runs: the LLM GGUF and, per ``mode``, the ONNX vision
    graph (hybrid) or the mmproj GGUF (mtmd)."""

    precision: str
    mode: str  # hybrid | mtmd
    llm: Artefact
    vision: Artefact
    vision_context: Artefact | None = None  # hybrid: the vision graph precompiled for the NPU

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        context = (self.vision_context,) if self.vision_context else ()
        return (self.llm, self.vision, *context)


def select_gguf(
    manifest: BundleManifest,
    precision: str | None = None,
    mode: str = "hybrid",
    vision_precision: str | None = None,
    accelerator: str | None = None,
) -> GgufSelection:
    """The GGUF LLM at ``precision`` (None: the fastest exported) and the image path of
    ``mode``: the ONNX vision graph chosen as :func:`select` does, or the mmproj."""
    llm = exported_artefact(
        manifest,
        "llm",
        precision,
        GGUF_PREFERENCE,
        "the bundle has no GGUF LLM for llama.cpp (export it with --formats gguf)",
        "GGUF LLM",
    )
    precision = llm.precision
    if mode == "mtmd":
        vision = next(iter(manifest.of("mmproj")), None)
        if vision is None:
            why = manifest.exporter.get("mmproj_skipped", "it was not exported")
            raise BundleError(f"the bundle has no mmproj for llama.cpp's mtmd: {why}")
    elif mode == "hybrid":
        vision = vision_graph(manifest, precision, vision_precision, accelerator)
    else:
        raise BundleError(f"unknown llama.cpp mode {mode!r} (expected hybrid or mtmd)")
    context = vision_context(manifest, vision, accelerator) if mode == "hybrid" else None
    return GgufSelection(precision, mode, llm, vision, context)
