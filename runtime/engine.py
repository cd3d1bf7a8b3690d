"""The engine contract: everything the Pipeline, the CLI, the server and the benchmarks may
ask of an engine, and everything the loader and the memory planner may ask of its class.

Two halves, as ggml's backend interface or ONNX Runtime's execution providers have them:

- :class:`Engine`, a loaded model: image in, embeddings out; a prompt prefilled into its
  own KV cache (reusing the prefix it already holds); one token decoded at a time; what
  ran each part; the vision encoder released on request.
- :class:`EngineType`, the class: which precisions of a bundle it runs, what it would
  run without loading it (verified), what that costs in memory (its lines of the plan),
  and loading.

ONNX Runtime (:class:`~mobilevlm.runtime.ort.model.OnnxVLM`), llama.cpp
(:class:`~mobilevlm.runtime.llamacpp.model.LlamaCppVLM`) and the torch reference
(``mobilevlm.reference.backend.TorchBackend``) implement it; ``tests/test_engine_contract.py``
holds each to it. Engine-specific things (execution providers, the QNN plugin, mtmd)
stay inside the engine's package: callers see only this contract.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mobilevlm.config import ModelConfig
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME

if TYPE_CHECKING:
    from mobilevlm.manifest import BundleManifest
    from mobilevlm.runtime.options import LoadOptions

# the keys every engine's runtime_info() has (what --json reports as "runtime")
RUNTIME_KEYS = (
    "backend",
    "precision",
    "vision_provider",
    "prefill_provider",
    "decoder_provider",
    "context",
)


@runtime_checkable
class Engine(Protocol):
    """A loaded model. Calls come from one thread at a time (the Pipeline's lock)."""

    config: ModelConfig
    tokenizer: Tokenizer | None
    last_prefill: int  # positions the last prefill_prompt ran; the rest came from its cache

    @property
    def context_length(self) -> int:
        """Positions the KV cache holds."""

    @property
    def variant(self) -> str:
        """What runs, in one word: "int4", "q4_k_m/hybrid", "torch"."""

    @property
    def vision_key(self) -> str | None:
        """Identity of what turns pixels into embeddings (the vision graph's hash and
        precision), for embeddings kept on disk; None: not to be kept on disk."""

    @property
    def random_weights(self) -> bool:
        """True for a test model of random weights (its answers are meaningless)."""

    def image_input(self, image: Image.Image) -> np.ndarray:
        """What :meth:`encode_pixels` takes, from a decoded upright RGB image: the
        preprocessed (3, size, size) float32 pixels, or the RGB array where the encoder
        preprocesses itself (mtmd). Small: it also keys the embeddings cache."""

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(num_image_tokens, hidden) float32 image embeddings of :meth:`image_input`."""

    def encode_image(self, image: Any) -> np.ndarray:
        """:meth:`encode_pixels` of any image input (path, bytes, Pillow image, array)."""

    def prefill_prompt(
        self, input_ids: Sequence[int], image_embeds: np.ndarray | None
    ) -> np.ndarray:
        """Make the KV cache hold exactly this prompt (IMAGE_TOKEN_ID marks where
        ``image_embeds`` go), reusing a cached prefix; logits (vocab,) of its last position
        (the array may be reused by the next call)."""

    def decode(self, token: int) -> np.ndarray:
        """Append one token; logits (vocab,) of its position."""

    def reset(self) -> None:
        """Empty the KV cache: the next prompt is prefilled whole."""

    def release_vision(self) -> None:
        """Free the vision encoder (memory); the next image loads it again."""

    def release_cache(self) -> None:
        """Empty the KV cache and free what it holds, where the engine can (the Pipeline
        does before it loads a released vision encoder again, so the two never add up)."""

    def runtime_info(self) -> dict[str, Any]:
        """What runs each part: at least :data:`RUNTIME_KEYS` (the engine, its precision,
        the providers that run the vision encoder, the prompt's prefill and the decoding,
        the context)."""

    def close(self) -> None:
        """Free what the engine holds outside Python's heap (idempotent)."""


@dataclass(frozen=True)
class VisionMemory:
    """What the vision encoder's session costs, by moment."""

    peak: int  # while it encodes (session and activations)
    kept: int  # what stays once it is released
    at_load: int  # before any image (resident: opened at load)
    create: int  # while the session is created (files read, initializers)
    where: str  # "session", or "on the QNN HTP, host memory"


@dataclass(frozen=True)
class EngineMemory:
    """An engine's lines of the memory plan for one precision of one bundle, everything
    the estimate needs but the context (:mod:`mobilevlm.runtime.memory` sums them)."""

    backend: str
    precision: str
    fixed: tuple[tuple[str, int], ...]  # (what, bytes): the library, the weights, ...
    weights: int  # the LLM's weights, as loaded
    vision: VisionMemory
    load_transient: int  # what loading holds beyond the steady state (copies while packing)
    kv_label: str  # the KV cache's element type: "fp32", "f16"
    kv_bytes_per_position: int
    kv_positions_multiple: int  # the engine allocates its context rounded up to this
    working_fixed: int  # working memory: arenas, compute buffers, graph copies
    working_per_position: int  # what grows with the context (attention scores of a prefill)
    release_makes_room: bool  # False where the KV cache is resident from the load on
    fixed_context: int | None = None  # the one context the engine runs (static NPU graphs)

    def kv_bytes(self, context: int) -> int:
        multiple = self.kv_positions_multiple
        return -(-context // multiple) * multiple * self.kv_bytes_per_position

    def working_memory(self, context: int) -> int:
        return self.working_fixed + context * self.working_per_position


class EngineType(Protocol):
    """An engine's class: what the loader and the planner ask before anything is loaded
    (the engine's artefacts chosen, checked and costed by the engine's own package)."""

    backend: str  # as LoadOptions.backend spells it
    preference: tuple[str, ...]  # the precisions it runs, the fastest first

    @classmethod
    def exported(cls, manifest: BundleManifest) -> list[str]:
        """The precisions of ``manifest`` this engine runs."""

    @classmethod
    def load(
        cls, path: str | Path, options: LoadOptions, manifest: BundleManifest | None = None
    ) -> Engine:
        """Open, verify and load the bundle at ``path``."""

    @classmethod
    def describe(
        cls, path: str | Path, options: LoadOptions, manifest: BundleManifest | None = None
    ) -> dict[str, Any]:
        """What :meth:`load` would run, as ``runtime_info`` says it, verified, not loaded."""

    @classmethod
    def memory(cls, manifest: BundleManifest, precision: str, options: LoadOptions) -> EngineMemory:
        """Its lines of the memory plan for ``precision`` (BundleError: not exported)."""

    @classmethod
    def vision_npu(cls, options: LoadOptions) -> str | None:
        """The NPU whose form of the vision graph ``options`` ask for, as the manifest
        names it ("qnn": what ``export --npu`` must have written), or None."""


# the engines in the runtime's order without a budget: ONNX Runtime first (it prefills
# 2.2x and decodes 1.15x as fast as llama.cpp on the CPU, docs/benchmarks.md)
_ENGINES = {
    ONNXRUNTIME: "mobilevlm.runtime.ort.model:OnnxVLM",
    LLAMA_CPP: "mobilevlm.runtime.llamacpp.model:LlamaCppVLM",
}


def engine_type(backend: str) -> EngineType:
    """The engine class named ``backend`` (imported on first use)."""
    module, _, name = _ENGINES[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def engine_types() -> list[EngineType]:
    """Every engine, the runtime's first choice first."""
    return [engine_type(backend) for backend in _ENGINES]
