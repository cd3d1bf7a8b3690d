"""Selection on ONNX Runtime: which of a bundle's artefacts one pipeline runs, for a
precision and a device.

A precision names the decoder graph; the embedding table and the vision graph
follow from it and from which provider comes first: behind QNN, the bundle's QNN
form of the vision graph (static QDQ, with its precompiled EPContext model when
exported); behind another accelerator, the QDQ int8 graph; on the CPU, fp32.
llama.cpp's hybrid mode picks its vision graph the same way
(:mod:`mobilevlm.runtime.llamacpp.select`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mobilevlm.errors import BundleError
from mobilevlm.manifest import NPU_VISION_PRECISIONS, Artefact, BundleManifest
from mobilevlm.runtime.ort.qnn import QNN

PRECISION_PREFERENCE = ("int4", "int8", "fp32")  # the default: the fastest exported
# The static QDQ int8 vision graph is the NPU form: on an x86 CPU onnxruntime runs it
# about 3x slower than fp32 (176 vs 62 ms for the default model), so the CPU keeps fp32.
VISION_ON_ACCELERATOR = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8": "int8",
    "int4": "int8",
    "f16": "fp32",
}
EPCONTEXT = "epcontext"  # the format of a precompiled NPU model


@dataclass(frozen=True)
class NpuGraph:
    """One of the LLM's NPU graphs: its QDQ graph and, when exported, its precompiled form."""

    graph: Artefact
    context: Artefact | None

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        return (self.graph,) + ((self.context,) if self.context else ())


@dataclass(frozen=True)
class Selection:
    """The artefacts one pipeline runs: what ``precision`` means for each component."""

    precision: str
    vision: Artefact
    embeddings: Artefact
    decoder: Artefact
    vision_context: Artefact | None = None  # the vision graph precompiled for the NPU
    prefill: NpuGraph | None = None  # the LLM's prompt runs on the NPU
    decode: NpuGraph | None = None  # and its tokens
    mode: ClassVar[None] = None  # llama.cpp's selections name their image path

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        context = (self.vision_context,) if self.vision_context else ()
        npu = [a for g in (self.prefill, self.decode) if g for a in g.artefacts]
        cpu = () if self.decode else (self.decoder,)  # tokens on the NPU: not loaded
        return (self.vision, self.embeddings, *cpu, *context, *npu)


def exported_artefact(
    manifest: BundleManifest,
    component: str,
    precision: str | None,
    preference: tuple[str, ...],
    none_exported: str,
    what: str,
) -> Artefact:
    """The bundle's ``component`` at ``precision`` (None: the first of ``preference`` it
    holds); a BundleError saying ``none_exported`` when it holds none, or naming ``what``
    and the precisions it holds when it lacks ``precision``."""
    available = [a.precision for a in manifest.of(component)]
    if precision is None:
        precision = next((p for p in preference if p in available), None)
        if precision is None:
            raise BundleError(none_exported)
    found = manifest.find(component, precision)
    if found is None:
        raise BundleError(
            f"the bundle has no {precision} {what} (exported: {', '.join(available) or 'none'})"
        )
    return found


def select(
    manifest: BundleManifest,
    precision: str | None = None,
    vision_precision: str | None = None,
    accelerator: str | None = None,
    npu_parts: tuple[str, ...] | None = None,
) -> Selection:
    """Artefacts for ``precision`` (None: the fastest exported). The vision graph is
    ``vision_precision`` when given; else, behind an ``accelerator`` (the provider first in
    line, when it is not the CPU), its form for it (module docstring); else fp32. Behind
    QNN, the LLM's NPU graphs of ``npu_parts`` (None: those the bundle has) run its prompt
    and tokens; a part asked for by name that the bundle lacks is a BundleError."""
    decoder = exported_artefact(
        manifest,
        "decoder",
        precision,
        PRECISION_PREFERENCE,
        "the bundle has no ONNX decoder graph (it holds GGUF files: use the llama.cpp "
        "backend, or export with --formats onnx)",
        "decoder",
    )
    precision = decoder.precision
    wanted = npu_parts or ()
    vision_accelerator = accelerator if npu_parts is None or "vision" in wanted else None
    vision = vision_graph(manifest, precision, vision_precision, vision_accelerator)
    embeddings = manifest.find("embeddings", "fp32" if precision == "fp32" else "fp16")
    embeddings = embeddings or next(iter(manifest.of("embeddings")), None)
    if embeddings is None:
        raise BundleError("the bundle lacks an embedding table")
    context = vision_context(manifest, vision, vision_accelerator)
    if npu_parts is not None and accelerator == QNN:
        if "vision" in wanted and npu_vision(manifest) is None and vision_precision is None:
            raise BundleError(npu_missing("the vision graph"))
    llm = {}
    for part in ("prefill", "decode"):
        if accelerator == QNN and (npu_parts is None or part in wanted):
            llm[part] = npu_graph(manifest, part)
            if llm[part] is None and npu_parts is not None:
                raise BundleError(npu_missing(f"the LLM's {part} graph"))
    if llm.get("prefill") is None:
        llm = {}  # a decode graph reads the cache its prefill graph fills
    return Selection(precision, vision, embeddings, decoder, context, **llm)


def npu_missing(what: str) -> str:
    return (f"the bundle has no NPU form of {what}: export it with --npu qnn (--npu-parts "
            "chooses the parts), or leave it out of --npu-parts")  # fmt: skip


def npu_graph(manifest: BundleManifest, part: str) -> NpuGraph | None:
    """The LLM's ``part`` graph (prefill, decode) exported for QNN's HTP, if any."""
    graph = next((a for a in manifest.of(part) if a.format == "onnx"), None)
    if graph is None:
        return None
    return NpuGraph(graph, manifest.find(part, graph.precision, EPCONTEXT))


def npu_vision(manifest: BundleManifest) -> Artefact | None:
    """The vision graph exported for QNN's HTP (``export --npu qnn``), if any."""
    for precision in NPU_VISION_PRECISIONS:
        vision = manifest.find("vision", precision, "onnx")
        if vision is not None:
            return vision
    return None


def vision_graph(
    manifest: BundleManifest, precision: str, wanted: str | None, accelerator: str | None
) -> Artefact:
    if wanted is not None:
        vision = manifest.find("vision", wanted, "onnx")
        if vision is None:
            exported = ", ".join(a.precision for a in manifest.of("vision") if a.format == "onnx")
            raise BundleError(f"the bundle has no {wanted} vision graph ({exported})")
        return vision
    on_npu = npu_vision(manifest) if accelerator == QNN else None
    if on_npu is not None:
        return on_npu
    wanted = VISION_ON_ACCELERATOR.get(precision, "int8") if accelerator else "fp32"
    vision = manifest.find("vision", wanted, "onnx") or manifest.find("vision", "fp32", "onnx")
    if vision is None:
        raise BundleError("the bundle lacks a vision graph")
    return vision


def vision_context(
    manifest: BundleManifest, vision: Artefact, accelerator: str | None
) -> Artefact | None:
    """The precompiled form of ``vision`` for ``accelerator``: QNN's EPContext model."""
    if accelerator != QNN:
        return None
    return manifest.find("vision", vision.precision, EPCONTEXT)
