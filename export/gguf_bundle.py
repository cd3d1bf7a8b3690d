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
from mobilevlm.manifest import Artefact, BundleFile
from mobilevlm.reference.model import MobileVLM

log = logging.getLogger(__name__)

LLM_FILE = "llm_{precision}.gguf"
MMPROJ_FILE = "mmproj_f16.gguf"
PARITY_PROMPTS = ("What shapes are in the picture?", "Describe the colors you see.")
PARITY_TOKENS = 16


F16 = LLM_FILE.format(precision="f16")


def write_f16_llm(
    model: MobileVLM, out: Path, scratch: Path, precisions: Sequence[str]
) -> tuple[Path, dict, list[Artefact]]:
    """The f16 LLM from the model's tensors, its tokenizer proved inside llama.cpp: in the
    bundle when f16 is exported, else in ``scratch`` for llama.cpp's quantizer. Returns
    its path, its details and its artefacts (none when it is scratch)."""
    state = {k: v.detach().float().numpy() for k, v in model.language_model.state_dict().items()}
    path = (out if "f16" in precisions else scratch) / F16
    made = write_llm_gguf(model.config, state, model.tokenizer, path)
    check_tokenizer(path, model.tokenizer)
    made["tokenizer_round_trip"] = "checked in llama.cpp"
    return path, made, [_artefact(out, "llm", "f16", F16, made)] if "f16" in precisions else []


def write_quantized_llm(f16: Path, out: Path, precision: str, made: dict) -> Artefact:
    """The LLM at ``precision`` (q8_0, q4_k_m) by llama.cpp's quantizer from the f16 file."""
    name = LLM_FILE.format(precision=precision)
    details = quantize_llm(f16, out / name, precision)
    details["repacked_bytes"] = repacked_bytes(out / name)  # the memory planner counts it
    return _artefact(out, "llm", precision, name, {**made, **details})


def write_mmproj_artefact(model: MobileVLM, out: Path) -> Artefact:
    """The mmproj, when :func:`mmproj_problems` finds none."""
    details = write_mmproj(model, out / MMPROJ_FILE)
    return _artefact(out, "mmproj", "f16", MMPROJ_FILE, details)


def mmproj_skipped(model: MobileVLM) -> str | None:
    """Why the bundle has no mmproj (llama.cpp's mtmd cannot run the model), or None."""
    problems = mmproj_problems(model.config)
    if not problems:
        return None
    reason = "; ".join(problems)
    log.warning(
        "no mmproj: llama.cpp's mtmd cannot run this model (%s); the bundle's ONNX vision "
        "graph feeds llama.cpp instead (hybrid mode)",
        reason,
    )
    return reason


def _artefact(root: Path, component: str, precision: str, name: str, details: dict) -> Artefact:
    return Artefact(component, precision, "gguf", (BundleFile.describe(root, name),), details)


def reference_continuations(model: MobileVLM) -> list[tuple[list[int], list[int]]]:
    """The torch reference's greedy continuation of each text prompt (with the prompt's
    ids), computed while its weights are in memory, for :func:`gguf_parity`."""
    from mobilevlm.reference.backend import TorchBackend

    reference = TorchBackend(model)
    prompts = [
        prompt_ids(model.config, model.tokenizer, q, with_image=False) for q in PARITY_PROMPTS
    ]
    return [
        (ids, _greedy(reference.prefill_prompt(ids, None), reference.decode)) for ids in prompts
    ]


def gguf_parity(
    continuations: Sequence[tuple[list[int], list[int]]],
    root: Path,
    artefacts: Sequence[Artefact],
    hidden_size: int,
) -> dict:
    """Each GGUF LLM in llama.cpp against the torch reference's ``continuations`` of text
    prompts, teacher-forced: ``{precision: {"top1_agreement": fraction}}`` (the fraction
    of positions where both pick the same next token)."""
    from mobilevlm.runtime.llamacpp.model import LlamaDecoder, open_llama

    report = {}
    for artefact in artefacts:
        if artefact.component != "llm":
            continue
        context = max(len(ids) for ids, _ in continuations) + PARITY_TOKENS + 1
        llama = open_llama(root / artefact.path, context, batch=context)
        decoder = LlamaDecoder(llama, hidden_size)
        agree = 0
        try:
            for ids, want in continuations:
                decoder.truncate(0)
                decoder.tokens(ids)
                got = [int(np.argmax(decoder.logits()))]
                got += [int(np.argmax(decoder.step(token))) for token in want[:-1]]
                agree += sum(a == b for a, b in zip(got, want, strict=True))
        finally:
            decoder.close()
            llama.close()
        total = PARITY_TOKENS * len(continuations)
        report[artefact.precision] = {"top1_agreement": round(agree / total, 4)}
    return report


def _greedy(logits: np.ndarray, decode: Callable[[int], np.ndarray]) -> list[int]:
    tokens = [int(np.argmax(logits))]
    while len(tokens) < PARITY_TOKENS:
        tokens.append(int(np.argmax(decode(tokens[-1]))))
    return tokens
