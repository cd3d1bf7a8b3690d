"""The LLM's NPU graphs for QNN's HTP: AR-N prefill and AR-1 decode, 16-bit activations.

From the fp32 static graphs (:mod:`mobilevlm.export.qnn_decoder`): QDQ through ONNX
Runtime's QNN helpers, calibrated on real sequences run through the fp32 graph itself
(Shapes-VQA training scenes asked and answered for the built-in model, the calibration
images for a checkpoint, plus text prompts: :mod:`mobilevlm.export.decoder_calibration`),
then compiled into EPContext models for the SoC with CPU fallback disabled. Activations
are 16-bit: a probe measured logits cosine 0.918 at 8 bits (LLM activation outliers)
against 0.99998 at 16. Weights are 16-bit per channel for an LLM under a billion
parameters (w16a16, ExecuTorch's 16a16w for the HTP): at 8 bits per channel the built-in
model's prefill changed the first token of 3 of 100 held-out questions (2 of them answers
fp32 had right), at 16 bits none (onnxruntime's CPU provider; the simulator agrees on the
four it was asked), for twice the graphs' size (about 260 MiB each, where a phone holds
them easily). A larger LLM's are 4-bit where the CPU int4 recipe's are, in symmetric blocks
of the recipe's size (a blocked DequantizeLinear before the MatMul, which the HTP takes
whole), scaled and clipped as the CPU int4 decoder's are (the same activation-aware
choice), and 8-bit per channel where the recipe keeps 8 bits (the lm_head, llama.cpp's
wider down projections). The HTP misreads a blocked int4 weight's zero points (logits
cosine 0.04 against 0.994 symmetric, measured on the simulator), hence symmetric blocks
where the CPU recipe's are asymmetric. The position tables that RoPE gathers from stay
16-bit (angles, not weights).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilevlm.config import LLMConfig
from mobilevlm.errors import ProviderError
from mobilevlm.export.activation_scaling import ActivationAware, SplitProjections
from mobilevlm.export.onnx_bundle import onnx_artefact
from mobilevlm.export.onnx_decoder import LM_HEAD
from mobilevlm.export.parity import cosine
from mobilevlm.export.qnn_decoder import ROPE_TABLES, save_static_decoder
from mobilevlm.export.qnn_vision import compile_context
from mobilevlm.export.quantize import (
    LARGE_LLM_PARAMETERS,
    STRIDED,
    Blocks,
    int4_recipe,
    quiet_root_logger,
    weight_only,
)
from mobilevlm.manifest import Artefact, BundleFile
from mobilevlm.runtime.ort import qnn
from mobilevlm.runtime.ort.graph_io import LOGITS, past_names
from mobilevlm.runtime.ort.kv_cache import KVCache
from mobilevlm.runtime.ort.providers import create_session, resolve_providers
from mobilevlm.runtime.ort.select import EPCONTEXT
from mobilevlm.runtime.ort.static_decoder import StaticGraph, chunks, run_inputs

# Rows per run: a prompt of the built-in model (about 80 positions with its image) is two
# prefill chunks; on the simulator a chunk of 64 at its size took 14-17 s, a decode step 6.7
ROWS = {"prefill": 64, "decode": 1}
NPU_CONTEXT = 512  # past positions the graphs read (the cache's capacity on the NPU)
GRAPHS = {"prefill": "prefill_qnn.onnx", "decode": "decode_qnn.onnx"}
CONTEXTS = {"prefill": "prefill_qnn_ctx.onnx", "decode": "decode_qnn_ctx.onnx"}
W16A16, W4A16 = "w16a16", "w4a16"  # the weights' bits, 16-bit activations
CALIBRATION_STRIDE = 2  # of the int4 calibration's sequences: 40 of the built-in model's 80
DECODE_STEPS = 4  # calibration tokens per sequence for the decode graph: its last ones
HELDOUT = 2  # held-out Shapes-VQA questions the parity is measured on
PARITY_TOKENS = 6  # greedy tokens compared per held-out sequence
# The logits' 16-bit range, fixed rather than calibrated: calibrated (-24.1 to 38.9 on the
# built-in model), the top logits of confident answers saturated into ties, and the argmax
# took the lower token id: "0" for "1", "no" for "yes" (80% against fp32's 93% on 30
# held-out questions). +-128 keeps a step of 0.004.
LOGITS_RANGE = 128.0


@dataclass
class _Feed:
    """One calibration run: the graph's inputs, the past trimmed to its filled positions."""

    inputs: dict[str, np.ndarray]
    past: list[np.ndarray]  # per layer K, V: (1, kv_heads, filled, head_dim)


