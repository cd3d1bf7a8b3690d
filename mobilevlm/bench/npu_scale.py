"""The vision graph of MobileVLM_V2-1.7B's geometry on Qualcomm's HTP simulator.

CLIP ViT-L/14-336 (23 of 24 blocks) + LDPv2 to 2048, random weights (placement
and compilation do not depend on them; nothing can be downloaded here), put
through ``export --npu qnn``'s steps: the static QDQ graph, whether the HTP
takes it whole (CPU fallback disabled), its EPContext model for ``--soc``, and
one encode timed on the simulator. The LLM is a tiny stand-in: only the vision
graph is measured. Simulator times say nothing about a phone's latency.

    python -m mobilevlm.bench.npu_scale [--work DIR] [--soc SM8650]

Expect tens of minutes on a 2-core machine (the simulator is slow). A command, not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mobilevlm.bench.scale import CALIBRATION_IMAGES, v2_1_7b_config
from mobilevlm.config import LLMConfig, ModelConfig


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.npu_scale")
    parser.add_argument("--work", type=Path, default=Path(".cache/npu-scale"))
    parser.add_argument("--soc", default="SM8650")
    args = parser.parse_args(argv)

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
    started = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str) -> None:
        steps[name] = round(time.perf_counter() - started, 1)
        print(f"[{steps[name]:7.1f} s] {name}", flush=True)

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
        "steps_s": steps,
        "artefacts": [a.to_dict() for a in artefacts],
        "placement_with_fallback": graph.to_dict(),
    }
    (args.work / "npu_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
