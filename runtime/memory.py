"""The memory budget planner: what to load so that the process stays under a budget.

The estimate of a process's peak resident memory (what ``ru_maxrss`` reports)
is the sum of, line by line:

- the process itself: Python, numpy, tokenizers and the backend's library
  imported (``BASE_BYTES``, measured);
- the LLM's weights: the decoder graph (ONNX Runtime reads its external data
  into memory) or the GGUF file (llama.cpp maps it, and every page is touched
  each token, so mapped or not it is resident);
- the vision graph;
- the KV cache for the whole context: fp32 on ONNX Runtime (its pages become
  resident as positions fill), f16 on llama.cpp (allocated and cleared at load,
  its context padded up to a multiple of 256);
- the backend's working memory: arenas, compute buffers, the tokenizer, the
  touched rows of the memory-mapped embedding table (``OVERHEAD``, measured,
  with a part proportional to the weights on ONNX Runtime);
- a safety margin (``MARGIN``).

Measured on this project's machine (2-core AMD EPYC, Linux, onnxruntime
1.31.1, llama-cpp-python 0.3.36) with ``python -m mobilevlm.runtime.memory
--measure BUNDLE``: the peak RSS of a process that loads the default model at
each precision and answers one question about an image, minus the weights
and KV cache it holds. See docs/benchmarks.md for estimate against measured.

The planner prefers the most accurate precision that fits (fp32, int8, int4 on
ONNX Runtime, then f16, q8_0, q4_k_m on llama.cpp; ONNX Runtime first because
it is the faster backend on the CPU), with at least ``MIN_TEXT_POSITIONS``
positions beyond the image, then gives it the largest context that fits, up to
the model's limit. On ONNX Runtime the KV cache's pages only become resident
as the context fills, so releasing the vision encoder after the image prefill
makes room for a longer context; the plan does so when the resident encoder
would not fit. Weights are memory-mapped where the backend allows (the
embedding table; llama.cpp's GGUF).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mobilevlm.bundle import GGUF_PRECISIONS, BundleManifest
from mobilevlm.errors import BudgetError, MobileVLMError

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
ONNX_ORDER = ("fp32", "int8", "int4")  # most accurate first
GGUF_ORDER = ("f16", "q8_0", "q4_k_m")
# measured: ru_maxrss after importing the runtime and the backend's library
BASE_BYTES = {"onnxruntime": 58 * 10**6, "llama.cpp": 68 * 10**6}
# measured residuals (peak - base - weights - vision - KV in use); ONNX Runtime's grows
# with the weights it optimizes and packs: 120 MiB (int4, int8) to 142 MiB (fp32); llama.cpp's
# grows with the context (its attention buffers): 112 to 122 MiB at 512 positions, 148 MiB
# at 3584 (q4_k_m), so a part per position and head is added (LLAMA_SCORES bytes)
OVERHEAD = {"onnxruntime": (112 * MIB, 0.055), "llama.cpp": (122 * MIB, 0.0)}
LLAMA_SCORES = 512 * 2  # a 512-token batch of f16 scores
MARGIN = 0.05  # of the estimate, for run-to-run variation and longer answers
MIN_TEXT_POSITIONS = 128  # a prompt and a short answer beyond the image
PREFERRED_CONTEXT = 2048  # the vision encoder stays resident if this much context fits
LLAMA_CTX_PAD = 256


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: "512MB" (10^6), "512MiB" or "512M" (2^20), "1.5GB", "300000000"."""
    if isinstance(text, int):
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
    backend: str
    precision: str
    mode: str
    context: int
    vision_resident: bool
    mmap_weights: bool
    budget: int
    lines: list[tuple[str, int]] = field(default_factory=list)  # (what, bytes)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.lines)

    def describe(self) -> str:
        where = "resident" if self.vision_resident else "released after the image prefill"
        head = [
            f"memory plan for a budget of {_mib(self.budget)} ({self.budget:,} bytes)",
            f"  backend    {self.backend}, precision {self.precision}"
            + (f", mode {self.mode}" if self.backend == "llama.cpp" else ""),
            f"  context    {self.context} positions",
            f"  vision     {where}",
            f"  weights    {'memory-mapped' if self.mmap_weights else 'loaded'}"
            + (" (embedding table memory-mapped)" if self.backend == "onnxruntime" else ""),
            "  estimated peak resident memory",
        ]
        width = max(len(label) for label, _ in self.lines)
        body = [f"    {label:<{width}}  {_mib(n):>10}" for label, n in self.lines]
        body.append(f"    {'total':<{width}}  {_mib(self.total):>10}")
        return "\n".join(head + body)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lines"] = [{"what": label, "bytes": n} for label, n in self.lines]
        data["total"] = self.total
        return data