class CalibrationRuns:
    """onnxruntime's CalibrationDataReader over the runs a static graph makes of the
    calibration sequences (``set_range``: a stride at a time, :data:`STRIDED`)."""

    def __init__(self, feeds: list[_Feed], context: int) -> None:
        self._feeds, self._context = feeds, context
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._next, None)
        if feed is None:
            return None
        inputs = dict(feed.inputs)
        for layer in range(len(feed.past) // 2):
            for name, filled in zip(
                past_names(layer), feed.past[2 * layer : 2 * layer + 2], strict=True
            ):
                full = np.zeros((*filled.shape[:2], self._context, filled.shape[3]), np.float32)
                full[:, :, : filled.shape[2]] = filled
                inputs[name] = full
        return inputs


def calibration_runs(
    reference: StaticGraph, rows: int, sequences: Sequence[np.ndarray], decode_steps: int
) -> list[_Feed]:
    """The runs a static graph of ``rows`` rows makes of ``sequences``, their past filled by
    the fp32 prefill graph ``reference`` (on the CPU). A prefill graph's runs: each
    sequence in two parts (a prompt and its follow-up, split at a seeded point), each part
    in its chunks, so that the past inputs are calibrated on real K/V even where a sequence
    fits one chunk (their range would otherwise be zero, and the NPU would read the cache
    as zeros). A decode graph's: each sequence's last ``decode_steps`` positions, one at a
    time, after the rest."""
    feeds = []
    rng = np.random.default_rng(0)
    for embeds in sequences:
        cache = KVCache(reference.config, reference.context)
        embeds = embeds[: reference.context]
        if rows > 1:
            split = int(rng.integers(1, len(embeds))) if len(embeds) > 1 else len(embeds)
            parts = [(0, split), (split, len(embeds))]
        else:
            parts = [(0, max(len(embeds) - decode_steps, 1))]
            parts += [(p, p + 1) for p in range(parts[0][1], len(embeds))]
        for first, last in parts:
            if last <= first:
                continue
            for start, end in chunks(last - first, rows if rows > 1 else reference.rows):
                piece = embeds[first + start : first + end]
                if rows > 1 or (last - first == 1 and first > 0):
                    feeds.append(_capture(cache, rows, piece))
                reference.run(cache, piece)
    return feeds


def _capture(cache: KVCache, rows: int, embeds: np.ndarray) -> _Feed:
    past = []
    for k, v in zip(cache.keys, cache.values, strict=True):
        past += [k.numpy()[:, :, : cache.length].copy(), v.numpy()[:, :, : cache.length].copy()]
    return _Feed(run_inputs(rows, cache.capacity, cache.length, embeds), past)


@quiet_root_logger()
def quantize_static_decoder(
    fp32_graph: Path, target: Path, scratch: Path, runs: CalibrationRuns, precision: str
) -> None:
    """QDQ of ``fp32_graph`` for QNN's HTP, calibrated on ``runs``: 16-bit activations,
    float weights per channel at 16 bits (w16a16) or 8 (w4a16, whose 4-bit ones are
    already blocked DequantizeLinears)."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import (
        get_qnn_qdq_config,
        qnn_preprocess_model,
    )

    prepared = scratch / f"{fp32_graph.stem}_prepared.onnx"
    if not qnn_preprocess_model(str(fp32_graph), str(prepared), save_as_external_data=True):
        prepared = fp32_graph
    config = get_qnn_qdq_config(
        str(prepared),
        runs,
        activation_type=QuantType.QUInt16,
        weight_type=QuantType.QUInt16 if precision == W16A16 else QuantType.QUInt8,
        per_channel=True,
        init_overrides={
            **{table: [{"quant_type": QuantType.QUInt16}] for table in ROPE_TABLES},
            **{
                tensor: [
                    {
                        "quant_type": QuantType.QUInt16,
                        "rmin": np.array(-LOGITS_RANGE, np.float32),
                        "rmax": np.array(LOGITS_RANGE, np.float32),
                    }
                ]
                for tensor in (f"{LM_HEAD}/out0", LOGITS)
            },
        },
    )
    config.extra_options.update(STRIDED)
    quantize(str(prepared), str(target), config)


def save_static_graphs(model, scratch: Path, parts: Sequence[str]) -> dict[str, Path]:
    """The fp32 static graphs of ``model``'s LLM (read while its weights are in memory): the
    prefill graph always (it fills the calibration's past), the decode graph when asked."""
    context = npu_context(model.config.llm)
    graphs = {}
    for part in ("prefill", *(p for p in parts if p == "decode")):
        graphs[part] = scratch / f"{part}_static.onnx"
        save_static_decoder(model, graphs[part], ROWS[part], context)
    return graphs


def npu_context(config: LLMConfig) -> int:
    return min(NPU_CONTEXT, config.max_position_embeddings)


def npu_llm_precision(config: LLMConfig) -> str:
    return W4A16 if config.parameters >= LARGE_LLM_PARAMETERS else W16A16


def four_bit_blocks(config: LLMConfig) -> Callable[[str, int], Blocks | None]:
    """A MatMul's 4-bit blocks in the NPU graphs (None: left to the 8-bit per-channel QDQ):
    4-bit where the CPU int4 recipe is, symmetric (see the module docstring)."""
    recipe, layers = int4_recipe(config), config.num_hidden_layers
    blocks = Blocks(4, recipe.four_bit.block_size, symmetric=True)
    return lambda node, k: None if recipe.eight_bit(node, layers) else blocks


def weight_details(config: LLMConfig, adjust: ActivationAware | None) -> dict:
    if npu_llm_precision(config) == W16A16:
        return {"weights": "uint16 per-channel"}
    recipe = int4_recipe(config)
    return {
        "weights": (
            f"int4 symmetric, blocks of {recipe.four_bit.block_size} (blocked "
            "DequantizeLinear), where the int4 recipe is 4-bit; uint8 per-channel where it "
            "keeps 8 bits"
        ),
        "int4_recipe": recipe.name,
        "activation_aware": adjust is not None,  # the CPU int4 decoder's scales and clipping
    }


@quiet_root_logger()
def write_qnn_llm(
    static: dict[str, Path],
    parts: Sequence[str],
    out: Path,
    scratch: Path,
    config: LLMConfig,
    sequences: Sequence[np.ndarray],
    heldout: Sequence[np.ndarray],
    table: np.ndarray,
    soc_name: str,
    step: Callable[[str], None],
    adjust: ActivationAware | None = None,
    parity_tokens: int = PARITY_TOKENS,
) -> list[Artefact]:
    """The QDQ prefill and decode graphs (``parts``) for QNN's HTP and their EPContext
    models for ``soc_name``, calibrated on ``sequences`` (the int4 decoder's, every
    :data:`CALIBRATION_STRIDE`-th), with their parity against the fp32 graph measured on
    ``heldout`` and recorded; ``table``: the token embeddings (vocab, hidden) the parity's
    greedy tokens are fed back through, ``parity_tokens`` of them; ``adjust``: the CPU int4
    decoder's activation-aware scales and clipping, which a 4-bit graph's weights take too."""
    soc = qnn.soc(soc_name)
    context = npu_context(config)
    cpu = resolve_providers(["cpu"])
    reference = StaticGraph(create_session(static["prefill"], cpu), config)
    calibration = list(sequences[::CALIBRATION_STRIDE])  # scenes and text prompts alike
    precision = npu_llm_precision(config)
    graphs = {}
    for part in parts:
        step(f"{part} qnn")
        name, source = GRAPHS[part], static[part]
        if precision == W4A16:
            source = scratch / f"{part}_static_w4.onnx"
            split = SplitProjections(adjust, config) if adjust is not None else None
            weight_only(static[part], source, four_bit_blocks(config), split, qdq=True)
        runs = CalibrationRuns(
            calibration_runs(reference, ROWS[part], calibration, DECODE_STEPS), context
        )
        quantize_static_decoder(source, out / name, scratch, runs, precision)
        calibrated = len(runs)
        del runs
        step(f"{part} qnn context")
        compile_context(out / name, out / CONTEXTS[part], soc)
        if not (out / CONTEXTS[part]).is_file():
            raise ProviderError(f"{qnn.QNN} wrote no EPContext model for {soc.name}")
        graphs[part] = calibrated
    step("llm qnn parity")
    parity = measure_parity(out, parts, config, reference, heldout, table, soc, parity_tokens)
    artefacts = []
    for part in parts:
        details = {
            "npu": qnn.NPU,
            "rows": ROWS[part],
            "context": context,
            "shapes": "static, batch 1",
            "builder": "mobilevlm.export.qnn_decoder",
            "quantization": "onnxruntime get_qnn_qdq_config (QDQ, MinMax)",
            **weight_details(config, adjust),
            "activations": "uint16",
            "calibration_sequences": len(calibration),
            "calibration_runs": graphs[part],
            "parity": parity,
        }
        artefacts.append(onnx_artefact(out, part, precision, GRAPHS[part], details))
        binaries = sorted(p.name for p in out.glob(f"{Path(CONTEXTS[part]).stem}*.bin"))
        files = (
            BundleFile.describe(out, CONTEXTS[part]),
            *(BundleFile.describe(out, b) for b in binaries),
        )
        artefacts.append(
            Artefact(
                part,
                precision,
                EPCONTEXT,
                files,
                {
                    "npu": qnn.NPU,
                    "compiled_from": GRAPHS[part],
                    "soc": soc.name,
                    "soc_name": soc.marketing,
                    "soc_model": soc.soc_model,
                    "htp_arch": soc.htp_arch,
                    "qnn_plugin": qnn.plugin_version(),
                },
            )
        )
    return artefacts


def measure_parity(
    out: Path,
    parts: Sequence[str],
    config: LLMConfig,
    reference: StaticGraph,
    heldout: Sequence[np.ndarray],
    table: np.ndarray,
    soc: qnn.Soc,
    count: int = PARITY_TOKENS,
) -> dict:
    """The compiled graphs on the HTP against the fp32 graph on the CPU, on ``heldout``:
    the prompt's last logits and every layer's K/V after the prefill, then
    ``count`` greedy tokens decoded on the NPU (when it has the decode graph)
    and on the CPU from the NPU's cache (the llm.npu split)."""
    on_npu = resolve_providers(["qnn!"], options=soc.provider_options())
    started = time.perf_counter()
    graphs = {
        part: StaticGraph(create_session(out / CONTEXTS[part], on_npu, whole_graph=True), config)
        for part in parts
    }
    loaded = time.perf_counter()
    logits_cos, kv_cos, agree = [], [], {"npu": [], "cpu": []}
    prefill_s, decode_s = [], []
    for embeds in heldout:
        embeds = embeds[: reference.context - count]
        ref_cache, npu_cache = (
            KVCache(config, reference.context),
            KVCache(config, reference.context),
        )
        ref_logits = _prefill(reference, ref_cache, embeds).copy()
        t = time.perf_counter()
        npu_logits = _prefill(graphs["prefill"], npu_cache, embeds).copy()
        prefill_s.append(time.perf_counter() - t)
        logits_cos.append(float(cosine(ref_logits[None], npu_logits[None])[0]))
        kv_cos.append(_cache_cosine(ref_cache, npu_cache))
        expected = _greedy(reference, ref_cache, ref_logits, table, count)
        decoders = {"cpu": reference, **({"npu": graphs["decode"]} if "decode" in graphs else {})}
        for where, decoder in decoders.items():
            cache = _copy(npu_cache, config)
            t = time.perf_counter()
            tokens = _greedy(decoder, cache, npu_logits, table, count)
            if where == "npu":
                decode_s.append((time.perf_counter() - t) / max(count - 1, 1))  # runs made
            agree[where] += [a == b for a, b in zip(tokens, expected, strict=True)]
    return {
        "heldout_sequences": len(heldout),
        "logits_cosine_min": round(min(logits_cos), 6),
        "kv_cosine_min": round(min(kv_cos), 6),
        "greedy_tokens": len(agree["cpu"]),
        "greedy_agreement": {
            f"{'npu' if where == 'npu' else 'cpu'} decode": round(sum(v) / len(v), 4)
            for where, v in agree.items()
            if v
        },
        "simulated": qnn.simulated(),  # the times below are then not a phone's
        "context_load_s": round(loaded - started, 2),
        "prefill_s": round(float(np.median(prefill_s)), 2),
        **({"decode_step_s": round(float(np.median(decode_s)), 2)} if decode_s else {}),
    }


def _prefill(graph: StaticGraph, cache: KVCache, embeds: np.ndarray) -> np.ndarray:
    for start, end in chunks(len(embeds), graph.rows):
        logits = graph.run(cache, embeds[start:end])
    return logits


def _greedy(
    graph: StaticGraph, cache: KVCache, logits: np.ndarray, table: np.ndarray, count: int
) -> list[int]:
    """``count`` greedy tokens from ``logits``, each embedded (``table``) and run in turn."""
    tokens = []
    for _ in range(count):
        tokens.append(int(np.argmax(logits)))
        if len(tokens) < count:
            logits = graph.run(cache, np.asarray(table[tokens[-1]], np.float32)[None])
    return tokens


def _copy(cache: KVCache, config: LLMConfig) -> KVCache:
    copy = KVCache(config, cache.capacity)
    for mine, theirs in zip((*copy.keys, *copy.values), (*cache.keys, *cache.values), strict=True):
        mine.numpy()[...] = theirs.numpy()
    copy.length = cache.length
    return copy


def _cache_cosine(a: KVCache, b: KVCache) -> float:
    """The lowest cosine of any layer's keys or values over the filled positions."""
    length = a.length
    return min(
        float(
            cosine(
                x.numpy()[:, :, :length].reshape(1, -1), y.numpy()[:, :, :length].reshape(1, -1)
            )[0]
        )
        for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    )
