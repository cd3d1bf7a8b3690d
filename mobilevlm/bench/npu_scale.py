"""MobileVLM_V2-1.7B's geometry on Qualcomm's HTP simulator, one half at a time.

``--part vision``: CLIP ViT-L/14-336 (23 of 24 blocks) + LDPv2 to 2048 before a
tiny stand-in LLM. ``--part llm``: MobileLLaMA-1.4B's prefill and decode graphs
(w4a16: the int4 recipe's 4-bit blocks, 8-bit where it keeps 8 bits) behind a
tiny stand-in vision tower. Random weights (placement and compilation do not
depend on them; nothing can be downloaded here), put through ``export --npu
qnn``'s steps: the static QDQ graphs, whether the HTP takes them whole (CPU
fallback disabled), their EPContext models for ``--soc``, and a run timed on
the simulator (an encode; a prefill chunk and decode steps, with their parity
against the fp32 graph). The LLM's calibration and held-out sequences are rows of
its random embedding table (no text means anything to random weights), and its
4-bit weights are plain round-to-nearest (the activation-aware scales need
calibration of the CPU int4 decoder, which this command does not export).
Simulator times say nothing about a phone's latency.

    python -m mobilevlm.bench.npu_scale [--part vision|llm] [--work DIR] [--soc SM8650]

Expect tens of minutes on a 2-core machine (the simulator is slow), and about 15 GB of
memory for the LLM. A command, not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mobilevlm.bench.scale import CALIBRATION_IMAGES, v2_1_7b_config
from mobilevlm.config import ClipVisionConfig, LLMConfig, ModelConfig, ProjectorConfig


def vision_only_config() -> ModelConfig:
    """V2-1.7B's vision tower and projector before a tiny LLM of the same hidden size."""
    config = v2_1_7b_config()
    llm = LLMConfig(
        vocab_size=320,
        hidden_size=config.llm.hidden_size,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=16,
        num_key_value_heads=16,
    )
    return ModelConfig(vision=config.vision, projector=config.projector, llm=llm)


LLM_CALIBRATION = (6, 96)  # sequences, positions: 3 calibrate (every other), 2 chunks each
LLM_HELDOUT = 40  # positions of the one held-out sequence: a prefill chunk
LLM_PARITY_TOKENS = 3  # greedy tokens: 2 decode steps per side (each about a minute)


class StepClock:
    """The export steps' callback: seconds since the start as each step begins, printed."""

    def __init__(self) -> None:
        self.started, self.steps = time.perf_counter(), {}

    def __call__(self, name: str) -> None:
        self.steps[name] = round(time.perf_counter() - self.started, 1)
        print(f"[{self.steps[name]:7.1f} s] {name}", flush=True)


def write_report(path: Path, report: dict) -> int:
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def llm_only_config() -> ModelConfig:
    """MobileLLaMA-1.4B behind a tiny CLIP of the same output width."""
    config = v2_1_7b_config()
    vision = ClipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=56, patch_size=14,
    )  # fmt: skip
    projector = ProjectorConfig("ldpnetv2", 64, config.llm.hidden_size)
    return ModelConfig(vision=vision, projector=projector, llm=config.llm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.npu_scale")
    parser.add_argument("--part", choices=("vision", "llm"), default="vision")
    parser.add_argument("--work", type=Path, default=Path(".cache/npu-scale"))
    parser.add_argument("--soc", default="SM8650")
    args = parser.parse_args(argv)
    if args.part == "llm":
        return measure_llm(args.work, args.soc)

    import torch

    from mobilevlm import shapes_vqa
    from mobilevlm.export.onnx_vision import export_vision
    from mobilevlm.export.qnn_vision import write_qnn_vision
    from mobilevlm.generation.preprocess import preprocess
    from mobilevlm.reference.model import MobileVLM
    from mobilevlm.reference.random_weights import random_init_, tiny_tokenizer
    from mobilevlm.runtime.ort.placement import graph_placement
    from mobilevlm.runtime.ort.providers import resolve_providers

    config = vision_only_config()
    model = random_init_(MobileVLM(config, tiny_tokenizer(config.llm.vocab_size)), 0, 0.02)
    model = model.float().eval()
    images = [shapes_vqa.sample("train", i).image() for i in range(CALIBRATION_IMAGES)]
    calibration = [preprocess(i, config.preprocess) for i in images]
    heldout = [preprocess(shapes_vqa.sample("heldout", 0).image(), config.preprocess)]
    out = args.work / "npu"
    out.mkdir(parents=True, exist_ok=True)
    step = StepClock()
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        static = export_vision(model, Path(scratch) / "vision_static.onnx", for_npu=True)
        artefacts = write_qnn_vision(
            static, out, Path(scratch), calibration, heldout, args.soc, step
        )
    step("done")
    graph = graph_placement(
        out, "vision", artefacts[0].precision, artefacts[0].path, resolve_providers(["qnn"])
    )
    report = {
        "geometry": "MobileVLM_V2-1.7B vision: CLIP ViT-L/14-336 + LDPv2 (random weights)",
        "steps_s": step.steps,
        "artefacts": [a.to_dict() for a in artefacts],
        "placement_with_fallback": graph.to_dict(),
    }
    return write_report(args.work / "npu_scale.json", report)


def measure_llm(work: Path, soc: str) -> int:
    import numpy as np
    import torch

    from mobilevlm.export.qnn_llm import save_static_graphs, write_qnn_llm
    from mobilevlm.reference.model import MobileVLM
    from mobilevlm.reference.random_weights import random_init_, tiny_tokenizer
    from mobilevlm.runtime.ort.placement import graph_placement
    from mobilevlm.runtime.ort.providers import resolve_providers

    config = llm_only_config()
    print("building the random MobileLLaMA-1.4B-shaped LLM ...", flush=True)
    model = MobileVLM(config, tiny_tokenizer(config.llm.vocab_size))
    model = random_init_(model, seed=0, std=0.02).float().eval()
    table = model.language_model.get_input_embeddings().weight.detach().numpy().copy()
    rng = np.random.default_rng(0)
    count, positions = LLM_CALIBRATION
    sequences = [table[rng.integers(0, len(table), positions)] for _ in range(count)]
    heldout = [table[rng.integers(0, len(table), LLM_HELDOUT)]]
    out = work / "npu-llm"
    out.mkdir(parents=True, exist_ok=True)
    step = StepClock()
    parts = ["prefill", "decode"]
    with tempfile.TemporaryDirectory(dir=work) as scratch, torch.inference_mode():
        step("llm qnn graphs")
        static = save_static_graphs(model, Path(scratch), parts)
        del model
        artefacts = write_qnn_llm(
            static, parts, out, Path(scratch), config.llm, sequences, heldout, table, soc,
            step, parity_tokens=LLM_PARITY_TOKENS,
        )  # fmt: skip
    step("done")
    placements = [
        graph_placement(out, a.component, a.precision, a.path, resolve_providers(["qnn"]))
        for a in artefacts
        if a.format == "onnx"
    ]
    report = {
        "geometry": "MobileVLM_V2-1.7B LLM: MobileLLaMA-1.4B (random weights)",
        "steps_s": step.steps,
        "artefacts": [a.to_dict() for a in artefacts],
        "placement_with_fallback": [p.to_dict() for p in placements],
    }
    return write_report(work / "npu_scale_llm.json", report)


if __name__ == "__main__":
    raise SystemExit(main())
