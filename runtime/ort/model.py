"""A bundle running on ONNX Runtime: preprocess -> vision graph -> splice -> decoder graph.

:class:`OnnxVLM` implements the :class:`~mobilevlm.runtime.engine.Engine` contract, so
generation (template, tokenizer, sampler, stop strings, streaming) is the same code
the torch reference runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.loader import LoadedBundle, describe_run
from mobilevlm.runtime.options import ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.ort import footprint
from mobilevlm.runtime.ort.decoder import OnnxDecoder
from mobilevlm.runtime.ort.embeddings import EmbeddingTable
from mobilevlm.runtime.ort.providers import accelerator, resolve_providers, without_npus
from mobilevlm.runtime.ort.select import PRECISION_PREFERENCE, Selection, select
from mobilevlm.runtime.ort.static_decoder import SplitDecoder, open_split_decoder
from mobilevlm.runtime.ort.vision import OnnxVisionEncoder, open_vision_encoder, vision_npu


class OnnxVLM(LoadedBundle):
    """A loaded bundle at one precision, with its KV cache allocated for ``context`` positions."""

    backend = ONNXRUNTIME
    preference = PRECISION_PREFERENCE
    footprint = staticmethod(footprint.engine_memory)

    @classmethod
    def exported(cls, manifest: BundleManifest) -> list[str]:
        return list(manifest.precisions)

    @classmethod
    def select(cls, manifest: BundleManifest, options: LoadOptions) -> Selection:
        """The vision graph: its NPU form behind an NPU, int8 QDQ behind another accelerator."""
        return select(
            manifest,
            options.precision,
            options.vision_precision,
            accelerator(options.providers),
            options.npu_parts,
        )

    @classmethod
    def describe_selection(cls, selection: Selection, options: LoadOptions) -> dict[str, Any]:
        providers = resolve_providers(options.providers)
        first, cpu = providers[0][0], without_npus(providers)[0][0]
        return describe_run(
            cls.backend,
            selection,
            first if options.on_npu("vision") else cpu,
            first if selection.decode else cpu,
            first if selection.prefill else cpu,
        )

    @classmethod
    def vision_npu(cls, options: LoadOptions) -> str | None:
        return vision_npu(options)

    def __init__(
        self, root: Path, manifest: BundleManifest, selection: Selection, options: LoadOptions
    ) -> None:
        super().__init__(root, manifest, selection, options)
        self.providers = resolve_providers(options.providers)
        self.threads = options.threads
        self.vision: OnnxVisionEncoder | None = None
        if options.vision_resident:  # else loaded for each image, after the decoder
            self.vision = self._open_vision()
        if selection.prefill is not None:  # the prompt (and the tokens) on the NPU
            self.decoder = open_split_decoder(
                root, selection, options, self.config.llm, self._cpu_decoder
            )
            self.context = self.decoder.cache.capacity
            self.prefill_whole = True
        else:
            self.decoder = self._cpu_decoder(self.context)
        # read row by row from its file: none of the table is resident
        shape = (self.config.llm.vocab_size, self.config.llm.hidden_size)
        self.table = EmbeddingTable(root / selection.embeddings.path, shape)

    def _cpu_decoder(self, context: int) -> OnnxDecoder:
        return OnnxDecoder(
            self.root / self.selection.decoder.path,
            self.config.llm,
            context,
            without_npus(self.providers),
            self.threads,
            quantized=self.selection.decoder.precision != "fp32",
        )

    @property
    def vision_provider(self) -> str:
        """The provider that runs most of the vision graph (where the session is released:
        the one it will load on)."""
        if self.vision is not None:
            return self.vision.provider
        on_npu = self.options.on_npu("vision")
        return (self.providers if on_npu else without_npus(self.providers))[0][0]

    @property
    def prefill_provider(self) -> str:
        if isinstance(self.decoder, SplitDecoder):
            return self.decoder.prefill_provider
        return self.decoder_provider

    @property
    def decoder_provider(self) -> str:
        if isinstance(self.decoder, SplitDecoder):
            return self.decoder.decode_provider
        return self.decoder.session.get_providers()[0]

    def runtime_info(self) -> dict[str, Any]:
        info = super().runtime_info()
        if isinstance(self.decoder, SplitDecoder):
            info.update(self.decoder.info())
        return info

    @property
    def variant(self) -> str:
        """What runs, in one word: the precision names the backend (ONNX Runtime)."""
        return self.precision

    def _open_vision(self) -> OnnxVisionEncoder:
        return open_vision_encoder(self.root, self.selection, self.options)

    def release_cache(self) -> None:
        """Empty the KV cache and free its buffers (they fill again from nothing)."""
        self.decoder.release_cache()
        self._history = []

    def embed_tokens(self, ids: Sequence[int]) -> np.ndarray:
        return self.table[list(ids)]

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append raw input embeddings (seq, hidden) to the cache; last position's logits."""
        self._history = None  # positions no longer identified by tokens: no reuse
        return self.decoder.forward(embeds)

    def _truncate(self, length: int) -> None:
        self.decoder.cache.length = min(length, self.decoder.cache.length)

    def _run_tokens(self, ids: list) -> np.ndarray:
        return self.decoder.forward(self.embed_tokens(ids))

    def _run_embeddings(self, rows: np.ndarray) -> np.ndarray:
        return self.decoder.forward(rows)

    def _step(self, token: int) -> np.ndarray:
        return self.decoder.decode(self.table[token])
