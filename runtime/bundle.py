"""Opening a bundle: the manifest, file checks, and the artefacts for one precision.

Every load checks that each file the chosen precision needs exists with the
size the manifest records. Checksums cost a read of every byte, so they run
on request (``verify="full"``) or the first time a file is seen
(``"auto"``): the verified (size, mtime, sha256) is remembered in the cache
directory and a later load re-hashes only a file that changed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mobilevlm import decode_loop
from mobilevlm.bundle import Artefact, BundleManifest
from mobilevlm.errors import BundleError, at
from mobilevlm.files import cache_root, sha256_file
from mobilevlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

VERIFY_MODES = ("auto", "full", "size")
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
VERIFIED_FILE = "verified-files.json"
DEFAULT_CONTEXT = 2048  # KV cache positions when none are asked for (within the model's limit)


@dataclass(frozen=True)
class Selection:
    """The artefacts one pipeline runs: what ``precision`` means for each component."""

    precision: str
    vision: Artefact
    embeddings: Artefact
    decoder: Artefact

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        return (self.vision, self.embeddings, self.decoder)


def select(
    manifest: BundleManifest,
    precision: str | None = None,
    vision_precision: str | None = None,
    accelerator: bool = False,
) -> Selection:
    """Artefacts for ``precision`` (None: the fastest exported). The vision graph is
    ``vision_precision`` when given; else, with an ``accelerator`` (an NPU provider first in
    line), the int8 QDQ graph for int8/int4 decoders; else fp32."""
    available = manifest.precisions
    if precision is None:
        precision = next((p for p in PRECISION_PREFERENCE if p in available), None)
        if precision is None:
            raise BundleError(
                "the bundle has no ONNX decoder graph (it holds GGUF files: use the llama.cpp "
                "backend, or export with --formats onnx)"
            )
    decoder = manifest.find("decoder", precision)
    if decoder is None:
        raise BundleError(
            f"the bundle has no {precision} decoder (exported: {', '.join(available) or 'none'})"
        )
    vision = _vision_graph(manifest, precision, vision_precision, accelerator)
    embeddings = manifest.find("embeddings", "fp32" if precision == "fp32" else "fp16")
    embeddings = embeddings or next(iter(manifest.of("embeddings")), None)
    if embeddings is None:
        raise BundleError("the bundle lacks an embedding table")
    return Selection(precision, vision, embeddings, decoder)


GGUF_PREFERENCE = ("q4_k_m", "q8_0", "f16")


@dataclass(frozen=True)
class GgufSelection:
    """What the llama.cpp backend runs: the LLM GGUF and, per ``mode``, the ONNX vision
    graph (hybrid) or the mmproj GGUF (mtmd)."""

    precision: str
    mode: str  # hybrid | mtmd
    llm: Artefact
    vision: Artefact

    @property
    def artefacts(self) -> tuple[Artefact, ...]:
        return (self.llm, self.vision)


def select_gguf(
    manifest: BundleManifest,
    precision: str | None = None,
    mode: str = "hybrid",
    vision_precision: str | None = None,
    accelerator: bool = False,
) -> GgufSelection:
    """The GGUF LLM at ``precision`` (None: the fastest exported) and the image path of
    ``mode``: the ONNX vision graph chosen as :func:`select` does, or the mmproj."""
    available = manifest.gguf_precisions
    if precision is None:
        precision = next((p for p in GGUF_PREFERENCE if p in available), None)
        if precision is None:
            raise BundleError(
                "the bundle has no GGUF LLM for llama.cpp (export it with --formats gguf)"
            )
    llm = manifest.find("llm", precision)
    if llm is None:
        raise BundleError(
            f"the bundle has no {precision} GGUF LLM (exported: {', '.join(available) or 'none'})"
        )
    if mode == "mtmd":
        vision = next(iter(manifest.of("mmproj")), None)
        if vision is None:
            why = manifest.exporter.get("mmproj_skipped", "it was not exported")
            raise BundleError(f"the bundle has no mmproj for llama.cpp's mtmd: {why}")
    elif mode == "hybrid":
        vision = _vision_graph(manifest, precision, vision_precision, accelerator)
    else:
        raise BundleError(f"unknown llama.cpp mode {mode!r} (expected hybrid or mtmd)")
    return GgufSelection(precision, mode, llm, vision)


def _vision_graph(
    manifest: BundleManifest, precision: str, wanted: str | None, accelerator: bool
) -> Artefact:
    if wanted is not None:
        vision = manifest.find("vision", wanted)
        if vision is None:
            exported = ", ".join(a.precision for a in manifest.of("vision"))
            raise BundleError(f"the bundle has no {wanted} vision graph ({exported})")
        return vision
    wanted = VISION_ON_ACCELERATOR.get(precision, "int8") if accelerator else "fp32"
    vision = manifest.find("vision", wanted) or manifest.find("vision", "fp32")
    if vision is None:
        raise BundleError("the bundle lacks a vision graph")
    return vision


def _load_verified(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def verify_files(root: Path, artefacts: tuple[Artefact, ...], mode: str = "auto") -> None:
    """Raise :class:`BundleError` naming the first missing, truncated or corrupted file."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    record_path = cache_root() / VERIFIED_FILE
    record = _load_verified(record_path) if mode == "auto" else {}
    changed = False
    for artefact in artefacts:
        for entry in artefact.files:
            file = root / entry.path
            try:
                stat = file.stat()
            except FileNotFoundError:
                raise BundleError(at(file, "missing from the bundle")) from None
            if stat.st_size != entry.bytes:
                raise BundleError(
                    at(
                        file,
                        f"has {stat.st_size} bytes, the manifest says {entry.bytes} "
                        "(truncated or replaced; re-export the bundle)",
                    )
                )
            if mode == "size":
                continue
            key = str(file.resolve())
            seen = record.get(key)
            stamp = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": entry.sha256}
            if seen == stamp:
                continue
            log.info("checking sha256 of %s", file)
            if sha256_file(file) != entry.sha256:
                raise BundleError(at(file, "sha256 differs from the manifest (corrupted)"))
            record[key], changed = stamp, True
    if changed and mode == "auto":
        _save_verified(record_path, record)


