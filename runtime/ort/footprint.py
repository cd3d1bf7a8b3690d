"""What ONNX Runtime costs in memory: this engine's lines of the memory plan.

Measured on this project's machine (2-core AMD EPYC, Linux, glibc, onnxruntime
1.31.1) with ``python -m mobilevlm.bench.memory --measure BUNDLE``, each part in a
fresh process; docs/benchmarks.md has the numbers. The vision session's costs are
also llama.cpp's in hybrid mode, where the same ONNX vision graph runs.
"""

from __future__ import annotations

from mobilevlm.manifest import Artefact, BundleManifest
from mobilevlm.runtime.engine import EngineMemory
from mobilevlm.runtime.options import ONNXRUNTIME, LoadOptions
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.vision import vision_npu

MIB = 2**20
# VmHWM after importing numpy, tokenizers, onnxruntime and the runtime
BASE_BYTES = 58 * MIB
# the vision session: VmHWM growth of creating it and encoding one image: 83 MiB for the
# 13.3 MiB fp32 EfficientNet-Lite0 at 384 px (74-84 at 320 px), 11 MiB for a tiny ViT at
# 56 px; beyond its file, a fixed part and activations per input pixel
VISION_BYTES = (10 * MIB, 420)  # fixed, per pixel
# ... and the file counts more than once while the session is created (the model proto and
# its initializers are held together): MobileVLM_V2-1.7B's ViT-L/14-336 peaked at 1,818 MiB
# for its 1,134 MiB fp32 graph and at 1,090 MiB for its 492 MiB QDQ int8 graph; per precision
VISION_FILE_FACTOR = {"fp32": 1.6, "int8": 2.1}
# VmRSS growth that stays after the session is freed (glibc keeps the freed heap): 34-55
# MiB of the default model's 74-84, 873 of the QDQ ViT-L's 1,090
VISION_KEPT_SHARE = {"fp32": 0.6, "int8": 0.8}
# the vision session on QNN's HTP, in host memory: the HTP libraries and the graph's
# context. The default model's 4.5 MiB w8a8 context (x86-64 simulator, onnxruntime-qnn
# 2.7.0): 100 MiB at the peak, 84 kept, loading the EPContext model; 150 and 138 compiling
# the 3.8 MiB QDQ graph instead. Beyond its files, a fixed part and the files twice.
NPU_VISION_BYTES = {EPCONTEXT: 91 * MIB, "onnx": 142 * MIB}  # fixed, by what is loaded
NPU_VISION_FILE_FACTOR = 2.0
NPU_VISION_KEPT_SHARE = 0.85
# working memory (arenas, packed weights, graph copies): the measured peak less every other
# line, one answer at 512, 2048 and 4096 positions: 18-26 MiB at int4 and int8, 39-52 at
# fp32 (it grows with the weights it packs)
WORKING_FIXED, WORKING_WEIGHTS_SHARE = 24 * MIB, 0.055


def vision_memory(
    manifest: BundleManifest, vision: Artefact, context: Artefact | None, options: LoadOptions
) -> tuple[int, int, str]:
    """The vision session's peak while it encodes, what stays of it once released, and
    where it runs ("session", or the NPU's host memory). llama.cpp's mmproj (mtmd) is
    counted as a session too."""
    npu = vision.details.get("npu")
    if npu is not None and npu == vision_npu(options):
        loaded = context or vision  # the precompiled model, where exported
        session = NPU_VISION_BYTES[loaded.format] + int(NPU_VISION_FILE_FACTOR * loaded.bytes)
        return session, int(session * NPU_VISION_KEPT_SHARE), "on the QNN HTP, host memory"
    fixed, per_pixel = VISION_BYTES
    factor = VISION_FILE_FACTOR.get(vision.precision, 1.0)  # the mmproj: loaded once
    session = int(factor * vision.bytes) + per_pixel * manifest.model.preprocess.image_size**2
    kept = fixed + int(session * VISION_KEPT_SHARE.get(vision.precision, 0.6))
    return fixed + session, kept, "session"


def engine_memory(manifest: BundleManifest, selection, options: LoadOptions) -> EngineMemory:
    """ONNX Runtime's lines for ``selection``: the decoder's external data is read (or
    mapped and packed), the token embedding table is read row by row from its file (so it
    stays in the page cache, not resident), the KV cache is fp32 and fills as positions
    do, and releasing the vision encoder after the image prefill makes room for it."""
    weights = selection.decoder.bytes
    vision, kept, where = vision_memory(
        manifest, selection.vision, selection.vision_context, options
    )
    return EngineMemory(
        backend=ONNXRUNTIME,
        precision=selection.precision,
        fixed=(
            ("process and onnxruntime library", BASE_BYTES),
            (f"LLM weights ({selection.precision} decoder)", weights),
        ),
        weights=weights,
        vision=vision,
        vision_kept=kept,
        vision_where=where,
        kv_label="fp32",
        kv_bytes_per_position=manifest.model.llm.kv_cache_bytes_per_token(4),
        kv_positions_multiple=1,
        working_fixed=int(WORKING_FIXED + WORKING_WEIGHTS_SHARE * weights),
        working_per_position=0,
        release_makes_room=True,
    )
