"""Human-readable summaries of bundles for the command line."""

from __future__ import annotations

from pathlib import Path

from mobilevlm.manifest import BundleManifest


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def describe_bundle(root: str | Path, manifest: BundleManifest) -> str:
    cfg = manifest.model
    llm = cfg.llm
    lines = [
        f"bundle {root}",
        f"  vision     {cfg.vision.type} at {cfg.preprocess.image_size} px -> {cfg.projector.type}"
        f" -> {manifest.num_image_tokens} image tokens",
        f"  llm        {llm.num_hidden_layers} layers, hidden {llm.hidden_size}, "
        f"{llm.num_attention_heads}/{llm.num_key_value_heads} heads, vocab {llm.vocab_size}, "
        f"context {llm.max_position_embeddings}",
        f"  template   {cfg.template}",
        "  artefacts",
    ]
    for a in manifest.artefacts:
        line = f"    {a.component:<11}{a.precision:<6}{_mib(a.bytes):>12}  {a.path}"
        lines.append(line + _npu_note(a.details))
    parity = dict(manifest.exporter.get("parity") or {})
    gguf = parity.pop("gguf", {})
    if parity:
        lines.append("  parity with the PyTorch reference (measured at export)")
        lines.append(
            f"    {'precision':<10}{'image rel err':>14}{'logits cos min':>16}{'top-1 agree':>13}"
            f"{'top-1 answer':>14}{'greedy same':>13}"
        )
        for precision, p in parity.items():
            answer = p.get("answer_top1_agreement")  # bundles before issue 35 lack it
            lines.append(
                f"    {precision:<10}{p['image_embeds_rel_error']:>14.2e}"
                f"{p['logits_cosine_min']:>16.6f}{p['top1_agreement']:>13.1%}"
                f"{'-' if answer is None else format(answer, '.1%'):>14}"
                f"{p['greedy_tokens_identical']:>13}"
            )
    if gguf:
        lines.append("  GGUF in llama.cpp against the PyTorch reference (text, teacher-forced)")
        for precision, p in gguf.items():
            lines.append(f"    {precision:<10}{p['top1_agreement']:>14.1%} top-1 agreement")
    npu = [a for a in manifest.artefacts if "parity" in a.details and "npu" in a.details]
    for a in (a for a in npu if a.component != "decode"):  # the LLM's: on the prefill graph
        lines.append(f"  {a.path}: {_npu_parity(a.details['parity'])}")
    if "mmproj_skipped" in manifest.exporter:
        lines.append(f"  no mmproj    {manifest.exporter['mmproj_skipped']}")
        lines.append("               llama.cpp runs this bundle in hybrid mode (ONNX vision)")
    if "profile" in manifest.exporter:
        lines.append(_export_cost(manifest.exporter["profile"]))
    return "\n".join(lines)


def _export_cost(profile: dict) -> str:
    """The export's time and peak resident memory, and the stage that set the peak."""
    line = (
        f"  exported in {profile['seconds']:.0f} s, peak memory "
        f"{profile['peak_rss_mib'] / 1024:.2f} GiB"
    )
    if not profile.get("stages"):
        return line
    heaviest = max(profile["stages"], key=lambda s: s["peak_mib"])
    return line + f" (heaviest stage: {heaviest['name']}, {heaviest['peak_mib'] / 1024:.2f} GiB)"


def _npu_parity(parity: dict) -> str:
    """An NPU graph's parity against fp32 as the export measured it: the vision graph's
    image tokens, or the LLM graphs' logits, K/V and greedy tokens."""
    if "token_cosine_min" in parity:
        cosines = ", ".join(f"{k} {v:.4f}" for k, v in parity["token_cosine_min"].items())
        held = parity["heldout_images"]
        return f"image-token cosine min against fp32 ({held} held out): {cosines}"
    agreement = ", ".join(f"{k} {v:.0%}" for k, v in parity["greedy_agreement"].items())
    timed = f"prefill {parity['prefill_s']:.1f} s" + (
        f", decode {parity['decode_step_s']:.1f} s/token" if "decode_step_s" in parity else ""
    )
    where = " on the HTP simulator" if parity.get("simulated") else ""
    return (
        f"against fp32 on {parity['heldout_sequences']} held-out prompts: logits cosine min "
        f"{parity['logits_cosine_min']:.4f}, K/V cosine min {parity['kv_cosine_min']:.4f}, "
        f"greedy tokens the same ({parity['greedy_tokens']}): {agreement}; {timed}{where}"
    )


def _npu_note(details: dict) -> str:
    """What an NPU artefact is: its activations, or the SoC its context was compiled for."""
    if "soc" in details:
        return (
            f"  (EPContext for {details['soc']}, {details['soc_name']}, HTP v{details['htp_arch']})"
        )
    if "npu" in details:
        return f"  ({details['npu']}: static QDQ, {details['activations']} activations)"
    return ""
