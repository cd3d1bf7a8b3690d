"""The memory budget planner: what to load so that the process stays under a budget.

The estimate of a process's peak resident memory (``VmHWM``, what ``ru_maxrss``
reports for a process of its own) is the lines every moment shares, plus the
largest of the moments (:func:`estimate_lines`):

- the process: Python, numpy, tokenizers and the backend's library imported;
- the tokenizer, per vocabulary entry (the Rust tokenizer's vocabulary and merges);
- the LLM's weights: the decoder's external data (ONNX Runtime reads it and packs
  it) or the GGUF file (llama.cpp maps it; every page is read each token, so it is
  resident all the same); nothing for ONNX Runtime's token embedding table, read
  row by row from its file (:mod:`mobilevlm.runtime.ort.embeddings`);
- the backend's working memory, and what grows with the context (a prompt's
  attention scores: ONNX Runtime runs prompts in chunks of 256 positions);
- then the largest of: the filled context (the vision encoder resident with its
  activations, or what stays of it once released; the KV cache, fp32 on ONNX
  Runtime and resident as positions fill, f16 on llama.cpp, padded and resident
  from the load); the load (the engine's transient copies); the vision session's
  creation (released: for each new image, after the KV cache is freed);
- a margin (``MARGIN``) for run-to-run variation.

Each engine states its own lines (:meth:`EngineType.memory
<mobilevlm.runtime.engine.EngineType.memory>`: ``runtime/ort/footprint.py``,
``runtime/llamacpp/footprint.py``); this module adds the tokenizer and the margin,
sums, and chooses. The constants were measured on this project's machine with
``python -m mobilevlm.bench.memory``; docs/benchmarks.md has the numbers.

Choice. Candidates are ranked as the runtime ranks them without a budget: the
fastest first (ONNX Runtime int4, int8, fp32, then llama.cpp q4_k_m, q8_0, f16;
ONNX Runtime before llama.cpp because it prefills 2.2x and decodes 1.15x as fast
on the CPU, docs/benchmarks.md; the default model loses no accuracy at int4), so
a budget never changes what would run without one unless it must. The first that
fits with at least ``min_context`` positions (the image tokens, a prompt and a short
answer) wins, then gets the largest context that fits, up to the model's limit.
The vision encoder stays resident when that leaves ``PREFERRED_CONTEXT`` positions
(or the context asked for); otherwise, on ONNX Runtime, it is released when that
buys a longer context: loaded for each new image, after the KV cache has been freed,
and freed once the image is encoded (``LoadOptions.vision_resident``). llama.cpp's
KV cache is resident from the start, so there the encoder's release would gain
nothing. llama.cpp's GGUF weights are memory-mapped; ONNX
Runtime's embedding table is read from its file a row at a time.

Sizes: "MB" and "GB" are powers of 10 (512MB = 512,000,000 bytes), "MiB", "GiB",
"M" and "G" powers of 2; a plain number is bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mobilevlm.errors import BudgetError, BundleError, MobileVLMError
from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.engine import EngineMemory, engine_types
from mobilevlm.runtime.options import LLAMA_CPP, ONNXRUNTIME, LoadOptions

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
# VmRSS growth of loading tokenizer.json: 30-32 MiB for 49,152 entries, 3 MiB for a tiny one
TOKENIZER_BYTES = (2 * MIB, 650)  # fixed, per vocabulary entry
MARGIN = 0.05  # of the estimate
MIN_TEXT_POSITIONS = 128  # a prompt and a short answer beyond the image
PREFERRED_CONTEXT = 2048  # the runtime's default: the encoder stays if this much fits with it


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


def candidates(manifest: BundleManifest, options: LoadOptions) -> list[tuple[type, str]]:
    """(engine class, precision) pairs ``options`` allow on ``manifest``, in the runtime's
    order without a budget: the fastest first (ONNX Runtime int4, int8, fp32, then llama.cpp
    q4_k_m, q8_0, f16), so a budget never changes what would run without one unless it
    must. BundleError when the bundle has nothing of what was asked for."""
    backend, precision = options.backend, options.precision
    if options.mode == "mtmd":  # llama.cpp's own image path
        if backend == ONNXRUNTIME:
            raise MobileVLMError("mode mtmd is llama.cpp's: it does not run on onnxruntime")
        backend = LLAMA_CPP
    pairs = []
    for engine in engine_types():
        exported = engine.exported(manifest)
        pairs += [(engine, p) for p in engine.preference if p in exported]
    if precision is not None:
        if not any(p == precision for _, p in pairs):
            listed = ", ".join(p for _, p in pairs) or "none"
            raise BundleError(f"the bundle has no {precision} LLM (exported: {listed})")
        pairs = [(e, p) for e, p in pairs if p == precision]
    if backend is not None:
        pairs = [(e, p) for e, p in pairs if e.backend == backend]
        if not pairs:
            raise BundleError(
                f"the bundle has nothing for {backend}" + (f" at {precision}" if precision else "")
            )
    return pairs


def estimate_lines(
    manifest: BundleManifest, memory: EngineMemory, context: int, release: bool
) -> list[tuple[str, int]]:
    """The estimated peak at ``context`` positions, line by line, without the margin.

    The peak is the largest of these moments, each on top of the lines they share
    (process, tokenizer, weights, working memory with its prefill scratch): the filled
    context (the vision encoder resident with its activations, or what stays of it once
    released; the KV cache); the load (the engine's transient copies, beside the vision
    session when it is resident); the vision session's creation (resident: before the
    decoder is loaded; released: for each new image, the KV cache freed first). The
    filled context's lines are listed; a moment that goes higher adds one line."""
    entries = manifest.model.llm.vocab_size
    fixed, per_entry = TOKENIZER_BYTES
    lines = [memory.fixed[0], (f"tokenizer ({entries:,} entries)", fixed + entries * per_entry)]
    lines += memory.fixed[1:]
    lines.append((f"{memory.backend} working memory", memory.working_memory(context)))
    kv = memory.kv_bytes(context)
    session = memory.vision
    if release:
        vision = session.kept
        label = f"vision encoder once released ({_mib(session.peak)} while encoding)"
        lines.append((label, vision))
    else:
        vision = session.peak
        lines.append((f"vision encoder ({session.where} and activations)", vision))
    lines.append((f"KV cache ({memory.kv_label}, {context} positions)", kv))
    if release:  # loaded after the decoder for each image, the KV cache freed first
        moments = [
            (memory.load_transient, "while loading, beyond that (transient copies)"),
            (max(session.peak, session.create), "while encoding an image, beyond that"),
        ]
    else:  # created first, before the decoder's weights are read
        before_decoder = session.create - memory.weights - memory.working_memory(context)
        moments = [
            (memory.load_transient + session.at_load, "while loading, beyond that"),
            (before_decoder, "while the vision session is created, beyond that"),
        ]
    higher, label = max(moments)
    if higher > vision + kv:
        lines.append((label, higher - vision - kv))
    return lines


