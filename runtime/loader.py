"""Loading: open a bundle, verify what the options select, and start the engine that runs it.

ONNX precisions (fp32, int8, int4) run on ONNX Runtime, GGUF ones (f16, q8_0,
q4_k_m) on llama.cpp, so a precision alone names the engine. Without one, the
backend asked for decides, else ONNX Runtime when the bundle has decoder
graphs and llama.cpp when it has only GGUF files. With no bundle path, the
built-in model's bundle is used, exported into the cache directory the first
time an option needs what it does not hold yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilevlm.errors import BudgetError, BundleError, at
from mobilevlm.files import cache_root
from mobilevlm.generation import decode_loop
from mobilevlm.generation.backend import CachingBackend, PixelEncoder
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.manifest import (
    GGUF_PRECISIONS,
    MANIFEST_FILE,
    NPU_PARTS,
    NPUS,
    PRECISIONS,
    BundleManifest,
)
from mobilevlm.runtime.engine import Engine, EngineMemory, engine_type
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.verify import verify_files

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # KV cache positions when none are asked for (within the model's limit)


def backend_for(manifest: BundleManifest, options: LoadOptions) -> str:
    """The engine that runs ``options`` (their precision, backend or mode) on ``manifest``."""
    implied = options.implied_backend
    if implied:
        return implied
    return ONNXRUNTIME if manifest.precisions or not manifest.gguf_precisions else LLAMA_CPP


class LoadedBundle(CachingBackend, PixelEncoder, decode_loop.GeneratingBackend):
    """What a loaded bundle is on every engine (the :class:`~mobilevlm.runtime.engine.Engine`
    contract's common part): its directory, manifest, selected artefacts, the options it
    was loaded with, model config, tokenizer and the context its KV cache holds. An
    engine provides ``select(manifest, options)`` (its artefacts for ``options``),
    ``describe_selection(selection, options)`` (what would run, without loading) and
    ``footprint(manifest, selection, options)`` (what that costs in memory)."""

    backend = ""  # the engine's name, as LoadOptions.backend spells it
    preference: tuple[str, ...] = ()  # the precisions it runs, the fastest first
    footprint: Callable[[BundleManifest, Any, LoadOptions], EngineMemory]

    @classmethod
    def select(cls, manifest: BundleManifest, options: LoadOptions) -> Any:
        raise NotImplementedError

    @classmethod
    def describe_selection(cls, selection: Any, options: LoadOptions) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def exported(cls, manifest: BundleManifest) -> list[str]:
        raise NotImplementedError

    @classmethod
    def check(
        cls, path: str | Path, options: LoadOptions, manifest: BundleManifest | None = None
    ) -> tuple[BundleManifest, Any]:
        """The manifest and the artefacts :meth:`load` would run, verified, nothing loaded."""
        root = Path(path)
        manifest = manifest or BundleManifest.read(root)
        selection = cls.select(manifest, options)
        verify_files(root, selection.artefacts, options.verify)
        if not (root / manifest.tokenizer).is_file():
            raise BundleError(at(root / manifest.tokenizer, "missing from the bundle"))
        return manifest, selection

    @classmethod
    def load(
        cls,
        path: str | Path,
        options: LoadOptions | None = None,
        manifest: BundleManifest | None = None,
        **fields: Any,
    ) -> LoadedBundle:
        """Open, verify and load the bundle at ``path`` on this engine; ``fields`` override
        ``options``. ``precision`` None picks the fastest the bundle has for it."""
        options = LoadOptions.of(options, **fields)
        manifest, selection = cls.check(path, options, manifest)
        return cls(Path(path), manifest, selection, options)

    @classmethod
    def describe(
        cls, path: str | Path, options: LoadOptions, manifest: BundleManifest | None = None
    ) -> dict[str, Any]:
        _, selection = cls.check(path, options, manifest)
        return cls.describe_selection(selection, options)

    @classmethod
    def memory(cls, manifest: BundleManifest, precision: str, options: LoadOptions) -> EngineMemory:
        """The engine's lines of the memory plan for what ``precision`` selects."""
        selection = cls.select(manifest, options.replace(precision=precision))
        return cls.footprint(manifest, selection, options)

    def __init__(
        self, root: Path, manifest: BundleManifest, selection, options: LoadOptions
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.selection = selection
        self.options = options
        self.config = manifest.model
        self.tokenizer = Tokenizer.from_file(root / manifest.tokenizer)
        limit = self.config.llm.max_position_embeddings
        self.context = min(options.context or DEFAULT_CONTEXT, limit)
        self.vision = None  # the engine's vision encoder; None once released

    @property
    def precision(self) -> str:
        return self.selection.precision

    @property
    def context_length(self) -> int:
        return self.context

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.exporter.get("random_weights"))

    @property
    def vision_key(self) -> str:
        vision = self.selection.vision
        return f"{vision.files[0].sha256[:16]}-{vision.precision}"

    def runtime_info(self) -> dict[str, Any]:
        """What runs: the engine, its precision and mode, and the execution providers that
        run the vision graph and the decoder (what ``--json`` reports as ``runtime``)."""
        info = describe_run(
            self.backend,
            self.selection,
            self.vision_provider,
            self.decoder_provider,
            self.prefill_provider,
        )
        if self.vision is not None:  # NPU sessions record what ran where, and from which file
            info.update(self.vision.info())
        return {**info, "context": self.context}

    def release_vision(self) -> None:
        """Free the vision encoder (memory); the next image loads it again."""
        if self.vision is not None:
            self.vision.close()
        self.vision = None

    def release_cache(self) -> None:
        """Empty the KV cache; an engine whose cache is resident from the load on (llama.cpp
        clears it at load) has nothing more to give back."""
        self.reset()

    def encode_pixels(self, pixels):
        if self.vision is None:
            self.vision = self._open_vision()
        return self.vision.encode(pixels)

    def _open_vision(self):
        raise NotImplementedError

    @property
    def vision_provider(self) -> str:
        raise NotImplementedError

    @property
    def decoder_provider(self) -> str:
        raise NotImplementedError

    @property
    def prefill_provider(self) -> str:
        """What runs the prompt: the decoder's provider unless a part of its own does."""
        return self.decoder_provider

    def close(self) -> None:
        self.release_vision()


def load_bundle(
    path: str | Path | None = None,
    options: LoadOptions | None = None,
    manifest: BundleManifest | None = None,
    **fields: Any,
) -> Engine:
    """The bundle at ``path`` (None: the built-in model's) loaded on the engine
    :func:`backend_for` picks. ``fields`` override ``options``' fields; ``manifest``, when
    the caller has read it already, is not read again."""
    options = LoadOptions.of(options, **fields)
    path = default_bundle(options) if path is None else Path(path)
    manifest = manifest or BundleManifest.read(path)
    return engine_type(backend_for(manifest, options)).load(path, options, manifest)


def open_bundle(
    path: str | Path, options: LoadOptions | None = None, **fields: Any
) -> tuple[BundleManifest, Any]:
    """Read and check a bundle for ONNX Runtime: its manifest and the verified artefacts."""
    return engine_type(ONNXRUNTIME).check(path, LoadOptions.of(options, **fields))


def open_gguf_bundle(
    path: str | Path, options: LoadOptions | None = None, **fields: Any
) -> tuple[BundleManifest, Any]:
    """Read and check a bundle for llama.cpp: its manifest and the verified artefacts."""
    return engine_type(LLAMA_CPP).check(path, LoadOptions.of(options, **fields))


def check_bundle(
    path: str | Path, options: LoadOptions | None = None, **fields: Any
) -> dict[str, Any]:
    """Verify what :func:`load_bundle` would run, without loading it; what would run, as
    the engine's ``runtime_info`` says it (the providers first in line)."""
    options = LoadOptions.of(options, **fields)
    manifest = BundleManifest.read(path)
    return engine_type(backend_for(manifest, options)).describe(path, options, manifest)


def describe_run(
    backend: str,
    selection: Any,
    vision_provider: str,
    decoder_provider: str,
    prefill_provider: str | None = None,
) -> dict[str, Any]:
    """What runs, as ``--json`` reports it: the engine, its precision (and llama.cpp's
    mode), the vision graph's precision, and the providers of the vision graph, the
    prompt's prefill (None: the decoder's) and the decoder's tokens."""
    return {
        "backend": backend,
        "precision": selection.precision,
        **({"mode": selection.mode} if selection.mode else {}),
        "vision_precision": selection.vision.precision,
        "vision_provider": vision_provider,
        "prefill_provider": prefill_provider or decoder_provider,
        "decoder_provider": decoder_provider,
    }


# ---------------------------------------------------------------------- the built-in model


# Bumped whenever the exporter writes the built-in model's artefacts differently, so that an
# upgrade exports them again instead of answering with the cached ones (2: issue 35's int4).
BUILT_IN_EXPORT_REVISION = 2


def default_bundle_dir() -> Path:
    """Where the built-in model's bundle is cached: named after its trained parts' hash and
    the exporter's revision, so new weights in the repository or a new export recipe give a
    new bundle instead of a stale one."""
    from mobilevlm.default_model import default_model_dir

    name = default_model_dir().name.replace("default-model", "default")
    return cache_root() / "bundles" / f"{name}-r{BUILT_IN_EXPORT_REVISION}"


def needed_precisions(options: LoadOptions) -> list[str]:
    """The precisions the built-in model's bundle must hold for ``options``: the one asked
    for, else the runtime's first choice on the engine asked for (int4 on ONNX Runtime,
    q4_k_m on llama.cpp)."""
    if options.precision:
        return [options.precision]
    return [engine_type(options.implied_backend or ONNXRUNTIME).preference[0]]


def _cached_default_manifest() -> BundleManifest | None:
    """The built-in model's cached bundle manifest (None when there is none)."""
    path = default_bundle_dir()
    if not (path / MANIFEST_FILE).is_file():
        return None
    try:
        return BundleManifest.read(path)
    except BundleError as exc:  # a damaged cache is rebuilt, not a dead end
        log.warning("rebuilding the built-in model's bundle: %s", exc)
        return None


# Peak RSS of building the built-in model's bundle on first use, the command included
# (`make demo` from an empty cache, the int4 bundle exported then the question answered in
# one process: 1.80 GiB with issue 35's calibrated int4, 1.76 GiB before it; 2026-12-05).
# Under a smaller memory budget the export is refused, not run: the budget covers the whole
# command.
DEFAULT_EXPORT_PEAK = 2 * 2**30
# ... and with the LLM's NPU graphs (their QDQ calibration holds the fp32 graph twice and
# the calibration runs' inputs): 3.62 GiB (`export --precisions int4 --npu qnn`, 2026-12-05)
NPU_LLM_EXPORT_PEAK = int(3.75 * 2**30)


def default_bundle(
    options: LoadOptions | None = None,
    precisions: list[str] | None = None,
    progress: bool | None = None,
) -> Path:
    """The built-in model's bundle directory: :func:`open_default_bundle`'s path."""
    return open_default_bundle(options, precisions, progress)[0]


def open_default_bundle(
    options: LoadOptions | None = None,
    precisions: list[str] | None = None,
    progress: bool | None = None,
) -> tuple[Path, BundleManifest]:
    """The built-in model as a bundle holding ``precisions`` (default: those ``options``
    need) and, when ``options`` put an NPU first, the NPU forms of the parts they run there
    (``npu_parts``: by default the vision graph and the LLM's prefill and decode graphs);
    exported into the cache directory when it lacks one of them (by
    :mod:`mobilevlm.default_model.bundle`); an export keeps what the bundle held and adds
    the rest; with its manifest. Building needs the [export] extra (torch); loading the
    bundle afterwards does not. Under a memory budget smaller than the export's peak, a
    missing part is refused with the command that adds it (:class:`BudgetError`)."""
    path = default_bundle_dir()
    options = options or LoadOptions()
    wanted = list(precisions or needed_precisions(options))
    if options.mode == "mtmd":  # known from the geometry alone: refuse before any export
        from mobilevlm.config import ClipVisionConfig
        from mobilevlm.default_model import default_config

        if default_config().vision.type != ClipVisionConfig.type:
            raise BundleError(
                "the built-in model cannot run on llama.cpp's mtmd: its vision tower is "
                "EfficientNet-Lite0 and mtmd runs CLIP ViTs only (use --mode hybrid)"
            )
    manifest = _cached_default_manifest()
    held = list(manifest.precisions + manifest.gguf_precisions) if manifest else []
    engine = engine_type(options.implied_backend or ONNXRUNTIME)
    npu_wanted = engine.vision_npu(options)
    npu_held = manifest.npu_vision_form() if manifest else None
    parts_held = npu_parts_held(manifest) if manifest else []
    # llama.cpp runs the LLM itself: only the vision graph can be the NPU's there
    runs = NPU_PARTS if engine.backend == ONNXRUNTIME else ("vision",)
    parts_wanted = [p for p in runs if options.on_npu(p)] if npu_wanted else []
    parts_missing = [p for p in parts_wanted if p not in parts_held]
    if manifest and all(p in held for p in wanted) and not parts_missing:
        return path, manifest
    missing = [p for p in wanted if p not in held]
    missing += [f"the {npu_wanted} {p} graph" for p in parts_missing]
    budget = options.memory_budget
    peak = (
        NPU_LLM_EXPORT_PEAK if {"prefill", "decode"} & set(parts_missing) else DEFAULT_EXPORT_PEAK
    )
    if budget is not None and budget < peak:
        flags = " ".join(f"--precision {p}" for p in wanted[:1])
        if parts_missing:
            flags += f" --provider {npu_wanted} --npu-parts {','.join(parts_wanted)}"
        raise BudgetError(
            f"the built-in model's bundle ({path}) has no {', '.join(missing)} yet, and "
            f"exporting it peaks at about {peak / 2**30:.1f} GiB, over the "
            f"memory budget of {budget / 2**20:,.0f} MiB: run `mobilevlm info {flags}` "
            "once first (it exports without a budget)",
            budget=budget,
            smallest=peak,
        )
    from mobilevlm.default_model.bundle import export_default_bundle

    every = [p for p in PRECISIONS + GGUF_PRECISIONS if p in held or p in wanted]
    log.warning("exporting the built-in model (%s) into %s, once", ", ".join(missing), path)
    parts = [p for p in NPU_PARTS if p in parts_held or p in parts_wanted]
    npu = (npu_held or npu_wanted or NPUS[0]) if parts else None
    export_default_bundle(path, every, progress, npu=npu, npu_parts=parts or None)
    return path, BundleManifest.read(path)


def npu_parts_held(manifest: BundleManifest) -> list[str]:
    """The parts (of :data:`~mobilevlm.manifest.NPU_PARTS`) ``manifest`` has an NPU form of."""
    held = ["vision"] if manifest.npu_vision_form() else []
    return held + [p for p in ("prefill", "decode") if manifest.of(p)]