def _kv_bytes(manifest: BundleManifest, backend: str, context: int) -> int:
    llm = manifest.model.llm
    if backend == "llama.cpp":  # f16, the context padded up
        padded = math.ceil(context / LLAMA_CTX_PAD) * LLAMA_CTX_PAD
        return padded * llm.kv_cache_bytes_per_token(2)
    return context * llm.kv_cache_bytes_per_token(4)


def _fixed_lines(
    manifest: BundleManifest, backend: str, precision: str, mode: str
) -> tuple[list[tuple[str, int]], int]:
    """Lines that do not depend on the context, and the vision encoder's bytes."""
    component = "llm" if backend == "llama.cpp" else "decoder"
    weights = manifest.find(component, precision).bytes
    if backend == "llama.cpp" and mode == "mtmd":
        vision = sum(a.bytes for a in manifest.of("mmproj")[:1])
    else:
        vision = (manifest.find("vision", "fp32") or manifest.of("vision")[0]).bytes
    lines = [
        (f"process and {backend} library", BASE_BYTES[backend]),
        (f"LLM weights ({precision})", weights),
    ]
    return lines, vision


def _working_memory(manifest: BundleManifest, backend: str, weights: int, context: int) -> int:
    fixed, share = OVERHEAD[backend]
    if backend == "llama.cpp":  # attention scores of a 512-token batch over the context
        return int(fixed + context * manifest.model.llm.num_attention_heads * LLAMA_SCORES)
    return int(fixed + share * weights)


