"""Load options: everything that decides what a bundle loads as, with defaults in one place.

One frozen dataclass travels from the caller (the CLI, an app, the benchmark
harness) through the planner and the loader to the engine, the way
llama.cpp's ``mtmd_context_params`` or onnxruntime-genai's config overlay do;
no layer retypes the list. Values are checked when the options are made, so a
bad one fails before anything is read or loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mobilevlm.errors import OptionsError
from mobilevlm.manifest import GGUF_PRECISIONS, NPU_PARTS, PRECISIONS, VISION_PRECISIONS
from mobilevlm.runtime.verify import VERIFY_MODES

ONNXRUNTIME = "onnxruntime"
LLAMA_CPP = "llama.cpp"
BACKENDS = (ONNXRUNTIME, LLAMA_CPP)
MODES = ("hybrid", "mtmd")  # llama.cpp's image path: the ONNX vision graph, or its own mtmd


@dataclass(frozen=True)
class LoadOptions:
    """How to load a bundle. None means "the runtime's choice" (see each field)."""

    backend: str | None = None  # onnxruntime | llama.cpp; None: what the precision implies
    precision: str | None = None  # fp32/int8/int4 (ONNX), f16/q8_0/q4_k_m (GGUF); None: fastest
    mode: str = "hybrid"  # llama.cpp's image path: hybrid | mtmd
    providers: tuple[str, ...] = ("cpu",)  # ONNX Runtime providers in order; "name!": required
    # KEY=VALUE options of the first provider that is not the CPU (QNN: soc_model, htp_arch,
    # htp_performance_mode, ...); keys starting ep. or session. are session entries
    provider_options: tuple[tuple[str, str], ...] = ()
    threads: int | None = None  # CPU threads; None: one per physical core
    context: int | None = None  # KV cache positions; None: 2048 or the model's limit
    memory_budget: int | None = None  # bytes (text such as "512MB" is parsed); None: no plan
    vision_precision: str | None = None  # None: fp32 on the CPU, QDQ int8 behind an NPU
    # False: the vision encoder is loaded for each new image and freed after it, never at
    # load (what the planner chooses when a budget leaves no room for it beside the cache)
    vision_resident: bool = True
    verify: str = "auto"  # sha256 on first use (auto), on every load (full), sizes only (size)
    # behind an NPU provider, the parts that run there (of vision, prefill, decode); None:
    # every part the bundle has an NPU form of
    npu_parts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        providers = (self.providers,) if isinstance(self.providers, str) else self.providers
        if not isinstance(providers, (list, tuple)) or not all(
            isinstance(p, str) for p in providers
        ):
            raise OptionsError(f"providers must be a list of names, got {self.providers!r:.60}")
        object.__setattr__(self, "providers", tuple(providers) or ("cpu",))
        object.__setattr__(self, "provider_options", _pairs(self.provider_options))
        if self.memory_budget is not None:
            from mobilevlm.runtime.memory import parse_size

            object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        _one_of("backend", self.backend, BACKENDS, optional=True)
        _one_of("precision", self.precision, PRECISIONS + GGUF_PRECISIONS, optional=True)
        _one_of("vision precision", self.vision_precision, VISION_PRECISIONS, optional=True)
        _one_of("mode", self.mode, MODES)
        _one_of("verify", self.verify, VERIFY_MODES)
        if self.mode == "mtmd" and (self.backend == ONNXRUNTIME or self.precision in PRECISIONS):
            raise OptionsError("mode mtmd is llama.cpp's: it does not run on onnxruntime")
        implied = self.implied_backend
        if implied and self.backend and implied != self.backend:
            raise OptionsError(
                f"{self.precision} is a precision of {implied}, not of {self.backend}"
            )
        if self.npu_parts is not None:
            parts = (self.npu_parts,) if isinstance(self.npu_parts, str) else self.npu_parts
            parts = tuple(parts)
            object.__setattr__(self, "npu_parts", parts)
            for part in parts:
                _one_of("NPU part", part, NPU_PARTS)
            if not parts:
                raise OptionsError(f"NPU parts: name at least one of {', '.join(NPU_PARTS)}")
            if "decode" in parts and "prefill" not in parts:
                raise OptionsError(
                    "the NPU decodes on the cache its prefill fills: add prefill to the NPU parts"
                )
        if not isinstance(self.vision_resident, bool):
            raise OptionsError(
                f"vision_resident must be True or False, got {self.vision_resident!r}"
            )
        for name, low in (("context", 2), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise OptionsError(f"{name} must be a whole number, got {value!r}")
            if value is not None and value < low:
                raise OptionsError(f"{name} must be at least {low}, got {value}")

    @property
    def implied_backend(self) -> str | None:
        """The backend the precision (or the mode) names, if it names one."""
        if self.precision in PRECISIONS:
            return ONNXRUNTIME
        if self.precision in GGUF_PRECISIONS or self.mode == "mtmd":
            return LLAMA_CPP
        return self.backend

    def on_npu(self, part: str) -> bool:
        """Whether ``part`` (vision, prefill, decode) may run on the NPU provider."""
        return self.npu_parts is None or part in self.npu_parts

    def replace(self, **changes: Any) -> LoadOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: LoadOptions | None = None, **fields: Any) -> LoadOptions:
        """``options`` (default: all defaults) with ``fields`` overriding it."""
        options = options or cls()
        return options.replace(**fields) if fields else options


def _pairs(options: Any) -> tuple[tuple[str, str], ...]:
    """A mapping, ``KEY=VALUE`` strings or pairs, as sorted ``(key, value)`` string pairs."""
    if isinstance(options, Mapping):
        options = options.items()
    if not isinstance(options, (list, tuple, type({}.items()))) and options is not None:
        raise OptionsError(f"provider options must be KEY=VALUE pairs, got {options!r:.60}")
    pairs = []
    for item in options or ():
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise OptionsError(f"provider option {item!r} is not KEY=VALUE")
            item = (key.strip(), value.strip())
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise OptionsError(f"provider option {item!r:.40} is not a (key, value) pair")
        key, value = item
        pairs.append((str(key), str(value)))
    return tuple(sorted(dict(pairs).items()))


def _one_of(name: str, value: Any, allowed: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise OptionsError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
