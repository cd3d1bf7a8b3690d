"""The memory budget planner: what to load so that the process stays under a budget.

The estimate of a process's peak resident memory (``VmHWM``, what ``ru_maxrss``
reports for a process of its own) is a sum, line by line:

- the process: Python, numpy, tokenizers and the backend's library imported;
- the tokenizer, per vocabulary entry (the Rust tokenizer's vocabulary and merges);
- the LLM's weights: the decoder's external data (ONNX Runtime reads it, or maps it
  and packs a copy) or the GGUF file (llama.cpp maps it; every page is read each
  token, so it is resident all the same);
- nothing for ONNX Runtime's token embedding table: it is read row by row from its
  file (:mod:`mobilevlm.runtime.ort.embeddings`), so it stays in the page cache;
- the backend's working memory: arenas, compute buffers, graph copies; on ONNX
  Runtime a part proportional to the weights, on llama.cpp a part per position of the
  context (its attention buffers);
- the vision encoder's session with its activations while it encodes (hybrid: the
  ONNX graph; mtmd: the mmproj); released after the image prefill, part of it stays
  (heap the allocator does not give back);
- the KV cache for the whole context: fp32 on ONNX Runtime, allocated at load but
  resident only as positions fill; f16 on llama.cpp, its context padded up to a
  multiple of 256 and cleared (so resident) at load;
- a margin (``MARGIN``) for run-to-run variation.

The constants were measured on this project's machine (2-core AMD EPYC, Linux,
glibc, onnxruntime 1.31.1, llama-cpp-python 0.3.36) with ``python -m
mobilevlm.bench.memory --measure BUNDLE`` on the default model's bundle: each
part in a fresh process (see :func:`main`); docs/benchmarks.md has the numbers.

Choice. Candidates are ranked as the runtime ranks them without a budget: the
fastest first (ONNX Runtime int4, int8, fp32, then llama.cpp q4_k_m, q8_0, f16;
ONNX Runtime before llama.cpp because it prefills 2.2x and decodes 1.15x as fast
on the CPU, docs/benchmarks.md; the default model loses no accuracy at int4), so
a budget never changes what would run without one unless it must. The first that
fits with at least ``min_context`` positions (the image tokens, a prompt and a short
answer) wins, then gets the largest context that fits, up to the model's limit.
The vision encoder stays resident when that leaves ``PREFERRED_CONTEXT`` positions
(or the context asked for); otherwise, on ONNX Runtime, it is released after the
image prefill when that buys a longer context (the KV cache's pages fill only after
the encoder has gone). llama.cpp's KV cache is resident from the start, so there the
encoder's release would gain nothing. llama.cpp's GGUF weights are memory-mapped; ONNX
Runtime's embedding table is read from its file a row at a time.

Sizes: "MB" and "GB" are powers of 10 (512MB = 512,000,000 bytes), "MiB", "GiB",
"M" and "G" powers of 2; a plain number is bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mobilevlm.errors import BudgetError, BundleError, MobileVLMError
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.ort.providers import QNN, accelerator
from mobilevlm.runtime.select import (
    GGUF_PREFERENCE,
    PRECISION_PREFERENCE,
    select,
    select_gguf,
)

MIB = 2**20
UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 10**3,
    "KIB": 2**10,
    "M": 2**20,
    "MB": 10**6,
    "MIB": 2**20,
    "G": 2**30,
    "GB": 10**9,
    "GIB": 2**30,
}
# the runtime's own order without a budget: the fastest first
PREFERENCE = tuple((ONNXRUNTIME, p) for p in PRECISION_PREFERENCE) + tuple(
    (LLAMA_CPP, p) for p in GGUF_PREFERENCE
)

# Measured with `python -m mobilevlm.bench.memory --measure BUNDLE` on the default model
# (and on a tiny random one for the fixed parts), each part in a fresh process:
# VmHWM after importing numpy, tokenizers, the backend's library and the runtime: 57, 65 MiB
BASE_BYTES = {ONNXRUNTIME: 58 * MIB, LLAMA_CPP: 66 * MIB}
# VmRSS growth of loading tokenizer.json: 30-32 MiB for 49,152 entries, 3 MiB for a tiny one
TOKENIZER_BYTES = (2 * MIB, 650)  # fixed, per vocabulary entry
# the vision session: VmHWM growth of creating it and encoding one image: 83 MiB for the
# 13.3 MiB fp32 EfficientNet-Lite0 at 384 px (74-84 at 320 px), 11 MiB for a tiny ViT at
# 56 px; beyond its file, a fixed part and activations per input pixel (640 B, fitted at
# 320 px, put the 384 px session at 121 MiB: every plan of the default model 15-20% high)
VISION_BYTES = (10 * MIB, 420)  # fixed, per pixel
# ... and the file counts more than once while the session is created (the model proto and
# its initializers are held together): MobileVLM_V2-1.7B's ViT-L/14-336 peaked at 1,818 MiB
# for its 1,134 MiB fp32 graph and at 1,090 MiB for its 492 MiB QDQ int8 graph (`mobilevlm
# bench` found the planner 29% under the peak there before this line); per vision precision
VISION_FILE_FACTOR = {"fp32": 1.6, "int8": 2.1}
# VmRSS growth that stays after `del session; gc.collect()`: 34-55 MiB of those 74-84
# (glibc keeps the freed heap), all 11 of the tiny one: the fixed part and 60% of the rest;
# of the QDQ ViT-L's 1,090 MiB, 873 stayed
VISION_KEPT_SHARE = {"fp32": 0.6, "int8": 0.8}
# the vision session on QNN's HTP, in host memory: the HTP libraries and the graph's
# context. Measured like the CPU session, on the default model's 4.5 MiB w8a8 context
# (x86-64 simulator, onnxruntime-qnn 2.7.0): 100 MiB at the peak, 84 kept, loading the
# EPContext model; 150 and 138 compiling the 3.8 MiB QDQ graph instead. Beyond its files,
# a fixed part (the libraries) and the files twice (read, then handed to the HTP).
NPU_VISION_BYTES = {"epcontext": 91 * MIB, "onnx": 142 * MIB}  # fixed, by what is loaded
NPU_VISION_FILE_FACTOR = 2.0
NPU_VISION_KEPT_SHARE = 0.85
# working memory: the measured peak less every other line, one answer at 512, 2048 and
# 4096 positions (the "residual" column of --measure). ONNX Runtime: 18-26 MiB at int4 and
# int8, 39-52 at fp32 (it grows with the weights it packs); llama.cpp: 7-31 MiB, plus its
# attention scores as the context fills (a 512-token f16 batch per head and position:
# measured with the context filled, 406 MiB at 3584 positions against 398 without it)
OVERHEAD = {ONNXRUNTIME: (24 * MIB, 0.055), LLAMA_CPP: (30 * MIB, 0.0)}  # fixed, weights share
LLAMA_SCORES_PER_POSITION_HEAD = 512 * 2
MARGIN = 0.05  # of the estimate
MIN_TEXT_POSITIONS = 128  # a prompt and a short answer beyond the image
PREFERRED_CONTEXT = 2048  # the runtime's default: the encoder stays if this much fits with it
LLAMA_CTX_PAD = 256


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: "512MB" (10^6), "1.5GB" (10^9), "300MiB" or "300M" (2^20), "2G"
    (2^30), "300000000". Anything else raises :class:`MobileVLMError` (a user error)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise MobileVLMError(f"not a memory size: {text} (negative)")
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in UNITS:
        raise MobileVLMError(
            f"not a memory size: {text!r} (examples: 512MB, 1.5GB, 800MiB, 2G; "
            "MB and GB are powers of 10, MiB, GiB, M and G powers of 2)"
        )
    return int(float(match.group(1)) * UNITS[unit])


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.0f} MiB"


@dataclass
class MemoryPlan:
    """What to load under ``budget`` bytes, and the estimated peak RSS line by line."""

    backend: str  # onnxruntime | llama.cpp
    precision: str
    mode: str  # llama.cpp's image path: hybrid | mtmd
    context: int  # KV cache positions
    vision_resident: bool  # False: release the encoder once the image is encoded
    mmap_weights: bool  # the LLM's weights are memory-mapped (llama.cpp's GGUF)
    budget: int
    lines: list[tuple[str, int]] = field(default_factory=list)  # (what, bytes)

    @property
    def total(self) -> int:
        """What the budget is checked against: the estimate and its safety margin."""
        return sum(n for _, n in self.lines)

    @property
    def estimate(self) -> int:
        """The estimated peak RSS itself, without the margin (the last line)."""
        return sum(n for _, n in self.lines[:-1])

    def describe(self) -> str:
        where = "resident" if self.vision_resident else "released after the image prefill"
        weights = "memory-mapped" if self.mmap_weights else "loaded"
        if self.backend == ONNXRUNTIME:
            weights += " (the embedding table read row by row, not resident)"
        head = [
            f"memory plan for a budget of {_mib(self.budget)} ({self.budget:,} bytes)",
            f"  backend    {self.backend}, precision {self.precision}"
            + (f", mode {self.mode}" if self.backend == LLAMA_CPP else ""),
            f"  context    {self.context} positions",
            f"  vision     {where}",
            f"  weights    {weights}",
            "  estimated peak resident memory",
        ]
        width = max(len(label) for label, _ in self.lines + [("total", 0)])
        body = [f"    {label:<{width}}  {_mib(n):>10}" for label, n in self.lines]
        body.append(f"    {'total':<{width}}  {_mib(self.total):>10}")
        return "\n".join(head + body)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lines"] = [{"what": label, "bytes": n} for label, n in self.lines]
        data["total"] = self.total
        data["estimate"] = self.estimate
        return data


@dataclass(frozen=True)
class _Option:
    """One candidate's sizes: everything the estimate needs but the context."""

    backend: str
    precision: str
    fixed: tuple[tuple[str, int], ...]  # lines that do not depend on the context
    weights: int
    vision: int  # the encoder's peak while encoding
    vision_kept: int  # what stays of it after its release
    vision_where: str = ""  # "", or the NPU it runs on


