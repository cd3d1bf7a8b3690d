"""The GGUF half of a bundle: the LLM at each llama.cpp precision, and the mmproj.

The f16 LLM is written from the model's tensors, its tokenizer proved inside
llama.cpp, and q8_0 / q4_k_m made from it by llama.cpp's quantizer. The
mmproj is written only when llama.cpp's mtmd can run the model (a CLIP
tower, an ldp/ldpv2/mlp projector, a 24x24 grid for ldp/ldpv2); otherwise the
reason is recorded and the bundle's ONNX vision graph serves the ``hybrid``
mode. Greedy agreement of each GGUF with the torch reference is measured on
text prompts and recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mobilevlm.export.gguf_llm import (
    check_tokenizer,
    quantize_llm,
    repacked_bytes,
    write_llm_gguf,
)
from mobilevlm.export.gguf_mmproj import mmproj_problems, write_mmproj
from mobilevlm.generation.decode_loop import prompt_ids
from mobilevlm.manifest import GGUF_PRECISIONS, Artefact, BundleFile
from mobilevlm.reference.model import MobileVLM

log = logging.getLogger(__name__)

LLM_FILE = "llm_{precision}.gguf"
MMPROJ_FILE = "mmproj_f16.gguf"
PARITY_PROMPTS = ("What shapes are in the picture?", "Describe the colors you see.")
PARITY_TOKENS = 16


def gguf_steps(model: MobileVLM, precisions: Sequence[str]) -> list[str]:
    """Progress-bar steps of :func:`write_gguf_artefacts`."""
    steps = ["llm f16"] + [f"llm {p}" for p in precisions if p != "f16"]
    return steps + (["mmproj"] if not mmproj_problems(model.config) else [])


def write_gguf_artefacts(
    model: MobileVLM,
    out: Path,
    scratch: Path,
    precisions: Sequence[str],
    step: Callable[[str], None] = lambda name: None,
) -> tuple[list[Artefact], dict]:
    """Write the GGUF files into ``out``; returns their artefacts and what the manifest's
    exporter section records (mmproj_skipped: why there is no mmproj)."""
    precisions = [p for p in GGUF_PRECISIONS if p in precisions]
    state = {k: v.detach().float().numpy() for k, v in model.language_model.state_dict().items()}
    artefacts: list[Artefact] = []
    step("llm f16")
    f16 = (out if "f16" in precisions else scratch) / LLM_FILE.format(precision="f16")
    made = write_llm_gguf(model.config, state, model.tokenizer, f16)
    check_tokenizer(f16, model.tokenizer)
    made["tokenizer_round_trip"] = "checked in llama.cpp"
    if "f16" in precisions:
        artefacts.append(_artefact(out, "llm", "f16", f16.name, made))
    for precision in precisions:
        if precision == "f16":
            continue
        step(f"llm {precision}")
        name = LLM_FILE.format(precision=precision)
        details = quantize_llm(f16, out / name, precision)
        details["repacked_bytes"] = repacked_bytes(out / name)  # the memory planner counts it
        artefacts.append(_artefact(out, "llm", precision, name, {**made, **details}))

    extra: dict = {}
    problems = mmproj_problems(model.config)
    if problems:
        extra["mmproj_skipped"] = "; ".join(problems)
        log.warning(
            "no mmproj: llama.cpp's mtmd cannot run this model (%s); the bundle's ONNX vision "
            "graph feeds llama.cpp instead (hybrid mode)",
            extra["mmproj_skipped"],
        )
    else:
        step("mmproj")
        details = write_mmproj(model, out / MMPROJ_FILE)
        artefacts.append(_artefact(out, "mmproj", "f16", MMPROJ_FILE, details))
    return artefacts, extra


def _artefact(root: Path, component: str, precision: str, name: str, details: dict) -> Artefact:
    return Artefact(component, precision, "gguf", (BundleFile.describe(root, name),), details)


def gguf_parity(model: MobileVLM, root: Path, artefacts: Sequence[Artefact]) -> dict:
    """Each GGUF LLM in llama.cpp against the torch reference on text prompts, teacher-forced
    along the reference's greedy continuation: ``{precision: {"top1_agreement": fraction}}``
    (the fraction of positions where both pick the same next token)."""
    from mobilevlm.reference.backend import TorchBackend
    from mobilevlm.runtime.llamacpp.model import LlamaDecoder, open_llama

    reference = TorchBackend(model)
    prompts = [
        prompt_ids(model.config, model.tokenizer, q, with_image=False) for q in PARITY_PROMPTS
    ]
    expected = [_greedy(reference.prefill_prompt(ids, None), reference.decode) for ids in prompts]
    report = {}
    for artefact in artefacts:
        if artefact.component != "llm":
            continue
        context = max(len(ids) for ids in prompts) + PARITY_TOKENS + 1
        llama = open_llama(root / artefact.path, context, batch=context)
        decoder = LlamaDecoder(llama, model.config.llm.hidden_size)
        agree = 0
        try:
            for ids, want in zip(prompts, expected, strict=True):
                decoder.truncate(0)
                decoder.tokens(ids)
                got = [int(np.argmax(decoder.logits()))]
                got += [int(np.argmax(decoder.step(token))) for token in want[:-1]]
                agree += sum(a == b for a, b in zip(got, want, strict=True))
        finally:
            decoder.close()
            llama.close()
        total = PARITY_TOKENS * len(prompts)
        report[artefact.precision] = {"top1_agreement": round(agree / total, 4)}
    return report


def _greedy(logits: np.ndarray, decode: Callable[[int], np.ndarray]) -> list[int]:
    tokens = [int(np.argmax(logits))]
    while len(tokens) < PARITY_TOKENS:
        tokens.append(int(np.argmax(decode(tokens[-1]))))
    return tokens
