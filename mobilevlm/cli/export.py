"""``mobilevlm export``: a checkpoint to a bundle (ONNX graphs and/or GGUF files, quantized)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilevlm.cli.describe import describe_bundle
from mobilevlm.cli.options import comma_list, load_reference_model
from mobilevlm.default_model.bundle import INSTALL_EXPORT_EXTRA
from mobilevlm.errors import MissingDependencyError
from mobilevlm.manifest import DEFAULT_MODEL_SOURCE, NPUS
from mobilevlm.runtime.ort import qnn


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "export",
        help="export a checkpoint to a bundle (ONNX graphs and/or GGUF files, quantized)",
        description="Export a checkpoint into a bundle directory: the vision encoder with its "
        "projector as ONNX (always), and per format the decoder with a KV cache (ONNX "
        "Runtime's GroupQueryAttention) and the embedding table, or the LLM as GGUF with its "
        "tokenizer and chat template and the mmproj for llama.cpp's mtmd; plus bundle.json. "
        "Quantized precisions come from onnxruntime.quantization and llama.cpp's quantizer "
        "(its notes summarized, one line per fallback; -v shows them all). The bundle is "
        "written to a temporary directory, checked against the PyTorch reference and renamed "
        "into place.",
    )
    ex.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        metavar="CHECKPOINT",
        help="checkpoint directory (default: the built-in Shapes-VQA model)",
    )
    ex.add_argument("-o", "--output", type=Path, required=True, metavar="BUNDLE_DIR")
    ex.add_argument(
        "--formats",
        default="onnx",
        metavar="LIST",
        help="comma-separated: 'onnx' (default; ONNX Runtime) and/or 'gguf' (llama.cpp: the "
        "LLM, plus an mmproj when llama.cpp's mtmd can run the vision tower)",
    )
    ex.add_argument(
        "--precisions",
        metavar="LIST",
        help="comma-separated among fp32, int8, int4 (onnx) and f16, q8_0, q4_k_m (gguf); "
        "a format none of whose precisions is named gets all of them",
    )
    ex.add_argument(
        "--calibration-images",
        type=Path,
        metavar="DIR",
        help="images to calibrate the static int8 vision graph and the NPU graph (default, "
        "for the built-in model only with --npu: 32 generated Shapes-VQA scenes)",
    )
    ex.add_argument(
        "--npu",
        choices=NPUS,
        help="add graphs for this NPU: 'qnn' (Qualcomm Hexagon through ONNX Runtime's QNN "
        "provider): the vision graph (QDQ w8a16 or w8a8 by measured accuracy) and the LLM's "
        "prefill and decode graphs (static; w16a16, w4a16 for an LLM of a billion parameters "
        "or more), each with its EPContext model "
        "precompiled for --soc (needs the [npu] extra; docs/npu.md)",
    )
    ex.add_argument(
        "--npu-parts",
        type=comma_list,
        default=None,
        metavar="PARTS",
        help="with --npu: which parts get an NPU form, of vision, prefill, decode (default: "
        "all three)",
    )
    ex.add_argument(
        "--soc",
        metavar="NAME",
        help=f"with --npu qnn: the Snapdragon to precompile for, by part number "
        f"(default {qnn.DEFAULT_SOC}, {qnn.SOCS[qnn.DEFAULT_SOC].marketing}; known: "
        f"{', '.join(qnn.SOCS)})",
    )
    ex.add_argument(
        "--vision-tower", type=Path, metavar="DIR", help="local CLIP vision tower (as for `run`)"
    )
    ex.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads")
    ex.add_argument(
        "--no-parity", action="store_true", help="skip the check against the PyTorch reference"
    )
    ex.add_argument("--json", action="store_true", help="print the manifest as JSON")
    ex.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    formats = comma_list(args.formats)
    precisions = comma_list(args.precisions) if args.precisions else None
    try:
        from mobilevlm.export.bundle_export import (
            check_npu_calibration,
            check_request,
            export_bundle,
        )
        from mobilevlm.export.profile import StageProfile
        from mobilevlm.reference import has_random_weights
    except ImportError as exc:
        raise MissingDependencyError(
            f"export needs the [export] extra ({exc.name} is missing): " + INSTALL_EXPORT_EXTRA
        ) from exc
    source = str(args.checkpoint) if args.checkpoint else DEFAULT_MODEL_SOURCE
    # before the model loads
    check_request(args.output, precisions, formats, args.npu, args.soc, args.npu_parts)
    if args.npu:
        check_npu_calibration(args.calibration_images, source)
    profile = StageProfile("assembly")
    model = load_reference_model(args.checkpoint, args.vision_tower, args.threads)
    manifest = export_bundle(
        model,
        args.output,
        precisions,
        formats,
        calibration_dir=args.calibration_images,
        source=source,
        check_parity=not args.no_parity,
        random_weights=args.checkpoint is not None and has_random_weights(args.checkpoint),
        npu=args.npu,
        soc=args.soc,
        profile=profile,
        consume=True,
        npu_parts=args.npu_parts,
    )
    if args.json:
        print(json.dumps(manifest.to_dict()))
    else:
        print(describe_bundle(args.output, manifest))
    return 0