def _option(
    manifest: BundleManifest,
    backend: str,
    precision: str,
    mode: str,
    vision_precision: str | None,
    accelerated: str | None = None,
) -> _Option:
    """Sizes of ``precision`` on ``backend``, from the artefacts its loader would open
    behind ``accelerated`` (raises :class:`BundleError` when the bundle lacks one)."""
    llm = manifest.model.llm
    lines = [(f"process and {backend} library", BASE_BYTES[backend])]
    fixed, per_entry = TOKENIZER_BYTES
    lines.append((f"tokenizer ({llm.vocab_size:,} entries)", fixed + llm.vocab_size * per_entry))
    if backend == LLAMA_CPP:
        chosen = select_gguf(manifest, precision, mode, vision_precision, accelerated)
        weights, vision = chosen.llm.bytes, chosen.vision
        lines.append((f"LLM weights ({precision} GGUF, memory-mapped)", weights))
        repacked = chosen.llm.details.get("repacked_bytes", 0)  # recorded at export
        if repacked:
            lines.append(("LLM weights repacked by llama.cpp's CPU backend", repacked))
            weights += repacked
    else:
        chosen = select(manifest, precision, vision_precision, accelerated)
        weights, vision = chosen.decoder.bytes, chosen.vision
        lines.append((f"LLM weights ({precision} decoder)", weights))
    if accelerated == QNN and vision.details.get("npu") == "qnn":
        loaded = chosen.vision_context or vision  # the precompiled model, where exported
        session = NPU_VISION_BYTES[loaded.format] + int(NPU_VISION_FILE_FACTOR * loaded.bytes)
        kept = int(session * NPU_VISION_KEPT_SHARE)
        return _Option(backend, precision, tuple(lines), weights, session, kept, "QNN HTP")
    fixed, per_pixel = VISION_BYTES
    factor = VISION_FILE_FACTOR.get(vision.precision, 1.0)  # the mmproj: llama.cpp loads it once
    session = int(factor * vision.bytes) + per_pixel * manifest.model.preprocess.image_size**2
    kept = fixed + int(session * VISION_KEPT_SHARE.get(vision.precision, 0.6))
    return _Option(backend, precision, tuple(lines), weights, fixed + session, kept)


