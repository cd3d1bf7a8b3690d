"""The vision encoder (+ projector) on ONNX Runtime: pixel values -> image embeddings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mobilevlm.errors import MobileVLMError
from mobilevlm.runtime.options import LoadOptions
from mobilevlm.runtime.ort.providers import (
    Providers,
    create_session,
    main_provider,
    placement,
    requires_npu,
    resolve_providers,
    session_config,
)

log = logging.getLogger(__name__)

PIXEL_VALUES = "pixel_values"  # fixed by mobilevlm.export.onnx_vision
SOC_KEYS = ("soc_model", "htp_arch")  # recorded on an EPContext artefact by the export


class OnnxVisionEncoder:
    """One vision session. ``context``: the graph precompiled for the NPU (an EPContext
    model), loaded first; where it does not load (another HTP architecture, an NPU that is
    absent), ``path`` is compiled instead."""

    def __init__(
        self,
        path: str | Path,
        providers: Providers,
        threads: int | None = None,
        context: str | Path | None = None,
        config: Mapping[str, str] | None = None,
        whole_graph: bool = False,
    ) -> None:
        self.session = None
        self.source = "graph"  # what the session was made from: graph | epcontext
        if context is not None:
            try:
                self.session = create_session(context, providers, threads, config, whole_graph)
                self.source = "epcontext"
            except MobileVLMError as exc:
                log.warning(
                    "the precompiled NPU model does not load here; compiling %s (%s)",
                    Path(path).name,
                    exc,
                )
        if self.session is None:
            self.session = create_session(path, providers, threads, config, whole_graph)

    @property
    def provider(self) -> str:
        """The provider that runs most of the graph."""
        return main_provider(self.session)

    @property
    def placement(self) -> dict[str, int]:
        """Nodes per provider, where the session recorded them (QNN sessions do)."""
        return placement(self.session)

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """(3, S, S) float32 -> (num_image_tokens, hidden) float32."""
        feed = {PIXEL_VALUES: np.ascontiguousarray(pixel_values[None], dtype=np.float32)}
        return self.session.run(None, feed)[0][0]


def compiled_for(context) -> dict[str, str]:
    """Provider options naming the SoC an EPContext artefact was compiled for (or none)."""
    details = context.details if context is not None else {}
    return {k: str(details[k]) for k in SOC_KEYS if k in details}


def open_vision_encoder(root: Path, selection, options: LoadOptions) -> OnnxVisionEncoder:
    """The selected vision graph (its precompiled form first) on the providers ``options``
    name; a required NPU (``qnn!``) must take all of it. The SoC the context was compiled
    for is the provider's default (``options`` may name another)."""
    context = selection.vision_context
    compiled_for = {
        k: str(context.details[k]) for k in SOC_KEYS if context and k in context.details
    }
    extra = {**compiled_for, **dict(options.provider_options)}
    return OnnxVisionEncoder(
        root / selection.vision.path,
        resolve_providers(options.providers, options=extra),
        options.threads,
        context=root / context.path if context is not None else None,
        config=session_config(extra),
        whole_graph=requires_npu(options.providers),
    )
