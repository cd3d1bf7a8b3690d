"""The ways one bundle can run, named the way `bench` and `eval` take them.

A variant is an engine and a precision: the PyTorch reference (``torch``), an
ONNX precision (``fp32``, ``int8``, ``int4``; ``int4/int8-vision`` swaps in the
bundle's int8 vision graph on the CPU: static QDQ for a CNN tower, dynamic int8 for a
ViT; ``qdq-vision``, its older name, still works; ``int4/qnn-vision`` runs the bundle's
QNN vision graph on the NPU, here the HTP simulator; ``int4/qnn-prefill`` the LLM's prompt
too, tokens decoded by the int4 decoder on the CPU; ``int4/qnn-all`` the tokens as well,
w8a16 on the NPU), a GGUF precision through this
runtime's llama.cpp backend (``q4_k_m`` = ``q4_k_m/hybrid``, ``q4_k_m/mtmd``),
or a peer: ``transformers`` (eager generation on the reference's weights) and
``llama-cpp-python`` (its own multimodal chat path on the bundle's GGUF and
mmproj). A variant that cannot run on a bundle says why instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mobilevlm.errors import MobileVLMError
from mobilevlm.manifest import GGUF_PRECISIONS, PRECISIONS, BundleManifest
from mobilevlm.runtime.llamacpp.select import GGUF_PREFERENCE, select_gguf
from mobilevlm.runtime.options import LLAMA_CPP, MODES, ONNXRUNTIME
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.select import PRECISION_PREFERENCE, npu_graph, npu_vision, select

TORCH = "torch"
TRANSFORMERS = "transformers"
LLAMA_CPP_PYTHON = "llama-cpp-python"
PEERS = (TRANSFORMERS, LLAMA_CPP_PYTHON)
INT8_VISION = "int8-vision"
QDQ_VISION = "qdq-vision"  # INT8_VISION's name before ViT towers got dynamic int8
QNN_VISION = "qnn-vision"  # the vision graph on QNN's HTP, all of it (qnn!)
# the LLM too: its prompt (the llm.npu split: tokens on the CPU at the variant's precision),
# or its prompt and tokens (w16a16 on the NPU: the precision names only the embedding table)
QNN_PREFILL, QNN_ALL = "qnn-prefill", "qnn-all"
QNN_PARTS = {
    QNN_VISION: ("vision",),
    QNN_PREFILL: ("vision", "prefill"),
    QNN_ALL: ("vision", "prefill", "decode"),
}


@dataclass(frozen=True)
class Variant:
    name: str  # as the user writes it, e.g. "int4", "q4_k_m/mtmd", "transformers"
    engine: str  # TORCH, a backend (ONNXRUNTIME, LLAMA_CPP), or a peer's name
    precision: str  # of the LLM weights
    mode: str | None = None  # llama.cpp: where image embeddings come from
    vision_precision: str | None = None  # None: the bundle's fp32 vision graph
    providers: tuple[str, ...] = ()  # empty: the bench's own (the CPU unless told otherwise)
    npu_parts: tuple[str, ...] | None = None  # with an NPU provider: what runs there

    @property
    def peer(self) -> bool:
        return self.engine in PEERS

    @property
    def uses_reference(self) -> bool:
        """Runs on the checkpoint's torch weights rather than the bundle's files."""
        return self.engine in (TORCH, TRANSFORMERS)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "engine": self.engine,
            "precision": self.precision,
            "mode": self.mode,
            "vision_precision": self.vision_precision,
            "providers": list(self.providers),
            "npu_parts": list(self.npu_parts) if self.npu_parts else None,
            "peer": self.peer,
        }


def parse_variant(name: str) -> Variant:
    """``"int4"`` -> the ONNX int4 variant, and so on (module docstring); ValueError else."""
    if name == TORCH:
        return Variant(TORCH, TORCH, "fp32")
    if name == TRANSFORMERS:
        return Variant(TRANSFORMERS, TRANSFORMERS, "fp32")
    if name == LLAMA_CPP_PYTHON:
        return Variant(LLAMA_CPP_PYTHON, LLAMA_CPP_PYTHON, "")  # the bundle's fastest GGUF
    precision, _, option = name.partition("/")
    if precision in PRECISIONS and option in ("", INT8_VISION, QDQ_VISION):
        return Variant(name, ONNXRUNTIME, precision, None, "int8" if option else None)
    if precision in PRECISIONS and option in QNN_PARTS:
        return Variant(
            name, ONNXRUNTIME, precision, providers=("qnn!",), npu_parts=QNN_PARTS[option]
        )
    if precision in GGUF_PRECISIONS and option in ("", *MODES):
        mode = option or "hybrid"
        return Variant(f"{precision}/{mode}", LLAMA_CPP, precision, mode)
    known = [TORCH, *PRECISIONS, "int4/int8-vision", *(f"int4/{o}" for o in QNN_PARTS)]
    known += GGUF_PRECISIONS
    known += ["q4_k_m/mtmd", *PEERS]
    raise MobileVLMError(f"unknown variant {name!r} (known forms: {', '.join(known)})")


def unavailable(variant: Variant, manifest: BundleManifest, checkpoint: str | None) -> str | None:
    """Why ``variant`` cannot run on this bundle, or None when it can. ``checkpoint``: where
    the torch variants load from (``bench.checkpoint_for``)."""
    if variant.uses_reference:
        return None if checkpoint is not None else "no checkpoint to load the torch weights from"
    if variant.engine == ONNXRUNTIME:
        if manifest.find("decoder", variant.precision) is None:
            return f"no {variant.precision} decoder in the bundle"
        if variant.vision_precision and manifest.find("vision", "int8") is None:
            return "no int8 vision graph in the bundle"
        if variant.providers and npu_vision(manifest) is None:
            return "no QNN vision graph in the bundle (export it with --npu qnn)"
        for part in (variant.npu_parts or ())[1:]:
            if npu_graph(manifest, part) is None:
                return f"no QNN {part} graph in the bundle (export it with --npu qnn)"
        if variant.providers and not qnn.plugin_devices():
            return f"no QNN provider here ({qnn.INSTALL_NPU_EXTRA})"
        return None
    gguf = variant.precision or fastest_gguf(manifest)
    if gguf is None or manifest.find("llm", gguf) is None:
        return f"no {variant.precision or 'GGUF'} LLM in the bundle"
    if (variant.mode == "mtmd" or variant.engine == LLAMA_CPP_PYTHON) and not manifest.find(
        "mmproj", "f16"
    ):
        reason = manifest.exporter.get("mmproj_skipped", "the bundle has none")
        return f"needs an mmproj: {reason}"
    return None


def fastest_gguf(manifest: BundleManifest) -> str | None:
    return next((p for p in GGUF_PREFERENCE if manifest.find("llm", p)), None)


def every_variant(manifest: BundleManifest) -> list[Variant]:
    """All the forms of this bundle, reference first, peers last (some may be unavailable)."""
    names = [TORCH, *manifest.precisions]
    if manifest.find("vision", "int8"):
        names += [f"{p}/{INT8_VISION}" for p in manifest.precisions if p != "fp32"]
    if npu_vision(manifest):
        names += [f"{p}/{QNN_VISION}" for p in manifest.precisions if p != "fp32"]
    for precision in manifest.gguf_precisions:
        names += [f"{precision}/{mode}" for mode in MODES]
    return [parse_variant(n) for n in names + list(PEERS)]


def disk_bytes(
    variant: Variant, manifest: BundleManifest, root: Path, checkpoint: str | None
) -> int | None:
    """Bytes on disk of the files the variant loads (the checkpoint's for the reference;
    None while there is no checkpoint directory)."""
    if variant.uses_reference:
        if checkpoint is None or not Path(checkpoint).is_dir():  # the built-in model, unbuilt
            return None
        return sum(f.stat().st_size for f in Path(checkpoint).rglob("*") if f.is_file())
    if variant.engine == ONNXRUNTIME:
        accelerator = qnn.QNN if variant.providers else None
        selection = select(
            manifest, variant.precision, variant.vision_precision, accelerator, variant.npu_parts
        )
    else:
        mode = "mtmd" if variant.engine == LLAMA_CPP_PYTHON else variant.mode
        selection = select_gguf(manifest, variant.precision or fastest_gguf(manifest), mode)
    tokenizer = (root / manifest.tokenizer).stat().st_size
    return tokenizer + sum(a.bytes for a in selection.artefacts)


def variant_names(
    manifest: BundleManifest,
    precisions: Sequence[str] = (),
    modes: Sequence[str] = (),
    precision: str | None = None,
    mode: str | None = None,
) -> list[str]:
    """The variants ``precisions`` x ``modes`` name (ONNX precisions have no modes);
    default precision: ``precision``, else the fastest the bundle has (a GGUF one when
    modes are named); default mode: ``mode``, else hybrid."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise MobileVLMError(f"unknown mode {unknown[0]!r} (expected {', '.join(MODES)})")
    if not precisions:
        if precision:
            precisions = [precision]
        else:
            onnx = [p for p in PRECISION_PREFERENCE if p in manifest.precisions]
            fastest = onnx[0] if onnx and not modes else fastest_gguf(manifest)
            precisions = [fastest] if fastest else []
    modes = list(modes) or [mode or "hybrid"]
    names: list[str] = []
    for p in precisions:
        names += [p] if p in PRECISIONS else [f"{p}/{m}" for m in modes]
    return names
