"""What ONNX Runtime costs in memory: this engine's lines of the memory plan.

Measured on this project's machine (2-core AMD EPYC, Linux, glibc, onnxruntime
1.31.1) on the built-in model's bundle, in the process that runs the pipeline (what
a budget is about): ``python -m mobilevlm.bench.memory --sweep BUNDLE`` checks the
sum against the peak with the context filled; docs/benchmarks.md has the numbers.
The vision session's costs are also llama.cpp's in hybrid mode, where the same ONNX
vision graph runs.
"""

from __future__ import annotations

import os

from mobilevlm.config import LLMConfig
from mobilevlm.manifest import Artefact, BundleManifest
from mobilevlm.runtime.engine import EngineMemory, VisionMemory
from mobilevlm.runtime.options import ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.ort.decoder import PREFILL_CHUNK
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.vision import vision_npu

MIB = 2**20
# VmHWM after importing numpy, tokenizers, onnxruntime and the runtime: 58.5 MiB
BASE_BYTES = 59 * MIB
# The vision session: while it is created the file counts more than once (the model proto
# and its initializers held together): MobileVLM_V2-1.7B's ViT-L/14-336 peaked at 1,818 MiB
# for its 1,134 MiB fp32 graph, 1,090 for its 492 MiB QDQ int8 graph
VISION_CREATE = (10 * MIB, {"fp32": 1.6, "int8": 2.1})  # fixed, file factor per precision
# ... then it holds its file and a few MiB (17 MiB for the default model's 13.3 MiB graph)
VISION_AT_LOAD_FIXED = 4 * MIB
# ... and while it encodes, activations per input pixel, by tower: the default model's
# EfficientNet-Lite0 at 384 px grew 79-82 MiB in all (62 of activations); the ViT-L/14-336
# held 1,369 MiB beside a full KV cache (231 of activations: its 577 tokens x 1024 wide)
VISION_ACTIVATIONS_PER_PIXEL = {"efficientnet_lite": 440, "clip_vit": 2150}
# Released (and the heap trimmed: mobilevlm.runtime.heap), 2-8 MiB of the default model's
# 82 stayed; of the QDQ ViT-L's 1,090, 873 stayed before the heap was trimmed
VISION_KEPT_SHARE = {"fp32": 0.1, "int8": 0.8}
# the vision session on QNN's HTP, in host memory: the HTP libraries and the graph's
# context. The default model's 4.5 MiB w8a8 context (x86-64 simulator, onnxruntime-qnn
# 2.7.0): 100 MiB at the peak, 84 kept, loading the EPContext model; 150 and 138 compiling
# the 3.8 MiB QDQ graph instead. Beyond its files, a fixed part and the files twice.
NPU_VISION_BYTES = {EPCONTEXT: 91 * MIB, "onnx": 142 * MIB}  # fixed, by what is loaded
NPU_VISION_FILE_FACTOR = 2.0
NPU_VISION_KEPT_SHARE = 0.85
# The LLM's graphs on QNN's HTP, in host memory, each about its context binary: loaded from
# their EPContext models the built-in model's 134 MiB prefill and decode contexts (x86-64
# simulator, onnxruntime-qnn 2.7.0) held 431 MiB with the NPU vision graph and the 512
# positions' cache (430 MiB counted: 58 process, 84 vision, 2 x 142, 24 cache), and loading
# peaked 133 MiB above that: a context's copy while the session is made
NPU_LLM_FIXED = 8 * MIB
NPU_LLM_LOAD_SHARE = 1.0  # of the largest context, beside the steady state while loading
# Working memory of the decoder once loaded, beyond its weights: 35.5 MiB for the int4 and
# int8 (MatMulNBits) decoders, 2.5 for fp32, whose initializers are used as read (a tiny
# fp32 model's whole process peaked 8 MiB above its other lines)
QUANTIZED_WORKING = (28 * MIB, 0.055)  # fixed, share of the weights
FLOAT_WORKING = 8 * MIB
# Loading holds more than it keeps: VmHWM of the load less the steady state. MatMulNBits
# decoders: 90 MiB (int4, 108 MiB of weights), 128 (int8, 146): packed copies of the
# weights beside the originals (packed on the intra-op threads); fp32: 108, an fp32 copy
# of the output projection (49,152 x 576)
QUANTIZED_LOAD_SHARE = 0.88  # of the weights
# A prefill run's attention scores: per position of the context, each intra-op thread
# holds a chunk's scores (30 MiB at 8,192 positions, 2 threads)
SCORE_BYTES = 8


