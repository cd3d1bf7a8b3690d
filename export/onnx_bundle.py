"""Checkpoint -> ONNX bundle: graphs, quantized variants, embeddings table, manifest.

Everything is written into a temporary sibling of the target and renamed at
the end, so an interrupted export leaves nothing that looks like a bundle.
Before the rename, the bundle is opened with the runtime itself and checked
against the torch reference (:mod:`mobilevlm.export.parity`); the measured
agreement is recorded in ``bundle.json``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from mobilevlm.export import quantize
from mobilevlm.export.calibration import calibration_images
from mobilevlm.export.onnx_decoder import build_decoder
from mobilevlm.export.onnx_vision import export_vision

from mobilevlm import __version__
from mobilevlm.bundle import (
    MANIFEST_FILE,
    PRECISIONS,
    TOKENIZER_FILE,
    Artefact,
    BundleFile,
    BundleManifest,
)
from mobilevlm.checkpoint import atomic_directory
from mobilevlm.errors import BundleError, at
from mobilevlm.model import MobileVLM

ONNX_PRECISIONS = ("fp32", "int8", "int4")  # fp16: not faster on x86 CPUs (see docs)


def _external_data_name(graph: str) -> str:
    return f"{graph}.data"


def _onnx_artefact(root: Path, component: str, precision: str, graph: str, details: dict):
    files = [graph] + (
        [_external_data_name(graph)] if (root / _external_data_name(graph)).exists() else []
    )
    return Artefact(
        component, precision, "onnx", tuple(BundleFile.describe(root, f) for f in files), details
    )


def save_decoder(model: MobileVLM, path: Path) -> None:
    """The fp32 decoder graph with its weights as external data beside it."""
    lm = model.language_model
    weights = {k: v.detach().float().numpy() for k, v in lm.state_dict().items()}
    rotary = lm.model.rotary_emb
    graph = build_decoder(
        model.config.llm, weights, rotary.inv_freq.float().numpy(), float(rotary.attention_scaling)
    )
    onnx.save_model(
        graph,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=_external_data_name(path.name),
        size_threshold=1024,
    )


def embedding_tables(precisions: Sequence[str]) -> list[tuple[str, type]]:
    """The fp32 pipeline gathers from an fp32 table; quantized ones share an fp16 table
    (half the memory; its rounding is far below int8/int4 weight error)."""
    tables = [("fp32", np.float32)] if "fp32" in precisions else []
    if any(p != "fp32" for p in precisions):
        tables.append(("fp16", np.float16))
    return tables


def check_request(target: str | Path, precisions: Sequence[str]) -> None:
    """Refuse unknown precisions, and a target that exists but is not a bundle."""
    unknown = [p for p in precisions if p not in ONNX_PRECISIONS]
    if unknown or not precisions:
        raise BundleError(
            f"ONNX precisions must be among {', '.join(ONNX_PRECISIONS)}, "
            f"got {', '.join(precisions) or 'none'}"
        )
    target = Path(target)
    if target.exists() and not (target / MANIFEST_FILE).is_file():
        if not target.is_dir() or any(target.iterdir()):
            raise BundleError(at(target, "exists and is not a bundle; not replacing it"))


def export_onnx_bundle(
    model: MobileVLM,
    target: str | Path,
    precisions: Sequence[str] = ONNX_PRECISIONS,
    calibration_dir: str | Path | None = None,
    source: str = "",
    random_weights: bool = False,
    check_parity: bool = True,
    progress: bool | None = None,
) -> BundleManifest:
    """Export ``model`` (made float32 in place) into the bundle directory ``target``,
    replacing an older bundle there."""
    from tqdm.auto import tqdm

    target = Path(target)
    check_request(target, precisions)
    precisions = [p for p in PRECISIONS if p in precisions]
    model = model.float().eval()
    calibration = None
    if "int8" in precisions or "int4" in precisions:  # read images before any slow work
        calibration = calibration_images(model.config.preprocess, calibration_dir)

    steps = ["vision", "embeddings", "decoder"] + [
        f"decoder {p}" for p in precisions if p != "fp32"
    ]
    if calibration is not None:
        steps.append("vision int8")
    if check_parity:
        steps.append("parity")
    disable = not sys.stderr.isatty() if progress is None else not progress
    bar = tqdm(steps, desc="export", unit="step", disable=disable)
    artefacts: list[Artefact] = []
    with (
        atomic_directory(target) as out,
        tempfile.TemporaryDirectory() as scratch,
        torch.inference_mode(),
    ):
        bar.set_postfix_str("vision")
        export_vision(model, out / "vision.onnx")
        artefacts.append(
            _onnx_artefact(out, "vision", "fp32", "vision.onnx", {"exporter": "torch.onnx"})
        )
        bar.update()

        bar.set_postfix_str("embeddings")
        table = model.language_model.get_input_embeddings().weight.detach().float().numpy()
        for precision, dtype in embedding_tables(precisions):
            name = f"embeddings_{precision}.npy"
            np.save(out / name, table.astype(dtype))
            artefacts.append(
                Artefact("embeddings", precision, "npy", (BundleFile.describe(out, name),))
            )
        bar.update()

        bar.set_postfix_str("decoder")
        fp32_dir = out if "fp32" in precisions else Path(scratch)
        save_decoder(model, fp32_dir / "decoder.onnx")
        details = {"builder": "mobilevlm.export.onnx_decoder", "attention": "GroupQueryAttention"}
        if "fp32" in precisions:
            artefacts.append(_onnx_artefact(out, "decoder", "fp32", "decoder.onnx", details))
        bar.update()
        for precision in precisions:
            if precision == "fp32":
                continue
            bar.set_postfix_str(f"decoder {precision}")
            name = f"decoder_{precision}.onnx"
            fp32_graph = fp32_dir / "decoder.onnx"
            if precision == "int8":
                made = quantize.quantize_decoder_int8(fp32_graph, out / name)
            else:
                made = quantize.quantize_decoder_int4(fp32_graph, out / name)
            artefacts.append(_onnx_artefact(out, "decoder", precision, name, {**details, **made}))
            bar.update()

        if calibration is not None:
            bar.set_postfix_str("vision int8")
            made = quantize.quantize_vision_qdq(
                out / "vision.onnx", out / "vision_int8.onnx", calibration
            )
            artefacts.append(_onnx_artefact(out, "vision", "int8", "vision_int8.onnx", made))
            bar.update()

        (out / TOKENIZER_FILE).write_text(model.tokenizer.to_str(), encoding="utf-8")
        manifest = BundleManifest(
            model=model.config,
            artefacts=tuple(artefacts),
            exporter={
                "mobilevlm": __version__,
                "onnxruntime": _ort_version(),
                "source": source,
                **({"random_weights": True} if random_weights else {}),
            },
        )
        manifest.write(out)
        if check_parity:
            bar.set_postfix_str("parity")
            from mobilevlm.export.parity import bundle_parity

            report = bundle_parity(model, out)
            manifest = BundleManifest(
                model.config, manifest.artefacts, exporter={**manifest.exporter, "parity": report}
            )
            manifest.write(out)
            bar.update()
    bar.close()
    return manifest


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
