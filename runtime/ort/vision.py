"""The vision encoder (+ projector) on ONNX Runtime: pixel values -> image embeddings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.errors import MobileVLMError
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.graph_io import PIXEL_VALUES
from mobilevlm.runtime.ort.providers import (
    Providers,
    accelerator,
    create_session,
    main_provider,
    placement,
    requires_npu,
    resolve_providers,
    session_config,
    without_npus,
)

log = logging.getLogger(__name__)

SOC_KEYS = ("soc_model", "htp_arch")  # recorded on an EPContext artefact by the export
CONTEXT_ENABLE, CONTEXT_FILE = "ep.context_enable", "ep.context_file_path"
CONTEXT_KEYS = "ep.context_"  # session entries that make a session write an EPContext model


class OnnxVisionEncoder:
    """One vision session (:func:`open_precompiled`: ``context``, the graph precompiled for
    the NPU, first)."""

    def __init__(
        self,
        path: str | Path,
        providers: Providers,
        threads: int | None = None,
        context: str | Path | None = None,
        config: Mapping[str, str] | None = None,
        whole_graph: bool = False,
    ) -> None:
        self.session, self.source = open_precompiled(
            path, providers, threads, context, config, whole_graph
        )

    @property
    def provider(self) -> str:
        """The provider that runs most of the graph."""
        return main_provider(self.session)

    @property
    def placement(self) -> dict[str, int]:
        """Nodes per provider, where the session recorded them (QNN sessions do)."""
        return placement(self.session)

    def info(self) -> dict[str, Any]:
        """What ``runtime_info`` adds for this session: on an NPU, the nodes per provider,
        the file it was made from, and whether the NPU is a simulator (its times then say
        nothing of a phone's)."""
        nodes = self.placement
        if not nodes:
            return {}
        info = {"vision_nodes": nodes, "vision_source": self.source}
        if self.provider == qnn.QNN and qnn.simulated():
            info["vision_simulated"] = True
        return info

    def close(self) -> None:
        self.session = None

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """(3, S, S) float32 -> (num_image_tokens, hidden) float32."""
        feed = {PIXEL_VALUES: np.ascontiguousarray(pixel_values[None], dtype=np.float32)}
        return self.session.run(None, feed)[0][0]


def open_precompiled(
    path: str | Path,
    providers: Providers,
    threads: int | None = None,
    context: str | Path | None = None,
    config: Mapping[str, str] | None = None,
    whole_graph: bool = False,
) -> tuple[Any, str]:
    """A session and what it was made from (graph | epcontext | cache). ``context``: the
    graph precompiled for the NPU (an EPContext model), loaded first; where it does not
    load (another HTP architecture, an NPU that is absent), ``path`` is compiled instead.
    With ``ep.context_enable=1`` and ``ep.context_file_path=F`` in ``config``, F is a
    cache: loaded when it exists, else written by the compilation."""
    config = dict(config or {})
    cache = config.get(CONTEXT_FILE) if config.get(CONTEXT_ENABLE) == "1" else None
    plain = {k: v for k, v in config.items() if not k.startswith(CONTEXT_KEYS)}
    for source, model in (("epcontext", context), ("cache", cache)):
        if model is None or not Path(model).is_file():
            continue
        try:
            return create_session(model, providers, threads, plain, whole_graph), source
        except MobileVLMError as exc:
            log.warning("%s does not load here; compiling %s (%s)", model, Path(path).name, exc)
    if cache is not None and Path(cache).exists():  # ORT will not overwrite it
        config = plain
    return create_session(path, providers, threads, config, whole_graph), "graph"


def vision_npu(options: LoadOptions) -> str | None:
    """The NPU whose form of the vision graph ``options`` ask for (its name in the
    manifest, as ``export --npu`` writes it), or None."""
    return qnn.NPU if accelerator(options.providers) == qnn.QNN else None


def compiled_for(context) -> dict[str, str]:
    """Provider options naming the SoC an EPContext artefact was compiled for (or none)."""
    details = context.details if context is not None else {}
    return {k: str(details[k]) for k in SOC_KEYS if k in details}


def vision_providers(context, options: LoadOptions) -> tuple[Providers, dict[str, str]]:
    """The providers and session entries of a bundle's vision sessions: ``options``' own,
    with the SoC ``context`` (an EPContext artefact, or None) was compiled for as the
    default, so that every HTP session of the bundle is made for the same chip."""
    extra = {**compiled_for(context), **dict(options.provider_options)}
    return resolve_providers(options.providers, options=extra), session_config(extra)


def open_vision_encoder(root: Path, selection, options: LoadOptions) -> OnnxVisionEncoder:
    """The selected vision graph (its precompiled form first) on the providers ``options``
    name (the CPU where its NPU parts leave the vision graph out); a required NPU
    (``qnn!``) must take all of it."""
    context = selection.vision_context
    providers, config = vision_providers(context, options)
    on_npu = options.on_npu("vision")
    return OnnxVisionEncoder(
        root / selection.vision.path,
        providers if on_npu else without_npus(providers),
        options.threads,
        context=root / context.path if context is not None else None,
        config=config,
        whole_graph=on_npu and requires_npu(options.providers),
    )
