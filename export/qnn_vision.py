"""The vision graph in the form Qualcomm's HTP takes, plus its precompiled EPContext model.

The steps are ONNX Runtime's own for QNN: a static-shape fp32 graph without
contrib-op fusions (:func:`~mobilevlm.export.onnx_vision.export_vision` with
``for_npu``, exported by the caller while the model's weights are in memory),
``qnn_preprocess_model``, QDQ quantization with
``get_qnn_qdq_config`` calibrated on real images, then one session on the QNN
provider with CPU fallback disabled and ``ep.context_enable`` set, which writes
the compiled context binary for the named SoC. Activations are 8 or 16 bits,
chosen by the image-token cosine against fp32 on held-out images (CPU QDQ
runs, fast): 16-bit (w8a16, the usual HTP choice) unless 8-bit is as close.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mobilevlm.errors import MissingDependencyError, ProviderError
from mobilevlm.export.onnx_bundle import onnx_artefact
from mobilevlm.export.parity import cosine
from mobilevlm.export.quantize import STRIDED, Calibration, quiet_root_logger
from mobilevlm.manifest import Artefact, BundleFile
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.graph_io import PIXEL_VALUES
from mobilevlm.runtime.ort.providers import QNN, create_session, resolve_providers
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.vision import CONTEXT_ENABLE, CONTEXT_FILE, OnnxVisionEncoder

log = logging.getLogger(__name__)

GRAPH = "vision_qnn.onnx"
CONTEXT = "vision_qnn_ctx.onnx"
ACTIVATIONS = {"w8a16": "uint16", "w8a8": "uint8"}
QUANT_TYPES = {"uint16": "QUInt16", "uint8": "QUInt8"}  # onnxruntime's QuantType names
AS_CLOSE = 0.001  # 8-bit activations are chosen when their cosine is within this of 16-bit


def _cosine_over(encoder: OnnxVisionEncoder, images: Sequence[np.ndarray], fp32) -> float:
    """The minimum image-token cosine against the fp32 graph's embeddings ``fp32``."""
    pairs = zip(images, fp32, strict=True)
    return float(min(cosine(encoder.encode(img), ref).min() for img, ref in pairs))


def _quantize(prepared: Path, target: Path, images: Sequence[np.ndarray], activation: str) -> None:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    config = get_qnn_qdq_config(
        str(prepared),
        Calibration(PIXEL_VALUES, images),
        activation_type=getattr(QuantType, QUANT_TYPES[activation]),
        weight_type=QuantType.QUInt8,
        # per-tensor weights cost EfficientNet's depthwise convolutions most of their
        # accuracy (image-token cosine 0.77 against 0.99 per channel, w8a16)
        per_channel=True,
    )
    config.extra_options.update(STRIDED)
    quantize(str(prepared), str(target), config)


def compile_context(graph: Path, context: Path, soc: qnn.Soc) -> None:
    """One QNN session over ``graph`` (fallback disabled) that writes its EPContext model."""
    for stale in context.parent.glob(f"{context.stem}*"):  # ORT refuses to overwrite them
        stale.unlink()
    providers = resolve_providers(["qnn!"], options=soc.provider_options())
    entries = {
        CONTEXT_ENABLE: "1",
        CONTEXT_FILE: str(context),
        "ep.context_embed_mode": "0",  # the context binary beside the model, not inside it
    }
    create_session(graph, providers, config=entries, whole_graph=True)


@quiet_root_logger()
def write_qnn_vision(
    static: Path,
    out: Path,
    scratch: Path,
    calibration: Sequence[np.ndarray],
    heldout: Sequence[np.ndarray],
    soc_name: str,
    step: Callable[[str], None],
) -> list[Artefact]:
    """The QDQ vision graph for QNN's HTP and its EPContext model for ``soc_name``, from
    ``static`` (:func:`~mobilevlm.export.onnx_vision.export_vision` ``for_npu``), with the
    parity measured on ``heldout`` (preprocessed images) recorded in their details."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    soc = qnn.soc(soc_name)
    if not qnn.plugin_devices():
        raise MissingDependencyError(
            f"--npu qnn compiles the HTP context with {qnn.PLUGIN_PACKAGE}, which is not "
            f"installed here: {qnn.INSTALL_NPU_EXTRA}"
        )
    step("vision qnn")
    prepared = scratch / "vision_prepared.onnx"
    if not qnn_preprocess_model(str(static), str(prepared)):
        shutil.copyfile(static, prepared)  # nothing to change: the graph is already in form

    cpu = resolve_providers(["cpu"])
    reference = OnnxVisionEncoder(static, cpu)
    fp32 = [reference.encode(img) for img in heldout]
    measured: dict[str, float] = {}
    for name, activation in ACTIVATIONS.items():
        _quantize(prepared, scratch / f"vision_{name}.onnx", calibration, activation)
        candidate = OnnxVisionEncoder(scratch / f"vision_{name}.onnx", cpu)
        measured[name] = round(_cosine_over(candidate, heldout, fp32), 6)
    precision = "w8a8" if measured["w8a8"] >= measured["w8a16"] - AS_CLOSE else "w8a16"
    shutil.move(scratch / f"vision_{precision}.onnx", out / GRAPH)

    step("vision qnn context")
    compile_context(out / GRAPH, out / CONTEXT, soc)
    binaries = sorted(p.name for p in out.glob(f"{Path(CONTEXT).stem}*.bin"))
    if not (out / CONTEXT).is_file() or not binaries:
        raise ProviderError(f"{QNN} wrote no EPContext model for {soc.name}")
    # every HTP session of a process with the same SoC options: the simulator has failed
    # runs ("QNN graph execute error") of a graph compiled without them after one with them
    on_npu = resolve_providers(["qnn!"], options=soc.provider_options())
    started = time.perf_counter()
    simulated = OnnxVisionEncoder(out / CONTEXT, on_npu, whole_graph=True)
    loaded = time.perf_counter()
    on_npu_cosine = _cosine_over(simulated, heldout, fp32)
    encode_ms = (time.perf_counter() - loaded) * 1000 / len(heldout)
    parity = {
        "heldout_images": len(heldout),
        "token_cosine_min": {
            "fp32": 1.0,
            **{f"{name} cpu": value for name, value in measured.items()},
            f"{precision} qnn context": round(on_npu_cosine, 6),
        },
        "simulated": qnn.simulated(),  # the times below are then not a phone's
        "context_load_ms": round((loaded - started) * 1000, 1),
        "encode_ms": round(encode_ms, 1),
    }
    details = {
        "npu": qnn.NPU,
        "shapes": "static, batch 1",
        "quantization": "onnxruntime get_qnn_qdq_config (QDQ, MinMax)",
        "weights": "uint8 per-channel",
        "activations": ACTIVATIONS[precision],
        "calibration_images": len(calibration),
        "parity": parity,
    }
    graph = onnx_artefact(out, "vision", precision, GRAPH, details)
    files = (BundleFile.describe(out, CONTEXT), *(BundleFile.describe(out, b) for b in binaries))
    context = Artefact(
        "vision",
        precision,
        EPCONTEXT,
        files,
        {
            "npu": qnn.NPU,
            "compiled_from": GRAPH,
            "soc": soc.name,
            "soc_name": soc.marketing,
            "soc_model": soc.soc_model,
            "htp_arch": soc.htp_arch,
            "qnn_plugin": qnn.plugin_version(),
        },
    )
    return [graph, context]