def _kv_bytes(manifest: BundleManifest, backend: str, context: int) -> int:
    llm = manifest.model.llm
    if backend == LLAMA_CPP:  # f16, the context padded up
        padded = math.ceil(context / LLAMA_CTX_PAD) * LLAMA_CTX_PAD
        return padded * llm.kv_cache_bytes_per_token(2)
    return context * llm.kv_cache_bytes_per_token(4)


def _working_memory(manifest: BundleManifest, option: _Option, context: int) -> int:
    fixed, share = OVERHEAD[option.backend]
    if option.backend == LLAMA_CPP:
        heads = manifest.model.llm.num_attention_heads
        return int(fixed + context * heads * LLAMA_SCORES_PER_POSITION_HEAD)
    return int(fixed + share * option.weights)


def _lines(
    manifest: BundleManifest, option: _Option, context: int, release: bool
) -> list[tuple[str, int]]:
    """The estimate without the margin. Released (ONNX Runtime only), the encoder's peak
    comes before the KV cache fills, and only what stays of it adds to a full cache."""
    lines = list(option.fixed)
    lines.append((f"{option.backend} working memory", _working_memory(manifest, option, context)))
    kv = _kv_bytes(manifest, option.backend, context)
    kv_line = (
        f"KV cache ({'f16' if option.backend == LLAMA_CPP else 'fp32'}, {context} positions)",
        kv,
    )
    if not release:
        what = f"on the {option.vision_where}, host memory" if option.vision_where else "session"
        return lines + [(f"vision encoder ({what} and activations)", option.vision), kv_line]
    kept = option.vision_kept
    lines += [
        (f"vision encoder once released ({_mib(option.vision)} while encoding)", kept),
        kv_line,
    ]
    beyond = option.vision - kept - kv  # the encoder's peak comes before the cache fills
    return lines + ([("vision encoder while encoding, beyond that", beyond)] if beyond > 0 else [])