def estimate(manifest: BundleManifest, memory: EngineMemory, context: int, release: bool) -> int:
    """The estimated peak with the margin: what a budget is checked against."""
    return int(sum(n for _, n in estimate_lines(manifest, memory, context, release)) * (1 + MARGIN))


def _largest_context(
    manifest: BundleManifest, memory: EngineMemory, budget: int, low: int, high: int, release: bool
) -> int:
    """The largest context in [low, high] that fits ``budget`` (``low`` fits)."""
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(manifest, memory, middle, release) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def plan_memory(
    manifest: BundleManifest,
    budget: int,
    options: LoadOptions | None = None,
    min_context: int | None = None,
    **fields: Any,
) -> MemoryPlan:
    """The first engine/precision in the runtime's order (the fastest first, or the one
    ``options`` ask for; ``fields`` override their fields) whose estimated peak RSS with
    margin fits ``budget`` bytes with at least ``min_context`` positions (default: the
    image tokens and ``MIN_TEXT_POSITIONS``), with the largest context that fits up to the
    model's limit (or exactly ``context``), and the encoder released after the image
    prefill when it does not fit resident.

    Nothing is loaded. Raises :class:`BudgetError` naming the smallest budget that works
    when nothing fits, :class:`BundleError` when the bundle lacks what was asked for."""
    options = LoadOptions.of(options, **fields)
    context = options.context
    limit = manifest.model.llm.max_position_embeddings
    if context is not None:
        floor = min(context, limit)
    else:
        floor = min(limit, min_context or manifest.num_image_tokens + MIN_TEXT_POSITIONS)
    cheapest: tuple[int, str] | None = None
    failure: BundleError | None = None
    for engine, precision in candidates(manifest, options):
        try:
            memory = engine.memory(manifest, precision, options)
        except BundleError as exc:  # e.g. no mmproj for mtmd: the next candidate may do
            failure = exc
            continue
        low, high, asked = floor, limit, context
        if memory.fixed_context is not None:  # the engine's graphs have one context
            low = high = asked = memory.fixed_context
        need = min(estimate(manifest, memory, low, r) for r in {False, memory.release_makes_room})
        if cheapest is None or need < cheapest[0]:
            cheapest = (need, f"{engine.backend} {precision}, {low} positions")
        if need > budget:
            continue
        chosen, resident = _context_and_vision(manifest, memory, budget, low, high, asked)
        lines = estimate_lines(manifest, memory, chosen, not resident)
        total = sum(n for _, n in lines)
        lines.append((f"margin ({MARGIN:.0%})", int(total * (1 + MARGIN)) - total))
        return MemoryPlan(
            backend=engine.backend,
            precision=precision,
            mode=options.mode,
            context=chosen,
            vision_resident=resident,
            mmap_weights=engine.backend == LLAMA_CPP,
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
    memory: EngineMemory,
    budget: int,
    floor: int,
    limit: int,
    context: int | None,
) -> tuple[int, bool]:
    """The context, and whether the vision encoder stays resident: it does when that
    leaves the preferred context (or the one asked for); else it is released after the
    image prefill if that makes room for a longer context."""
    resident_fits = estimate(manifest, memory, floor, False) <= budget
    if context is not None or not memory.release_makes_room:
        if context is not None:
            return floor, resident_fits
        return _largest_context(manifest, memory, budget, floor, limit, False), True
    with_vision = 0
    if resident_fits:
        with_vision = _largest_context(manifest, memory, budget, floor, limit, False)
        if with_vision >= min(limit, PREFERRED_CONTEXT):
            return with_vision, True
    without = _largest_context(manifest, memory, budget, floor, limit, True)
    return (without, False) if without > with_vision else (with_vision, True)
