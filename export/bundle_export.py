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

import gc
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mobilevlm import __version__
from mobilevlm.config import ClipVisionConfig
from mobilevlm.errors import BundleError, at
from mobilevlm.export import quantize
from mobilevlm.export.calibration import calibration_images, calibration_split, image_files
from mobilevlm.export.onnx_bundle import (
    ONNX_PRECISIONS,
    embedding_tables,
    onnx_artefact,
    write_embeddings,
    write_float_decoder,
    write_quantized_decoder,
)
from mobilevlm.export.onnx_vision import export_vision
from mobilevlm.export.profile import StageProfile
from mobilevlm.manifest import (
    COMPONENTS,
    DEFAULT_MODEL_SOURCE,
    GGUF_PRECISIONS,
    MANIFEST_FILE,
    NPU_PARTS,
    NPUS,
    PRECISIONS,
    TOKENIZER_FILE,
    Artefact,
    BundleManifest,
)
from mobilevlm.reference.checkpoint import atomic_directory
from mobilevlm.reference.model import MobileVLM
from mobilevlm.runtime.heap import give_back
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
    npu_parts: Sequence[str] | None = None,
) -> list[str]:
    """Refuse unknown formats, precisions, NPUs, NPU parts or SoCs, and a target that exists
    but is not a bundle; returns the precisions to export."""
    chosen = plan_precisions(formats, precisions)
    if npu is not None and npu not in NPUS:
        raise BundleError(f"unknown NPU {npu!r} (expected one of {', '.join(NPUS)})")
    if npu_parts is not None:
        if npu is None:
            raise BundleError("--npu-parts names what runs on the NPU: it needs --npu")
        unknown = [p for p in npu_parts if p not in NPU_PARTS]
        if unknown or not npu_parts:
            raise BundleError(
                f"NPU parts must be among {', '.join(NPU_PARTS)}, got {', '.join(npu_parts)}"
            )
        if "decode" in npu_parts and "prefill" not in npu_parts:
            raise BundleError(
                "the NPU's decode graph reads the cache its prefill graph fills: "
                "add prefill to --npu-parts"
            )
        if set(npu_parts) & {"prefill", "decode"} and not set(chosen) & set(ONNX_PRECISIONS):
            raise BundleError(
                "the LLM's NPU graphs run with an ONNX bundle's embeddings and "
                "decoder: export an ONNX precision too"
            )
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
    profile: StageProfile | None = None,
    consume: bool = False,
    npu_parts: Sequence[str] | None = None,
) -> BundleManifest:
    """Export ``model`` (made float32 in place) into the bundle directory ``target``,
    replacing an older bundle there. ``precisions`` None: every precision of each format.
    ``npu``: add graphs for that NPU (``qnn``), compiled for ``soc`` (default
    :data:`~mobilevlm.runtime.ort.qnn.DEFAULT_SOC`) and calibrated on ``calibration_dir``
    (required unless the model is the built-in one); ``npu_parts``: which of the vision
    graph and the LLM's prefill and decode graphs (these with an ONNX precision only: they
    read its embedding table) get an NPU form (None: all of them). ``profile``: where the
    caller's earlier stages (the model's assembly) were timed; its record, with the
    export's own stages, goes into ``bundle.json``.

    The stages that read the model's weights run first (the reference's answers for the
    parity checks, the LLM's float files, then the vision encoder's graphs); the rest reads
    only files. ``consume``: the caller has no further use for ``model``, whose LLM and then
    vision weights are released as soon as no stage needs them, so that the quantizers
    and the parity checks never run beside a float copy of the model (at a 1.4B LLM's size,
    5 GiB)."""
    from tqdm.auto import tqdm

    profile = profile or StageProfile()
    profile.stage("inputs")
    target = Path(target)
    precisions = check_request(target, precisions, formats, npu, soc, npu_parts)
    onnx_precisions = [p for p in PRECISIONS if p in precisions]
    gguf_precisions = [p for p in GGUF_PRECISIONS if p in precisions]
    model = model.float().eval()
    calibration = npu_images = None
    if any(p not in UNQUANTIZED for p in precisions):  # read images before any slow work
        calibration = calibration_images(model.config.preprocess, calibration_dir)
    llm_parts: list[str] = []
    if npu is not None:
        check_npu_calibration(calibration_dir, source)
        wanted = npu_parts or NPU_PARTS
        llm_parts = [p for p in ("prefill", "decode") if p in wanted and onnx_precisions]
        if "vision" in wanted:
            npu_images = calibration_split(model.config.preprocess, calibration_dir)
    mmproj_skipped = None
    if gguf_precisions:
        from mobilevlm.export import gguf_bundle

        mmproj_skipped = gguf_bundle.mmproj_skipped(model)

    steps = ["parity reference"] if check_parity else []
    if "int4" in onnx_precisions or llm_parts:
        steps.append("int4 calibration")
    if onnx_precisions:
        steps += ["decoder", "embeddings"]
    if gguf_precisions:
        steps.append("llm f16")
    if llm_parts:
        steps.append("llm qnn graphs")
    steps.append("vision")
    if gguf_precisions and mmproj_skipped is None:
        steps.append("mmproj")
    if npu_images is not None:
        steps.append("vision qnn graph")
    steps += [f"decoder {p}" for p in onnx_precisions if p != "fp32"]
    steps += [f"llm {p}" for p in gguf_precisions if p != "f16"]
    if calibration is not None:
        steps.append("vision int8")
    if npu_images is not None:
        steps += ["vision qnn", "vision qnn context"]
    for part in llm_parts:
        steps += [f"{part} qnn", f"{part} qnn context"]
    if llm_parts:
        steps.append("llm qnn parity")
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
        gc.collect()  # what the previous step let go of, back to the system before the next
        give_back()
        profile.stage(name)

    artefacts: list[Artefact] = []
    answers = continuations = None
    with (
        atomic_directory(target) as out,
        tempfile.TemporaryDirectory() as tmp,
        torch.inference_mode(),
    ):
        scratch = Path(tmp)
        if check_parity:
            step("parity reference")
            if onnx_precisions:
                from mobilevlm.export.parity import parity_prompts, reference_answers
                from mobilevlm.reference.backend import TorchBackend

                answers = reference_answers(TorchBackend(model), parity_prompts())
            if gguf_precisions:
                continuations = gguf_bundle.reference_continuations(model)

        sequences = heldout = None
        if "int4" in onnx_precisions or llm_parts:
            step("int4 calibration")
            sequences = int4_calibration(model, calibration_dir)
            if llm_parts:
                from mobilevlm.export.decoder_calibration import heldout_sequences
                from mobilevlm.export.qnn_llm import HELDOUT
                from mobilevlm.reference.backend import TorchBackend

                heldout = heldout_sequences(TorchBackend(model), HELDOUT)
        if onnx_precisions:
            step("decoder")
            fp32_decoder, made = write_float_decoder(model, out, scratch, onnx_precisions)
            artefacts += made
            step("embeddings")
            artefacts += write_embeddings(model, out, onnx_precisions)
        if gguf_precisions:
            step("llm f16")
            f16, f16_details, made = gguf_bundle.write_f16_llm(model, out, scratch, gguf_precisions)
            artefacts += made
        if llm_parts:
            step("llm qnn graphs")
            from mobilevlm.export.qnn_llm import save_static_graphs

            static_llm = save_static_graphs(model, scratch, llm_parts)
        if consume:
            _release(model.language_model)

        step("vision")
        export_vision(model, out / "vision.onnx")
        artefacts.append(
            onnx_artefact(out, "vision", "fp32", "vision.onnx", {"exporter": "torch.onnx"})
        )
        if gguf_precisions and mmproj_skipped is None:
            step("mmproj")
            artefacts.append(gguf_bundle.write_mmproj_artefact(model, out))
        if npu_images is not None:
            step("vision qnn graph")
            static_vision = export_vision(model, scratch / "vision_static.onnx", for_npu=True)
        if consume:
            _release(model.vision_tower, model.projector)

        adjust = None  # int4's activation-aware scales: the CPU and NPU 4-bit weights share them
        for precision in onnx_precisions:
            if precision != "fp32":
                step(f"decoder {precision}")
                if precision == "int4" and sequences:
                    adjust = quantize.int4_adjustments(fp32_decoder, model.config.llm, sequences)
                artefacts.append(
                    write_quantized_decoder(
                        fp32_decoder, out, precision, model.config.llm, sequences, adjust
                    )
                )
                if adjust is not None:  # GPTQ's codes are written (the NPU rounds its own)
                    adjust.rounded.clear()
                    give_back()
        for precision in gguf_precisions:
            if precision != "f16":
                step(f"llm {precision}")
                artefacts.append(gguf_bundle.write_quantized_llm(f16, out, precision, f16_details))
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
                static_vision, out, scratch, *npu_images, soc or qnn.DEFAULT_SOC, step
            )
        if llm_parts:
            from mobilevlm.export.qnn_llm import W4A16, npu_llm_precision, write_qnn_llm

            if adjust is None and sequences and npu_llm_precision(model.config.llm) == W4A16:
                adjust = quantize.int4_adjustments(fp32_decoder, model.config.llm, sequences)
            smallest = embedding_tables(onnx_precisions)[-1][0]
            table = np.load(out / f"embeddings_{smallest}.npy", mmap_mode="r")
            artefacts += write_qnn_llm(
                static_llm, llm_parts, out, scratch, model.config.llm, sequences, heldout,
                table, soc or qnn.DEFAULT_SOC, step, adjust,
            )  # fmt: skip
            del table

        (out / TOKENIZER_FILE).write_text(model.tokenizer.to_str(), encoding="utf-8")
        artefacts.sort(key=lambda a: COMPONENTS.index(a.component))  # stable: precisions in order
        exporter = {
            "mobilevlm": __version__,
            "onnxruntime": _version("onnxruntime"),
            **({"llama_cpp_python": _version("llama_cpp")} if gguf_precisions else {}),
            "source": source,
            **({"random_weights": True} if random_weights else {}),
            **({"mmproj_skipped": mmproj_skipped} if mmproj_skipped else {}),
        }
        BundleManifest(model.config, tuple(artefacts), exporter=exporter).write(out)
        if check_parity:
            step("parity")
            report = {}
            if answers is not None:
                from mobilevlm.export.parity import bundle_parity

                report = bundle_parity(answers, out)
            if continuations is not None:
                report["gguf"] = gguf_bundle.gguf_parity(
                    continuations, out, artefacts, model.config.llm.hidden_size
                )
            exporter["parity"] = report
        exporter["profile"] = profile.finish()
        manifest = BundleManifest(model.config, tuple(artefacts), exporter=exporter)
        manifest.write(out)
        bar.update()
    bar.close()
    return manifest


def int4_calibration(model: MobileVLM, calibration_dir: str | Path | None) -> list:
    """The sequences the int4 decoder's activation-aware scales are chosen on: Shapes-VQA
    training scenes for the built-in model, the calibration images for a checkpoint (none
    without them: the int4 decoder is then plain round-to-nearest)."""
    from mobilevlm.export.decoder_calibration import calibration_sequences, large_model_counts
    from mobilevlm.export.quantize import LARGE_LLM_PARAMETERS
    from mobilevlm.reference.backend import TorchBackend

    counts = {}
    if model.config.llm.parameters >= LARGE_LLM_PARAMETERS:
        counts = large_model_counts()
    images = None if calibration_dir is None else image_files(calibration_dir)
    return calibration_sequences(TorchBackend(model), images, **counts)


def _release(*modules: torch.nn.Module) -> None:
    """Free the weights of ``modules`` (moved to the meta device: shapes without storage);
    the next step hands the pages back to the system."""
    for module in modules:
        module.to("meta")


def _version(module: str) -> str:
    import importlib

    return importlib.import_module(module).__version__