def _need(manifest: BundleManifest, option: _Option, context: int, release: bool) -> int:
    """The estimated peak with the margin."""
    return int(sum(n for _, n in _lines(manifest, option, context, release)) * (1 + MARGIN))


def _largest_context(
    manifest: BundleManifest, option: _Option, budget: int, low: int, high: int, release: bool
) -> int:
    """The largest context in [low, high] that fits ``budget`` (``low`` fits)."""
    while low < high:
        middle = (low + high + 1) // 2
        if _need(manifest, option, middle, release) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _candidates(
    manifest: BundleManifest, backend: str | None, precision: str | None, mode: str
) -> list[tuple[str, str]]:
    exported = [(ONNXRUNTIME, p) for p in manifest.precisions]
    exported += [(LLAMA_CPP, p) for p in manifest.gguf_precisions]
    options = [o for o in PREFERENCE if o in exported]
    if precision is not None:
        options = [o for o in options if o[1] == precision]
        if not options:
            listed = ", ".join(p for _, p in exported) or "none"
            raise BundleError(f"the bundle has no {precision} LLM (exported: {listed})")
    if mode == "mtmd":  # llama.cpp's own image path
        if backend == ONNXRUNTIME:
            raise MobileVLMError("mode mtmd is llama.cpp's: it does not run on onnxruntime")
        backend = LLAMA_CPP
    if backend is not None:
        options = [o for o in options if o[0] == backend]
        if not options:
            raise BundleError(
                f"the bundle has nothing for {backend}" + (f" at {precision}" if precision else "")
            )
    return options