def _save_verified(path: Path, record: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        log.warning("cannot record verified files in %s: %s", path, exc)


def open_gguf_bundle(
    path: str | Path,
    precision: str | None = None,
    mode: str = "hybrid",
    vision_precision: str | None = None,
    verify: str = "auto",
    accelerator: bool = False,
) -> tuple[BundleManifest, GgufSelection]:
    """Read and check a bundle for the llama.cpp backend."""
    return _open(
        path, verify, lambda m: select_gguf(m, precision, mode, vision_precision, accelerator)
    )


def _open(path: str | Path, verify: str, choose):
    """The manifest and ``choose(manifest)``'s selection, its files and tokenizer checked."""
    root = Path(path)
    manifest = BundleManifest.read(root)
    selection = choose(manifest)
    verify_files(root, selection.artefacts, verify)
    if not (root / manifest.tokenizer).is_file():
        raise BundleError(at(root / manifest.tokenizer, "missing from the bundle"))
    return manifest, selection


def open_bundle(
    path: str | Path,
    precision: str | None = None,
    vision_precision: str | None = None,
    verify: str = "auto",
    accelerator: bool = False,
) -> tuple[BundleManifest, Selection]:
    """Read and check a bundle: its manifest and the verified artefacts for ``precision``."""
    return _open(path, verify, lambda m: select(m, precision, vision_precision, accelerator))


class LoadedBundle(decode_loop.CachingBackend):
    """What a loaded bundle is on every backend: its directory, manifest, selected
    artefacts, model config, tokenizer and the context its KV cache holds."""

    def __init__(
        self, root: Path, manifest: BundleManifest, selection, context: int | None
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.selection = selection
        self.config = manifest.model
        self.tokenizer = Tokenizer.from_file(root / manifest.tokenizer)
        limit = self.config.llm.max_position_embeddings
        self.context = min(context or DEFAULT_CONTEXT, limit)

    @property
    def precision(self) -> str:
        return self.selection.precision

    @property
    def context_length(self) -> int:
        return self.context