def vision_memory(
    manifest: BundleManifest, vision: Artefact, context: Artefact | None, options: LoadOptions
) -> VisionMemory:
    """The vision session's costs (llama.cpp's mmproj, in mtmd mode, counted alike)."""
    npu = vision.details.get("npu")
    if npu is not None and npu == vision_npu(options):
        loaded = context or vision  # the precompiled model, where exported
        session = NPU_VISION_BYTES[loaded.format] + int(NPU_VISION_FILE_FACTOR * loaded.bytes)
        kept = int(session * NPU_VISION_KEPT_SHARE)
        return VisionMemory(session, kept, kept, session, "on the QNN HTP, host memory")
    fixed, factors = VISION_CREATE
    create = fixed + int(factors.get(vision.precision, 1.0) * vision.bytes)  # mmproj: once
    at_load = VISION_AT_LOAD_FIXED + vision.bytes
    per_pixel = VISION_ACTIVATIONS_PER_PIXEL.get(manifest.model.vision.type, 2150)
    peak = at_load + per_pixel * manifest.model.preprocess.image_size**2
    kept = int(peak * VISION_KEPT_SHARE.get(vision.precision, 0.8))
    return VisionMemory(peak, kept, at_load, create, "session")


def engine_memory(manifest: BundleManifest, selection, options: LoadOptions) -> EngineMemory:
    """ONNX Runtime's lines for ``selection``: the decoder's external data is read (or
    packed), the token embedding table is read row by row from its file (so it stays in
    the page cache, not resident), the KV cache is fp32 and fills as positions do, and
    the vision encoder's release leaves room for it."""
    llm = manifest.model.llm
    npu = [
        (part, g) for part, g in (("prefill", selection.prefill), ("decode", selection.decode)) if g
    ]
    if npu:
        return _npu_llm_memory(manifest, selection, options, npu)
    weights = selection.decoder.bytes
    working, load_transient = _cpu_decoder_costs(llm, selection.precision, weights)
    threads = options.threads or os.cpu_count() or 1
    return EngineMemory(
        backend=ONNXRUNTIME,
        precision=selection.precision,
        fixed=(
            ("process and onnxruntime library", BASE_BYTES),
            (f"LLM weights ({selection.precision} decoder)", weights),
        ),
        weights=weights,
        vision=vision_memory(manifest, selection.vision, selection.vision_context, options),
        load_transient=load_transient,
        kv_label="fp32",
        kv_bytes_per_position=llm.kv_cache_bytes_per_token(4),
        kv_positions_multiple=1,
        working_fixed=working,
        working_per_position=threads * PREFILL_CHUNK * SCORE_BYTES,
        release_makes_room=True,
    )


def _cpu_decoder_costs(llm: LLMConfig, precision: str, weights: int) -> tuple[int, int]:
    """A CPU decoder's working memory beyond its weights, and what loading it holds beyond
    what it keeps: MatMulNBits packs copies of its weights; fp32 copies the lm_head."""
    if precision == "fp32":
        return FLOAT_WORKING, llm.vocab_size * llm.hidden_size * 4
    fixed, share = QUANTIZED_WORKING
    return int(fixed + share * weights), int(QUANTIZED_LOAD_SHARE * weights)


def _npu_llm_memory(manifest: BundleManifest, selection, options: LoadOptions, npu) -> EngineMemory:
    """The lines where the LLM's prompt (and tokens) run on the NPU: each graph's session in
    host memory, the CPU decoder only where the tokens stay on the CPU, and a cache of the
    graphs' fixed context, resident whole (the graphs read all of it)."""
    llm = manifest.model.llm
    fixed = [("process and onnxruntime library", BASE_BYTES)]
    sessions = []
    for part, graph in npu:
        loaded = graph.context or graph.graph
        sessions.append(NPU_LLM_FIXED + loaded.bytes)
        fixed.append((f"LLM {part} graph on the QNN HTP (host memory)", sessions[-1]))
    weights, working, transient = 0, 0, int(NPU_LLM_LOAD_SHARE * max(sessions))
    if selection.decode is None:  # tokens on the CPU: its decoder is loaded too
        weights = selection.decoder.bytes
        fixed.append((f"LLM weights ({selection.precision} decoder, tokens on the CPU)", weights))
        working, cpu_transient = _cpu_decoder_costs(llm, selection.precision, weights)
        transient = max(transient, cpu_transient)
    context = selection.prefill.graph.details.get("context", llm.max_position_embeddings)
    return EngineMemory(
        backend=ONNXRUNTIME,
        precision=selection.precision,
        fixed=tuple(fixed),
        weights=weights,
        vision=vision_memory(manifest, selection.vision, selection.vision_context, options),
        load_transient=transient,
        kv_label="fp32",
        kv_bytes_per_position=llm.kv_cache_bytes_per_token(4),
        kv_positions_multiple=1,
        working_fixed=working,
        working_per_position=0,
        release_makes_room=True,
        fixed_context=context,
    )
