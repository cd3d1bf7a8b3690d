"""The ONNX half of a bundle: decoder graphs per precision and the embedding tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from mobilevlm.export import quantize
from mobilevlm.export.onnx_decoder import build_decoder
from mobilevlm.manifest import Artefact, BundleFile
from mobilevlm.reference.model import MobileVLM

ONNX_PRECISIONS = ("fp32", "int8", "int4")  # fp16: not faster on x86 CPUs (see docs)


def _external_data_name(graph: str) -> str:
    return f"{graph}.data"


def onnx_artefact(
    root: Path, component: str, precision: str, graph: str, details: dict
) -> Artefact:
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
    location = _external_data_name(path.name)
    with open(path.parent / location, "wb") as external:
        graph = build_decoder(
            model.config.llm,
            weights,
            rotary.inv_freq.float().numpy(),
            float(rotary.attention_scaling),
            external=(external, location),
        )
    onnx.save_model(graph, str(path))


def embedding_tables(precisions: Sequence[str]) -> list[tuple[str, type]]:
    """The fp32 pipeline gathers from an fp32 table; quantized ones share an fp16 table
    (half the memory; its rounding is far below int8/int4 weight error)."""
    tables = [("fp32", np.float32)] if "fp32" in precisions else []
    if any(p != "fp32" for p in precisions):
        tables.append(("fp16", np.float16))
    return tables


def write_onnx_llm(
    model: MobileVLM,
    out: Path,
    scratch: Path,
    precisions: Sequence[str],
    step: Callable[[str], None],
) -> list[Artefact]:
    """The embedding tables and the decoder graph at each ONNX precision."""
    artefacts = []
    step("embeddings")
    table = model.language_model.get_input_embeddings().weight.detach().float().numpy()
    for precision, dtype in embedding_tables(precisions):
        name = f"embeddings_{precision}.npy"
        np.save(out / name, table.astype(dtype))
        artefacts.append(
            Artefact("embeddings", precision, "npy", (BundleFile.describe(out, name),))
        )

    step("decoder")
    fp32_dir = out if "fp32" in precisions else scratch
    save_decoder(model, fp32_dir / "decoder.onnx")
    details = {"builder": "mobilevlm.export.onnx_decoder", "attention": "GroupQueryAttention"}
    if "fp32" in precisions:
        artefacts.append(onnx_artefact(out, "decoder", "fp32", "decoder.onnx", details))
    for precision in precisions:
        if precision == "fp32":
            continue
        step(f"decoder {precision}")
        name = f"decoder_{precision}.onnx"
        fp32_graph = fp32_dir / "decoder.onnx"
        if precision == "int8":
            made = quantize.quantize_decoder_int8(fp32_graph, out / name)
        else:
            made = quantize.quantize_decoder_int4(fp32_graph, out / name, model.config.llm)
        artefacts.append(onnx_artefact(out, "decoder", precision, name, {**details, **made}))
    return artefacts
