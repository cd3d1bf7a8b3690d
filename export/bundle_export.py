"""Checkpoint -> bundle: ONNX graphs and/or GGUF files, the tokenizer, the manifest.

Everything is written into a temporary sibling of the target and renamed at
the end, so an interrupted export leaves nothing that looks like a bundle.
Before the rename, the bundle is checked against the torch reference with
the runtime itself (:mod:`mobilevlm.export.parity` for ONNX,
:func:`~mobilevlm.export.gguf_bundle.gguf_parity` for GGUF); the measured
agreement is recorded in ``bundle.json``.

Every bundle has the fp32 ONNX vision graph: the ONNX backend needs it, and
so does llama.cpp's ``hybrid`` mode, the only way to run a vision tower that
llama.cpp has no graph for. The int8 vision graph (static QDQ for a CNN tower,
dynamic int8 for a ViT) comes with any quantized precision; ``npu="qnn"``
adds the graph in the form Qualcomm's HTP takes and its precompiled EPContext
model (:mod:`mobilevlm.export.qnn_vision`).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mobilevlm import __version__
from mobilevlm.config import ClipVisionConfig
from mobilevlm.errors import BundleError, at
from mobilevlm.export import quantize
from mobilevlm.export.calibration import calibration_images, calibration_split
from mobilevlm.export.onnx_bundle import ONNX_PRECISIONS, onnx_artefact, write_onnx_llm
from mobilevlm.export.onnx_vision import export_vision
from mobilevlm.manifest import (
    DEFAULT_MODEL_SOURCE,
    GGUF_PRECISIONS,
    MANIFEST_FILE,
    NPUS,
    PRECISIONS,
    TOKENIZER_FILE,
    Artefact,
    BundleManifest,
)
from mobilevlm.reference.checkpoint import atomic_directory
from mobilevlm.reference.model import MobileVLM
from mobilevlm.runtime.ort import qnn

FORMATS = ("onnx", "gguf")
UNQUANTIZED = ("fp32", "f16")


def plan_precisions(formats: Sequence[str], precisions: Sequence[str] | None) -> list[str]:
    """The precisions to export: those named (each must belong to a requested format), and
    for a format none of whose precisions is named, all of its precisions."""
    unknown_formats = [f for f in formats if f not in FORMATS]
    if unknown_formats or not formats:
        raise BundleError(
            f"formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}"
        )
    per_format = {"onnx": ONNX_PRECISIONS, "gguf": GGUF_PRECISIONS}
    allowed = [p for f in formats for p in per_format[f]]
    named = list(precisions or [])
    unknown = [p for p in named if p not in allowed]
    if unknown:
        raise BundleError(
            f"precision {', '.join(unknown)} is not one of {', '.join(formats)}'s: "
            f"{', '.join(allowed)}"
        )
    chosen = []
    for f in formats:
        mine = [p for p in per_format[f] if p in named]
        chosen += mine or list(per_format[f])
    return chosen


def check_request(
    target: str | Path,
    precisions: Sequence[str] | None,
    formats: Sequence[str] = ("onnx",),
    npu: str | None = None,
    soc: str | None = None,
) -> list[str]:
    """Refuse unknown formats, precisions, NPUs or SoCs, and a target that exists but is not
    a bundle; returns the precisions to export."""
    chosen = plan_precisions(formats, precisions)
    if npu is not None and npu not in NPUS:
        raise BundleError(f"unknown NPU {npu!r} (expected one of {', '.join(NPUS)})")
    if soc is not None:
        if npu is None:
            raise BundleError("--soc names the NPU's chip: it needs --npu")
        try:
            qnn.soc(soc)
        except KeyError as exc:
            raise BundleError(exc.args[0]) from None
    target = Path(target)
    if target.exists() and not (target / MANIFEST_FILE).is_file():
        if not target.is_dir() or any(target.iterdir()):
            raise BundleError(at(target, "exists and is not a bundle; not replacing it"))
    return chosen


def check_npu_calibration(calibration_dir: str | Path | None, source: str) -> None:
    """An NPU graph is calibrated on the model's own images: refuse a checkpoint without."""
    if calibration_dir is None and source != DEFAULT_MODEL_SOURCE:
        raise BundleError(
            "--npu calibrates the NPU graph on the model's own images: name them with "
            "--calibration-images DIR (the built-in model uses Shapes-VQA scenes)"
        )


