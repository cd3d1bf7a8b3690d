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

from mobilevlm.errors import BundleError, at
from mobilevlm.files import cache_root
from mobilevlm.generation import decode_loop
from mobilevlm.generation.backend import CachingBackend
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.manifest import (
    GGUF_PRECISIONS,
    MANIFEST_FILE,
    PRECISIONS,
    BundleManifest,
)
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.select import (
    GGUF_PREFERENCE,
    PRECISION_PREFERENCE,
    GgufSelection,
    Selection,
    select,
    select_gguf,
)
from mobilevlm.runtime.verify import verify_files

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # KV cache positions when none are asked for (within the model's limit)


def backend_for(manifest: BundleManifest, options: LoadOptions) -> str:
    """The engine that runs ``options`` (their precision, backend or mode) on ``manifest``."""
    implied = options.implied_backend
    if implied:
        return implied
    return ONNXRUNTIME if manifest.precisions or not manifest.gguf_precisions else LLAMA_CPP


def _open(path: str | Path, verify: str, choose: Callable[[BundleManifest], Any]):
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
    options: LoadOptions | None = None,
    accelerator: str | None = None,
    **fields: Any,
) -> tuple[BundleManifest, Selection]:
    """Read and check a bundle for ONNX Runtime: its manifest and the verified artefacts."""
    options = LoadOptions.of(options, **fields)
    return _open(
        path,
        options.verify,
        lambda m: select(m, options.precision, options.vision_precision, accelerator),
    )


def open_gguf_bundle(
    path: str | Path,
    options: LoadOptions | None = None,
    accelerator: str | None = None,
    **fields: Any,
) -> tuple[BundleManifest, GgufSelection]:
    """Read and check a bundle for llama.cpp: its manifest and the verified artefacts."""
    options = LoadOptions.of(options, **fields)
    return _open(
        path,
        options.verify,
        lambda m: select_gguf(
            m, options.precision, options.mode, options.vision_precision, accelerator
        ),
    )


class LoadedBundle(CachingBackend, decode_loop.GeneratingBackend):
    """What a loaded bundle is on every engine: its directory, manifest, selected
    artefacts, the options it was loaded with, model config, tokenizer and the context its
    KV cache holds."""

    backend = ""  # the engine's name, as LoadOptions.backend spells it
    open_selection: Callable = staticmethod(open_bundle)  # manifest and selection, verified

    @classmethod
    def load(cls, path: str | Path, options: LoadOptions | None = None, **fields: Any):
        """Open, verify and load the bundle at ``path`` on this engine; ``fields`` override
        ``options``. ``precision`` None picks the fastest the bundle has for it."""
        options = LoadOptions.of(options, **fields)
        manifest, selection = cls.check(path, options)
        return cls(Path(path), manifest, selection, options)

    @classmethod
    def check(cls, path: str | Path, options: LoadOptions) -> tuple[BundleManifest, Any]:
        """What :meth:`load` would run, verified, without loading it (an NPU provider first
        in line selects the vision graph NPUs run)."""
        from mobilevlm.runtime.ort.providers import accelerator

        return cls.open_selection(path, options, accelerator(options.providers))

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

    @property
    def precision(self) -> str:
        return self.selection.precision

    @property
    def context_length(self) -> int:
        return self.context

    def runtime_info(self) -> dict[str, Any]:
        """What runs: the engine, its precision and mode, and the execution providers that
        run the vision graph and the decoder (what ``--json`` reports as ``runtime``)."""
        info = describe_run(
            self.backend, self.selection, self.vision_provider, self.decoder_provider
        )
        nodes = getattr(getattr(self, "vision", None), "placement", None)
        if nodes:  # recorded by NPU sessions: what ran where, and from which file
            from mobilevlm.runtime.ort import qnn

            info["vision_nodes"] = nodes
            info["vision_source"] = self.vision.source
            if self.vision_provider == qnn.QNN and qnn.simulated():
                info["vision_simulated"] = True  # its encode times are not a phone's
        return {**info, "context": self.context}

    @property
    def vision_provider(self) -> str:
        raise NotImplementedError

    @property
    def decoder_provider(self) -> str:
        raise NotImplementedError