def plan_memory(
    manifest: BundleManifest,
    budget: int,
    options: LoadOptions | None = None,
    min_context: int | None = None,
    **fields: Any,
) -> MemoryPlan:
    """The first backend/precision in the runtime's order (the fastest first, or the one
    ``options`` ask for; ``fields`` override their fields) whose estimated peak RSS with
    margin fits ``budget`` bytes with at least ``min_context`` positions (default: the
    image tokens and ``MIN_TEXT_POSITIONS``), with the largest context that fits up to the
    model's limit (or exactly ``context``), and the encoder released after the image
    prefill when it does not fit resident.

    Nothing is loaded. Raises :class:`BudgetError` naming the smallest budget that works
    when nothing fits, :class:`BundleError` when the bundle lacks what was asked for."""
    options = LoadOptions.of(options, **fields)
    backend, precision, mode = options.backend, options.precision, options.mode
    context, vision_precision = options.context, options.vision_precision
    accelerated = accelerator(options.providers)
    limit = manifest.model.llm.max_position_embeddings
    if context is not None:
        floor = min(context, limit)
    else:
        floor = min(limit, min_context or manifest.num_image_tokens + MIN_TEXT_POSITIONS)
    cheapest: tuple[int, str] | None = None
    failure: BundleError | None = None
    for option_backend, option_precision in _candidates(manifest, backend, precision, mode):
        try:
            option = _option(
                manifest, option_backend, option_precision, mode, vision_precision, accelerated
            )
        except BundleError as exc:  # e.g. no mmproj for mtmd: the next candidate may do
            failure = exc
            continue
        can_release = option_backend == ONNXRUNTIME
        need = min(_need(manifest, option, floor, r) for r in {False, can_release})
        if cheapest is None or need < cheapest[0]:
            cheapest = (need, f"{option_backend} {option_precision}, {floor} positions")
        if need > budget:
            continue
        chosen, resident = _context_and_vision(manifest, option, budget, floor, limit, context)
        lines = _lines(manifest, option, chosen, not resident)
        total = sum(n for _, n in lines)
        lines.append((f"margin ({MARGIN:.0%})", int(total * (1 + MARGIN)) - total))
        return MemoryPlan(
            backend=option_backend,
            precision=option_precision,
            mode=mode,
            context=chosen,
            vision_resident=resident,
            mmap_weights=option_backend == LLAMA_CPP,
            budget=budget,
            lines=lines,
        )
    if cheapest is None:
        assert failure is not None
        raise failure
    raise BudgetError(
        f"a memory budget of {_mib(budget)} ({budget:,} bytes) is too small for this bundle: "
        f"the smallest that works is {_mib(cheapest[0])} ({cheapest[0]:,} bytes; {cheapest[1]})",
        budget=budget,
        smallest=cheapest[0],
    )


def _context_and_vision(
    manifest: BundleManifest,
    option: _Option,
    budget: int,
    floor: int,
    limit: int,
    context: int | None,
) -> tuple[int, bool]:
    """The context, and whether the vision encoder stays resident: it does when that
    leaves the preferred context (or the one asked for); else it is released after the
    image prefill if that makes room for a longer context."""
    resident_fits = _need(manifest, option, floor, False) <= budget
    if context is not None or option.backend == LLAMA_CPP:
        if context is not None:
            return floor, resident_fits
        return _largest_context(manifest, option, budget, floor, limit, False), True
    with_vision = 0
    if resident_fits:
        with_vision = _largest_context(manifest, option, budget, floor, limit, False)
        if with_vision >= min(limit, PREFERRED_CONTEXT):
            return with_vision, True
    without = _largest_context(manifest, option, budget, floor, limit, True)
    return (without, False) if without > with_vision else (with_vision, True)
