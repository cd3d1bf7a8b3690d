"""The ONNX half of a bundle: decoder graphs per precision and the embedding tables.

What reads the torch model (the tables, the fp32 graph) is apart from what reads only
the fp32 graph's file (the quantized decoders), so an export can let the model's weights
go before it quantizes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from mobilevlm.config import LLMConfig
from mobilevlm.export import quantize
from mobilevlm.export.activation_scaling import ActivationAware
from mobilevlm.export.external_data import ExternalData, data_file_name
from mobilevlm.export.onnx_decoder import build_decoder
from mobilevlm.manifest import Artefact, BundleFile
from mobilevlm.reference.model import MobileVLM

ONNX_PRECISIONS = ("fp32", "int8", "int4")  # fp16: not faster on x86 CPUs (see docs)


def onnx_artefact(
    root: Path, component: str, precision: str, graph: str, details: dict
) -> Artefact:
    files = [graph] + ([data_file_name(graph)] if (root / data_file_name(graph)).exists() else [])
    return Artefact(
        component, precision, "onnx", tuple(BundleFile.describe(root, f) for f in files), details
    )


def save_decoder(model: MobileVLM, path: Path) -> None:
    """The fp32 decoder graph with its weights as external data beside it."""
    save_llm_graph(model, path, build_decoder)


def save_llm_graph(model: MobileVLM, path: Path, build: Callable[..., onnx.ModelProto]) -> None:
    """An fp32 graph of ``model``'s LLM, ``build(config, weights, inv_freq, attention_scaling,
    external=...)`` (:func:`~mobilevlm.export.onnx_decoder.build_decoder`'s signature), with
    its weights written as external data beside it as they are made."""
    lm = model.language_model
    weights = {k: v.detach().float().numpy() for k, v in lm.state_dict().items()}
    rotary = lm.model.rotary_emb
    location = data_file_name(path.name)
    with open(path.parent / location, "wb") as external:
        graph = build(
            model.config.llm,
            weights,
            rotary.inv_freq.float().numpy(),
            float(rotary.attention_scaling),
            external=ExternalData(external, location),
        )
    onnx.save_model(graph, str(path))


def embedding_tables(precisions: Sequence[str]) -> list[tuple[str, type]]:
    """The fp32 pipeline gathers from an fp32 table; quantized ones share an fp16 table
    (half the memory; its rounding is far below int8/int4 weight error)."""
    tables = [("fp32", np.float32)] if "fp32" in precisions else []
    if any(p != "fp32" for p in precisions):
        tables.append(("fp16", np.float16))
    return tables


DECODER = "decoder.onnx"
DECODER_DETAILS = {"builder": "mobilevlm.export.onnx_decoder", "attention": "GroupQueryAttention"}


def write_embeddings(model: MobileVLM, out: Path, precisions: Sequence[str]) -> list[Artefact]:
    """The token embedding tables the ONNX precisions gather from."""
    artefacts = []
    table = model.language_model.get_input_embeddings().weight.detach().float().numpy()
    for precision, dtype in embedding_tables(precisions):
        name = f"embeddings_{precision}.npy"
        np.save(out / name, table.astype(dtype))
        artefacts.append(
            Artefact("embeddings", precision, "npy", (BundleFile.describe(out, name),))
        )
    return artefacts


def write_float_decoder(model: MobileVLM, out: Path, scratch: Path, precisions: Sequence[str]):
    """The fp32 decoder graph: in the bundle when fp32 is exported, else in ``scratch`` for
    the quantizers. Returns its path and its artefacts (none when it is scratch)."""
    path = (out if "fp32" in precisions else scratch) / DECODER
    save_decoder(model, path)
    if "fp32" not in precisions:
        return path, []
    return path, [onnx_artefact(out, "decoder", "fp32", DECODER, DECODER_DETAILS)]


def write_quantized_decoder(
    fp32_graph: Path,
    out: Path,
    precision: str,
    config: LLMConfig,
    calibration: Sequence[np.ndarray] | None = None,
    adjust: ActivationAware | None = None,
) -> Artefact:
    """The decoder at ``precision`` (int8, int4), quantized from the fp32 graph's file; int4
    scaled for the activations of ``calibration``'s sequences when there are some (``adjust``:
    the scales, when chosen already)."""
    name = f"decoder_{precision}.onnx"
    if precision == "int8":
        made = quantize.quantize_decoder_int8(fp32_graph, out / name)
    else:
        made = quantize.quantize_decoder_int4(fp32_graph, out / name, config, calibration, adjust)
    return onnx_artefact(out, "decoder", precision, name, {**DECODER_DETAILS, **made})