def export_bundle(
    model: MobileVLM,
    target: str | Path,
    precisions: Sequence[str] | None = None,
    formats: Sequence[str] = ("onnx",),
    calibration_dir: str | Path | None = None,
    source: str = "",
    random_weights: bool = False,
    check_parity: bool = True,
    progress: bool | None = None,
    npu: str | None = None,
    soc: str | None = None,
) -> BundleManifest:
    """Export ``model`` (made float32 in place) into the bundle directory ``target``,
    replacing an older bundle there. ``precisions`` None: every precision of each format.
    ``npu``: add the vision graph for that NPU (``qnn``), compiled for ``soc`` (default
    :data:`~mobilevlm.runtime.ort.qnn.DEFAULT_SOC`) and calibrated on ``calibration_dir``
    (required unless the model is the built-in one)."""
    from tqdm.auto import tqdm

    target = Path(target)
    precisions = check_request(target, precisions, formats, npu, soc)
    onnx_precisions = [p for p in PRECISIONS if p in precisions]
    gguf_precisions = [p for p in GGUF_PRECISIONS if p in precisions]
    model = model.float().eval()
    calibration = npu_images = None
    if any(p not in UNQUANTIZED for p in precisions):  # read images before any slow work
        calibration = calibration_images(model.config.preprocess, calibration_dir)
    if npu is not None:
        check_npu_calibration(calibration_dir, source)
        npu_images = calibration_split(model.config.preprocess, calibration_dir)

    steps = ["vision"]
    if onnx_precisions:
        steps += ["embeddings", "decoder"] + [
            f"decoder {p}" for p in onnx_precisions if p != "fp32"
        ]
    if gguf_precisions:
        from mobilevlm.export.gguf_bundle import gguf_steps

        steps += gguf_steps(model, gguf_precisions)
    if calibration is not None:
        steps.append("vision int8")
    if npu is not None:
        steps += ["vision qnn", "vision qnn context"]
    if check_parity:
        steps.append("parity")
    disable = not sys.stderr.isatty() if progress is None else not progress
    bar = tqdm(total=len(steps), desc="export", unit="step", disable=disable)

    started: list[str] = []

    def step(name: str) -> None:  # marks the previous step done
        if started:
            bar.update()
        started.append(name)
        bar.set_postfix_str(name)

    artefacts: list[Artefact] = []
    extra: dict = {}
    with (
        atomic_directory(target) as out,
        tempfile.TemporaryDirectory() as scratch,
        torch.inference_mode(),
    ):
        step("vision")
        export_vision(model, out / "vision.onnx")
        artefacts.append(
            onnx_artefact(out, "vision", "fp32", "vision.onnx", {"exporter": "torch.onnx"})
        )
        if onnx_precisions:
            artefacts += write_onnx_llm(model, out, Path(scratch), onnx_precisions, step)
        if gguf_precisions:
            from mobilevlm.export.gguf_bundle import write_gguf_artefacts

            made, extra = write_gguf_artefacts(model, out, Path(scratch), gguf_precisions, step)
            artefacts += made
        if calibration is not None:
            step("vision int8")
            transformer = isinstance(model.config.vision, ClipVisionConfig)
            made = quantize.quantize_vision_int8(
                out / "vision.onnx", out / "vision_int8.onnx", calibration, transformer
            )
            artefacts.append(onnx_artefact(out, "vision", "int8", "vision_int8.onnx", made))
        if npu_images is not None:
            from mobilevlm.export.qnn_vision import write_qnn_vision

            artefacts += write_qnn_vision(
                model, out, Path(scratch), *npu_images, soc or qnn.DEFAULT_SOC, step
            )

        (out / TOKENIZER_FILE).write_text(model.tokenizer.to_str(), encoding="utf-8")
        exporter = {
            "mobilevlm": __version__,
            "onnxruntime": _version("onnxruntime"),
            **({"llama_cpp_python": _version("llama_cpp")} if gguf_precisions else {}),
            "source": source,
            **({"random_weights": True} if random_weights else {}),
            **extra,
        }
        manifest = BundleManifest(model.config, tuple(artefacts), exporter=exporter)
        manifest.write(out)
        if check_parity:
            step("parity")
            report = {}
            if onnx_precisions:
                from mobilevlm.export.parity import bundle_parity

                report = bundle_parity(model, out)
            if gguf_precisions:
                from mobilevlm.export.gguf_bundle import gguf_parity

                report["gguf"] = gguf_parity(model, out, artefacts)
            manifest = BundleManifest(
                model.config, manifest.artefacts, exporter={**exporter, "parity": report}
            )
            manifest.write(out)
        bar.update()
    bar.close()
    return manifest


def _version(module: str) -> str:
    import importlib

    return importlib.import_module(module).__version__