def _estimate(
    manifest: BundleManifest, backend: str, precision: str, mode: str, context: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The estimate's lines with the vision encoder resident, and with it released after
    the image prefill (on llama.cpp the same: its KV cache is resident from the start)."""
    lines, vision = _fixed_lines(manifest, backend, precision, mode)
    work = _working_memory(manifest, backend, lines[1][1], context)
    lines.append((f"{backend} working memory", work))
    kv = _kv_bytes(manifest, backend, context)
    resident = lines + [("vision encoder", vision), (f"KV cache ({context} positions)", kv)]
    if backend == "llama.cpp":
        return resident, resident
    # the encoder is gone before the KV cache fills beyond the image and a prompt
    image_kv = _kv_bytes(manifest, backend, manifest.num_image_tokens + MIN_TEXT_POSITIONS)
    released = lines + [
        ("vision encoder (until the image prefill)", vision),
        (f"KV cache ({context} positions) beyond the freed encoder", max(image_kv, kv - vision)),
    ]
    return resident, released


def _total(lines: list[tuple[str, int]]) -> int:
    return sum(n for _, n in lines)


def _with_margin(nbytes: int) -> int:
    return int(nbytes * (1 + MARGIN))


def _candidates(
    manifest: BundleManifest, backend: str | None, precision: str | None
) -> list[tuple[str, str]]:
    options = [("onnxruntime", p) for p in ONNX_ORDER if p in manifest.precisions]
    options += [("llama.cpp", p) for p in GGUF_ORDER if p in manifest.gguf_precisions]
    if precision is not None:
        options = [o for o in options if o[1] == precision]
        if not options:
            listed = ", ".join(manifest.precisions + manifest.gguf_precisions) or "none"
            raise MobileVLMError(f"the bundle has no {precision} LLM (exported: {listed})")
    if backend is not None:
        options = [o for o in options if o[0] == backend]
    if not options:
        raise MobileVLMError(f"the bundle has nothing for the {backend} backend")
    return options


def plan_memory(
    manifest: BundleManifest,
    budget: int,
    backend: str | None = None,
    precision: str | None = None,
    mode: str = "hybrid",
    context: int | None = None,
) -> MemoryPlan:
    """The most accurate backend/precision whose estimated peak (with margin) fits
    ``budget`` bytes, with the largest context that fits (or ``context``). Raises
    :class:`BudgetError` naming the smallest budget that works when nothing fits."""
    limit = manifest.model.llm.max_position_embeddings
    floor = min(limit, manifest.num_image_tokens + MIN_TEXT_POSITIONS)
    if context is not None:
        floor = context
    cheapest: tuple[int, str] | None = None
    for option_backend, option_precision in _candidates(manifest, backend, precision):
        if option_precision in GGUF_PRECISIONS and mode == "mtmd" and not manifest.of("mmproj"):
            continue
        need = _with_margin(
            min(map(_total, _estimate(manifest, option_backend, option_precision, mode, floor)))
        )
        if cheapest is None or need < cheapest[0]:
            cheapest = (need, f"{option_backend} {option_precision}, context {floor}")
        if need > budget:
            continue
        chosen, keep_vision = _context_and_vision(
            manifest, option_backend, option_precision, mode, budget, floor, limit, context
        )
        resident, released = _estimate(manifest, option_backend, option_precision, mode, chosen)
        lines = resident if keep_vision else released
        lines.append((f"margin ({MARGIN:.0%})", _with_margin(_total(lines)) - _total(lines)))
        return MemoryPlan(
            backend=option_backend,
            precision=option_precision,
            mode=mode,
            context=chosen,
            vision_resident=keep_vision,
            mmap_weights=option_backend == "llama.cpp",
            budget=budget,
            lines=lines,
        )
    assert cheapest is not None
    raise BudgetError(
        f"a memory budget of {_mib(budget)} is too small for this bundle: the smallest that "
        f"works is {_mib(cheapest[0])} ({cheapest[0]:,} bytes; {cheapest[1]})"
    )


def _fits(manifest, backend, precision, mode, context, budget, released: bool) -> bool:
    lines = _estimate(manifest, backend, precision, mode, context)[1 if released else 0]
    return _with_margin(_total(lines)) <= budget


def _largest_context(
    manifest, backend, precision, mode, budget, low: int, high: int, released: bool
) -> int:
    """Binary search for the largest context that fits (``low`` fits)."""
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(manifest, backend, precision, mode, middle, budget, released):
            low = middle
        else:
            high = middle - 1
    return low


def _context_and_vision(
    manifest, backend, precision, mode, budget, floor: int, limit: int, context: int | None
) -> tuple[int, bool]:
    """The context, and whether the vision encoder stays resident: it does when that
    leaves the preferred context (or the one asked for); else it is released after the
    image prefill if that makes room for a longer context."""
    resident_fits = _fits(manifest, backend, precision, mode, floor, budget, False)
    if context is not None:
        return context, resident_fits
    with_vision = 0
    if resident_fits:
        with_vision = _largest_context(
            manifest, backend, precision, mode, budget, floor, limit, False
        )
        if with_vision >= min(limit, PREFERRED_CONTEXT):
            return with_vision, True
    without = _largest_context(manifest, backend, precision, mode, budget, floor, limit, True)
    return (without, False) if without > with_vision else (with_vision, True)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, whose high-water mark belongs to
    the current program (``ru_maxrss`` keeps the forking parent's across exec, so a child
    of a large process would report the parent's peak); ``ru_maxrss`` where there is no
    /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(bundle: str, precision: str, context: int, image: str) -> dict[str, int]:
    """Peak RSS (bytes) of this process after importing, loading ``bundle`` at
    ``precision`` and answering one question about ``image``: run it in a fresh process."""
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    if precision in GGUF_PRECISIONS:
        import llama_cpp  # noqa: F401
    from mobilevlm.runtime.pipeline import Pipeline

    base = peak_rss()
    vlm = Pipeline.load(bundle, precision=precision, context=context)
    vlm.generate(image, "What color is the circle?", max_new_tokens=16)
    return {"base": base, "peak": peak_rss()}


def main(argv: list[str] | None = None) -> None:
    """``python -m mobilevlm.runtime.memory --measure BUNDLE``: estimate against measured
    peak RSS for each precision, each in a fresh process."""
    import argparse
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser(prog="python -m mobilevlm.runtime.memory")
    parser.add_argument("--measure", metavar="BUNDLE", required=True)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--image", default="examples/shapes.png")
    parser.add_argument("--one", metavar="PRECISION", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.measure, args.one, args.context, args.image)))
        return
    manifest = BundleManifest.read(args.measure)
    print(f"{'precision':<10}{'context':>8}{'estimate MiB':>14}{'measured MiB':>14}{'ratio':>8}")
    for backend, precision in _candidates(manifest, None, None):
        out = subprocess.run(
            [sys.executable, "-m", "mobilevlm.runtime.memory", "--measure", args.measure]
            + ["--one", precision, "--context", str(args.context), "--image", args.image],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
        resident, _ = _estimate(manifest, backend, precision, "hybrid", args.context)
        estimate = _with_margin(_total(resident))
        print(
            f"{precision:<10}{args.context:>8}{estimate / MIB:>14.0f}{measured / MIB:>14.0f}"
            f"{measured / estimate:>8.2f}"
        )


if __name__ == "__main__":
    main()
