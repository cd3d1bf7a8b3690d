"""What a phone-class MobileVLM costs on this machine: the bench at MobileVLM_V2-1.7B's geometry.

CLIP ViT-L/14-336 (23 of 24 blocks), LDPv2 to 2048, MobileLLaMA-1.4B (hidden
2048, 24 layers, 16 heads, intermediate 5632, vocab 32000), random weights:
latency and memory do not depend on them, and nothing can be downloaded here.
It is exported once (int4 ONNX with the dynamic int8 vision graph, q4_k_m GGUF with
the mmproj) into ``--work``, then ``mobilevlm bench`` measures the project's
variants against llama.cpp's mtmd and llama-cpp-python's multimodal chat on
the same files. Then the LLM alone (``bench --llm-only``): int4 against
llama.cpp's ``Llama.generate`` on the q4_k_m file, ONNX Runtime GenAI and
OpenVINO GenAI, converted from the same weights (saved once as a Hugging
Face folder in ``--work/bundle-peers``); ``--llm-only`` runs only that part.

    python -m mobilevlm.bench.scale [--work DIR] [--repeats 3] [--report DIR]

Expect about 10 minutes for the export (about 15 GB of memory at its peak) and
several more for the bench on a 2-core machine. A command, not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mobilevlm.bench import llm_only
from mobilevlm.bench.peers.hf_llm import save_hf_llm
from mobilevlm.config import ClipVisionConfig, LLMConfig, ModelConfig, ProjectorConfig

PRECISIONS = ("int4", "q4_k_m")
# onnxruntime's percentile calibrator keeps every intermediate tensor of every image: about
# 1.2 GB per image for ViT-L/14-336, so the default 32 images would not fit next to the model
CALIBRATION_IMAGES = 4
VARIANTS = "int4,int4/int8-vision,q4_k_m/hybrid,q4_k_m/mtmd,llama-cpp-python"
BASELINE = "q4_k_m/mtmd"  # llama.cpp's own image path on the same files
LLM_PROMPT_TOKENS = 128


def v2_1_7b_config() -> ModelConfig:
    """MobileVLM_V2-1.7B: the config defaults are its CLIP tower and MobileLLaMA-1.4B."""
    return ModelConfig(
        vision=ClipVisionConfig(),
        projector=ProjectorConfig("ldpnetv2", 1024, 2048),
        llm=LLMConfig(),
    )


def random_model():
    """The random V2-1.7B-shaped model; seeded, so every build has the same weights."""
    from mobilevlm.reference.model import MobileVLM
    from mobilevlm.reference.random_weights import random_init_, tiny_tokenizer

    config = v2_1_7b_config()
    print("building the random MobileVLM_V2-1.7B-shaped model ...", flush=True)
    model = MobileVLM(config, tiny_tokenizer(config.llm.vocab_size))
    return random_init_(model, seed=0, std=0.02).eval()


def prepare(work: Path) -> Path:
    """Export (once) the random V2-1.7B model into ``work/bundle``, and its LLM as a Hugging
    Face folder for the GenAI peers into ``work/bundle-peers/hf-llm``; returns the bundle."""
    bundle = work / "bundle"
    hf_dir = work / "bundle-peers" / "hf-llm"
    if (bundle / "bundle.json").is_file():
        if not hf_dir.is_dir():
            save_hf_llm(random_model(), bundle / "tokenizer.json", hf_dir)
        return bundle
    from mobilevlm import shapes_vqa
    from mobilevlm.export.bundle_export import export_bundle
    from mobilevlm.export.profile import StageProfile

    calibration = work / "calibration"
    calibration.mkdir(parents=True, exist_ok=True)
    for i in range(CALIBRATION_IMAGES):
        shapes_vqa.sample("train", i).image().save(calibration / f"{i}.png")
    profile = StageProfile("assembly")
    model = random_model()
    tokenizer = work / "tokenizer.json"
    tokenizer.write_text(model.tokenizer.to_str(), encoding="utf-8")
    save_hf_llm(model, tokenizer, hf_dir)  # before the export consumes the weights
    export_bundle(
        model,
        bundle,
        PRECISIONS,
        ("onnx", "gguf"),
        calibration_dir=calibration,
        source="random MobileVLM_V2-1.7B geometry (mobilevlm.bench.scale)",
        random_weights=True,
        check_parity=False,
        progress=True,
        profile=profile,
        consume=True,
    )
    return bundle


def prepare_apart(work: Path) -> Path:
    """:func:`prepare` in a child process: what the export held (torch, a 1.4B model's
    weights, freed heap the allocator keeps: about 7 GB) goes back to the system before
    anything is measured."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=prepare, args=(work,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{work}: preparing the bundle failed (exit code {child.exitcode})")
    return work / "bundle"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.scale")
    parser.add_argument("--work", type=Path, default=Path(".cache/scale-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--report", type=Path, metavar="DIR")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--llm-only", action="store_true", help="only the LLM against its peers, not the bench"
    )
    args = parser.parse_args(argv)
    bundle = prepare_apart(args.work)
    if not args.llm_only:
        from mobilevlm.bench.harness import BenchSettings, run_bench
        from mobilevlm.bench.variants import parse_variant

        settings = BenchSettings(
            decode_tokens=args.decode_tokens, repeats=args.repeats, threads=args.threads
        )
        variants = [parse_variant(name) for name in VARIANTS.split(",")]
        report = run_bench(bundle, variants, settings, on_step=lambda what: print(what, flush=True))
        if args.report:
            from mobilevlm.bench.report import write_bench_report

            print(f"report: {write_bench_report(report, args.report, BASELINE)}", flush=True)
        print(report.summary(BASELINE))
    llm = llm_peers(bundle, args)
    if args.report:
        from mobilevlm.bench.report import write_llm_report

        print(f"report: {write_llm_report(llm, args.report)}", flush=True)
    print(llm.summary())
    return 0


def llm_peers(bundle: Path, args: argparse.Namespace) -> llm_only.LLMReport:
    """The LLM alone: int4 against llama.cpp's q4_k_m (``Llama.generate``), ONNX Runtime
    GenAI and OpenVINO GenAI, converted from the same random weights."""
    gguf = bundle / "llm_q4_k_m.gguf"
    backends = llm_only.bundle_backends([bundle], ["int4"])
    backends.append(llm_only.llama_cpp_backend(gguf))
    backends += llm_only.genai_backends(bundle, None, progress=True)
    vocab = v2_1_7b_config().llm.vocab_size
    results = llm_only.measure(
        backends,
        vocab,
        LLM_PROMPT_TOKENS,
        args.decode_tokens,
        args.repeats,
        args.threads,
        on_step=lambda what: print(f"llm-only {what}", flush=True),
    )
    return llm_only.LLMReport(
        [str(bundle)],
        results,
        LLM_PROMPT_TOKENS,
        args.decode_tokens,
        args.repeats,
        args.threads,
        str(gguf),
    )


if __name__ == "__main__":
    raise SystemExit(main())
