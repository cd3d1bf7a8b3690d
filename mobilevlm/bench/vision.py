"""Image encode time at MobileVLM_V2-1.7B's vision geometry: ONNX Runtime against llama.cpp.

CLIP ViT-L/14 at 336 px (23 of 24 blocks, as ``mm_vision_select_layer = -2``
asks) with the LDPv2 projector to MobileLLaMA-1.4B's width (2048), random
weights (latency does not depend on them). The same model is exported as the
project's fp32 ONNX vision graph, its dynamic int8 graph and an f16 mmproj
(with a one-layer LLM GGUF of width 2048, which mtmd requires next to it);
then each encodes the same 336x336 image, interleaved, after a warm-up. The
fp32 graph then runs on OpenVINO's CPU plugin as it is and with NNCF's int8
weights, in the GenAI peers' environment (``make peers``).

    python -m mobilevlm.bench.vision [--work DIR] [--repeats 5] [--threads N]

Exports are cached in ``--work`` (default ``.cache/vision-bench``), so a
second run only measures. This is a benchmark command, not a test: expect
several minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mobilevlm.config import ClipVisionConfig, LLMConfig, ModelConfig, ProjectorConfig

ONNX_FP32 = "onnxruntime fp32"
ONNX_INT8 = "onnxruntime int8 (dynamic)"
MTMD = "llama.cpp mtmd f16"
OPENVINO_FP32 = "openvino fp32 (same graph)"
OPENVINO_INT8 = "openvino int8 (nncf weights)"


def v2_vision_config() -> ModelConfig:
    """MobileVLM_V2-1.7B's vision side; a one-layer LLM of its width stands in for the LLM."""
    return ModelConfig(
        vision=ClipVisionConfig(),  # the defaults are ViT-L/14-336, select layer -2
        projector=ProjectorConfig("ldpnetv2", 1024, 2048),
        llm=LLMConfig(
            vocab_size=320,
            hidden_size=2048,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=16,
            num_key_value_heads=16,
        ),
    )


def prepare(work: Path) -> dict[str, Path]:
    """Export (once) the three encoders; returns their files."""
    files = {
        "fp32": work / "vision.onnx",
        "int8": work / "vision_int8.onnx",
        "mmproj": work / "mmproj_f16.gguf",
        "llm": work / "llm_f16.gguf",
    }
    if all(f.exists() for f in files.values()):
        return files
    import torch

    from mobilevlm.export.gguf_llm import write_llm_gguf
    from mobilevlm.export.gguf_mmproj import write_mmproj
    from mobilevlm.export.onnx_vision import export_vision
    from mobilevlm.export.quantize import quantize_vision_dynamic
    from mobilevlm.reference.model import MobileVLM
    from mobilevlm.reference.random_weights import random_init_, tiny_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    config = v2_vision_config()
    model = random_init_(MobileVLM(config, tiny_tokenizer(320)), seed=0, std=0.02).eval()
    with torch.inference_mode():
        print("exporting the ONNX vision graph ...", flush=True)
        export_vision(model, files["fp32"])
        print("quantizing it to dynamic int8 ...", flush=True)
        quantize_vision_dynamic(files["fp32"], files["int8"])
        print("writing the mmproj and a one-layer LLM GGUF ...", flush=True)
        write_mmproj(model, files["mmproj"])
        state = {k: v.float().numpy() for k, v in model.language_model.state_dict().items()}
        write_llm_gguf(config, state, model.tokenizer, files["llm"])
    return files


def measure(files: dict[str, Path], repeats: int, threads: int | None) -> dict[str, list[float]]:
    """Milliseconds per image for each encoder, interleaved repeats after one warm-up."""
    from mobilevlm.generation.preprocess import preprocess
    from mobilevlm.runtime.llamacpp.model import open_llama
    from mobilevlm.runtime.llamacpp.mtmd_vision import MtmdVisionEncoder
    from mobilevlm.runtime.ort.providers import resolve_providers
    from mobilevlm.runtime.ort.vision import OnnxVisionEncoder

    config = v2_vision_config()
    image = np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8)
    providers = resolve_providers(["cpu"])
    fp32 = OnnxVisionEncoder(files["fp32"], providers, threads)
    int8 = OnnxVisionEncoder(files["int8"], providers, threads)
    llama = open_llama(files["llm"], context=64, threads=threads)
    mtmd = MtmdVisionEncoder(files["mmproj"], llama, threads)
    encoders = {
        ONNX_FP32: lambda: fp32.encode(preprocess(image, config.preprocess)),
        ONNX_INT8: lambda: int8.encode(preprocess(image, config.preprocess)),
        MTMD: lambda: mtmd.encode(image),
    }
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for encode in encoders.values():
        encode()  # warm-up: first touch of the weights, thread pools
    for _ in range(repeats):
        for name, encode in encoders.items():
            time.sleep(0.25)
            t0 = time.perf_counter()
            encode()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    mtmd.close()
    llama.close()
    times |= openvino_times(files, preprocess(image, config.preprocess), repeats, threads)
    return times


def openvino_times(
    files: dict[str, Path], pixels: np.ndarray, repeats: int, threads: int | None
) -> dict[str, list[float]]:
    """The same fp32 ONNX graph on OpenVINO's CPU plugin, as it is and with its weights
    compressed to int8 by NNCF, each in a process of the peers' environment (after the
    in-process encoders, not interleaved with them); none where that environment is not
    installed. The int8 ONNX graph itself cannot run there: OpenVINO's ONNX frontend has
    no conversion for ONNX Runtime's QAttention."""
    import tempfile

    from mobilevlm.bench.harness import WorkerError, worker
    from mobilevlm.bench.peers import genai
    from mobilevlm.bench.peers.genai_worker import OPENVINO_VISION

    if genai.missing():
        print(f"OpenVINO skipped: {genai.missing()}", flush=True)
        return {}
    command = (str(genai.peer_python()), str(genai.WORKER))
    times = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "pixels.npy"
        np.save(path, pixels[None])
        for compress, name in ((None, OPENVINO_FP32), ("int8", OPENVINO_INT8)):
            job = {"engine": OPENVINO_VISION, "model": str(files["fp32"]), "compress": compress}
            job |= {"pixels": str(path), "repeats": repeats, "threads": threads}
            try:
                times[name] = worker(job, command=command, name=name)["times_ms"]
            except WorkerError as exc:
                print(f"{name} skipped: {exc}", flush=True)
    return times


def report(times: dict[str, list[float]]) -> str:
    from mobilevlm.bench.harness import machine

    base = statistics.median(times[MTMD])
    lines = [f"image encode, CLIP ViT-L/14-336 + LDPv2 (144 tokens), {machine()}"]
    lines.append(f"{'encoder':<30}{'median ms':>11}{'min':>9}{'max':>9}{'x mtmd time':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"{name:<30}{median:>11.0f}{min(values):>9.0f}{max(values):>9.0f}{median / base:>13.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.vision")
    parser.add_argument("--work", type=Path, default=Path(".cache/vision-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    times = measure(prepare(args.work), args.repeats, args.threads)
    print(json.dumps(times) if args.json else report(times))


if __name__ == "__main__":
    main()
