"""What llama.cpp costs in memory: this engine's lines of the memory plan.

Measured on this project's machine (2-core AMD EPYC, Linux, glibc,
llama-cpp-python 0.3.36) with ``python -m mobilevlm.bench.memory --measure BUNDLE``,
each part in a fresh process; docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

from mobilevlm.manifest import BundleManifest
from mobilevlm.runtime.engine import EngineMemory
from mobilevlm.runtime.llamacpp.select import GgufSelection
from mobilevlm.runtime.options import LLAMA_CPP, LoadOptions
from mobilevlm.runtime.ort.footprint import vision_memory

MIB = 2**20
# VmHWM after importing numpy, tokenizers, llama_cpp, onnxruntime and the runtime
BASE_BYTES = 66 * MIB
# working memory: 7-31 MiB fixed, plus its attention scores as the context fills (a
# 512-token f16 batch per head and position: with the context filled, 406 MiB at 3584
# positions against 398 without it)
WORKING_FIXED = 30 * MIB
SCORES_PER_POSITION_HEAD = 512 * 2
CTX_PAD = 256  # llama.cpp pads its context up to a multiple of this


def engine_memory(
    manifest: BundleManifest, selection: GgufSelection, options: LoadOptions
) -> EngineMemory:
    """llama.cpp's lines for ``selection``: the GGUF is memory-mapped but every page is
    read each token (resident all the same), plus what its CPU backend repacks; the KV
    cache is f16, padded, and cleared (so resident) at load, so releasing the vision
    encoder makes no room for it."""
    weights = selection.llm.bytes
    fixed = [
        ("process and llama.cpp library", BASE_BYTES),
        (f"LLM weights ({selection.precision} GGUF, memory-mapped)", weights),
    ]
    repacked = selection.llm.details.get("repacked_bytes", 0)  # recorded at export
    if repacked:
        fixed.append(("LLM weights repacked by llama.cpp's CPU backend", repacked))
        weights += repacked
    llm = manifest.model.llm
    return EngineMemory(
        backend=LLAMA_CPP,
        precision=selection.precision,
        fixed=tuple(fixed),
        weights=weights,
        vision=vision_memory(manifest, selection.vision, selection.vision_context, options),
        load_transient=0,
        kv_label="f16",
        kv_bytes_per_position=llm.kv_cache_bytes_per_token(2),
        kv_positions_multiple=CTX_PAD,
        working_fixed=WORKING_FIXED,
        working_per_position=llm.num_attention_heads * SCORES_PER_POSITION_HEAD,
        release_makes_room=False,
    )