def load_bundle(
    path: str | Path | None = None, options: LoadOptions | None = None, **fields: Any
) -> LoadedBundle:
    """The bundle at ``path`` (None: the built-in model's) loaded on the engine
    :func:`backend_for` picks: an :class:`~mobilevlm.runtime.ort.model.OnnxVLM` or a
    :class:`~mobilevlm.runtime.llamacpp.model.LlamaCppVLM`. ``fields`` override
    ``options``' fields."""
    options = LoadOptions.of(options, **fields)
    path = default_bundle(options) if path is None else Path(path)
    if backend_for(BundleManifest.read(path), options) == LLAMA_CPP:
        from mobilevlm.runtime.llamacpp.model import LlamaCppVLM

        return LlamaCppVLM.load(path, options)
    from mobilevlm.runtime.ort.model import OnnxVLM

    return OnnxVLM.load(path, options)


def check_bundle(
    path: str | Path, options: LoadOptions | None = None, **fields: Any
) -> dict[str, Any]:
    """Verify what :func:`load_bundle` would run, without loading it; what would run, as
    :meth:`LoadedBundle.runtime_info` says it (the providers first in line)."""
    from mobilevlm.runtime.ort.providers import resolve_providers, without_npus

    options = LoadOptions.of(options, **fields)
    chosen = backend_for(BundleManifest.read(path), options)
    providers = resolve_providers(options.providers)
    first, cpu_side = providers[0][0], without_npus(providers)[0][0]
    if chosen == LLAMA_CPP:
        from mobilevlm.runtime.llamacpp.model import LlamaCppVLM as Engine

        _, selection = Engine.check(path, options)
        vision = Engine.MTMD_PROVIDER if selection.mode == "mtmd" else first
        return describe_run(chosen, selection, vision, Engine.DECODER_PROVIDER)
    from mobilevlm.runtime.ort.model import OnnxVLM

    _, selection = OnnxVLM.check(path, options)
    return describe_run(chosen, selection, first, cpu_side)


def describe_run(
    backend: str, selection: Any, vision_provider: str, decoder_provider: str
) -> dict[str, Any]:
    """What runs, as ``--json`` reports it: the engine, its precision (and llama.cpp's
    mode), the vision graph's precision, and the providers of the vision graph and decoder."""
    mode = getattr(selection, "mode", None)
    return {
        "backend": backend,
        "precision": selection.precision,
        **({"mode": mode} if mode else {}),
        "vision_precision": selection.vision.precision,
        "vision_provider": vision_provider,
        "decoder_provider": decoder_provider,
    }


# ---------------------------------------------------------------------- the built-in model


def default_bundle_dir() -> Path:
    """Where the built-in model's bundle is cached: named after its trained parts' hash,
    so new weights in the repository give a new bundle instead of a stale one."""
    from mobilevlm.default_model import default_model_dir

    return cache_root() / "bundles" / default_model_dir().name.replace("default-model", "default")


def needed_precisions(options: LoadOptions) -> list[str]:
    """The precisions the built-in model's bundle must hold for ``options``: the one asked
    for, else the runtime's first choice on the engine asked for (int4 on ONNX Runtime,
    q4_k_m on llama.cpp)."""
    if options.precision:
        return [options.precision]
    if options.implied_backend == LLAMA_CPP:
        return [GGUF_PREFERENCE[0]]
    return [PRECISION_PREFERENCE[0]]


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


def default_bundle(
    options: LoadOptions | None = None,
    precisions: list[str] | None = None,
    progress: bool | None = None,
) -> Path:
    """The built-in model as a bundle holding ``precisions`` (default: those ``options``
    need) and, when ``options`` put QNN first, the vision graph for its NPU; exported into
    the cache directory when it lacks one of them (by
    :mod:`mobilevlm.default_model.bundle`); an export keeps what the bundle held and adds
    the rest. Building needs the [export] extra (torch); loading the bundle afterwards
    does not."""
    from mobilevlm.runtime.ort.providers import QNN, accelerator
    from mobilevlm.runtime.select import npu_vision

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
    npu_held = manifest is not None and npu_vision(manifest) is not None
    npu_wanted = accelerator(options.providers) == QNN
    if all(p in held for p in wanted) and (npu_held or not npu_wanted):
        return path
    from mobilevlm.default_model.bundle import export_default_bundle

    every = [p for p in PRECISIONS + GGUF_PRECISIONS if p in held or p in wanted]
    missing = [p for p in wanted if p not in held]
    missing += ["the NPU vision graph"] if npu_wanted and not npu_held else []
    log.warning("exporting the built-in model (%s) into %s, once", ", ".join(missing), path)
    npu = "qnn" if npu_held or npu_wanted else None
    return export_default_bundle(path, every, progress, npu=npu)
