"""The LLM on fixed-shape graphs (the NPU's): prompts in chunks of N rows, tokens one row
at a time, over the host's KV cache.

The graphs (:mod:`mobilevlm.export.qnn_decoder`) read the whole cache as their past and
return only their rows' K/V, which the host writes into it: the cache is the CPU
decoder's own :class:`~mobilevlm.runtime.ort.kv_cache.KVCache`, in its layout (rotated
keys, (1, kv_heads, capacity, head_dim)), so a prompt prefilled on the NPU is decoded on
the CPU with nothing copied (the split llm.npu runs), and a cache filled by either side
is the other's prefix.

A run of fewer rows than the graph has is padded at the front: its last position is the
graph's last row, whose logits the graph returns. Padding rows see only themselves and
real rows never see them; their K/V are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mobilevlm.config import LLMConfig
from mobilevlm.errors import ContextOverflowError
from mobilevlm.runtime.ort.graph_io import (
    ATTENTION_MASK,
    INPUT_EMBEDS,
    LOGITS,
    POSITION_IDS,
    new_names,
    past_names,
)
from mobilevlm.runtime.ort.kv_cache import KVCache
from mobilevlm.runtime.ort.providers import CPU, main_provider, placement, requires_npu

if TYPE_CHECKING:
    from mobilevlm.runtime.options import LoadOptions
    from mobilevlm.runtime.ort.decoder import OnnxDecoder
    from mobilevlm.runtime.ort.select import NpuGraph, Selection

log = logging.getLogger(__name__)

# What a masked score gets: small enough that exp() of it is nothing beside a real score's,
# large enough that 16-bit activations keep scores at a ~2e-3 step (the HTP's; Genie -50)
MASK_VALUE = -100.0


def chunks(count: int, rows: int) -> list[tuple[int, int]]:
    """``count`` positions as runs of at most ``rows``: the first the short one (padded)."""
    first = count % rows or rows
    return [(0, first)] + [(start, start + rows) for start in range(first, count, rows)]


def run_inputs(rows: int, context: int, past: int, embeds: np.ndarray) -> dict[str, np.ndarray]:
    """A static graph's inputs but the cache for appending ``embeds`` (at most ``rows``)
    after ``past`` positions: padded at the front, positions counted on, the mask."""
    count, pad = len(embeds), rows - len(embeds)
    padded = np.zeros((1, rows, embeds.shape[1]), np.float32)
    padded[0, pad:] = embeds
    positions = np.zeros((1, rows), np.int32)
    positions[0, pad:] = np.arange(past, past + count)
    mask = np.full((1, 1, rows, context + rows), MASK_VALUE, np.float32)
    own = np.arange(pad)
    mask[0, 0, own, context + own] = 0.0  # a padding row sees itself only
    mask[0, 0, pad:, :past] = 0.0  # a real row sees the cache's positions
    causal = np.tril(np.ones((count, count), bool))
    mask[0, 0, pad:, context + pad :][causal] = 0.0  # and the real rows up to its own
    return {INPUT_EMBEDS: padded, POSITION_IDS: positions, ATTENTION_MASK: mask}


def _zero_unused(cache: KVCache, end: int) -> None:
    """Zero ``cache``'s positions from its length to ``end``. A static graph reads every
    position, the unused ones masked, and the mask is not enough: a NaN of uninitialized
    memory survives it, and on the HTP simulator the K/V a previous question left there
    changed the next question's answer (Shapes-VQA held-out question 5 after question 4:
    "yes" where a fresh session answers "no")."""
    if end > cache.length:
        for buffer in (*cache.keys, *cache.values):
            buffer.numpy()[0, :, cache.length : end] = 0.0
    cache.written = cache.length


class StaticGraph:
    """One fixed-shape decoder session: ``rows`` positions per run over a past of
    ``context`` positions (the graph's input shapes)."""

    def __init__(self, session, config: LLMConfig, source: str = "graph") -> None:
        import onnxruntime

        self.session, self.config, self.source = session, config, source
        shapes = {i.name: i.shape for i in session.get_inputs()}
        self.rows = int(shapes[INPUT_EMBEDS][1])
        self.context = int(shapes[past_names(0)[0]][2])
        value = onnxruntime.OrtValue.ortvalue_from_shape_and_type
        heads, head_dim = config.num_key_value_heads, config.head_dim
        self._logits = value((1, 1, config.vocab_size), np.float32)
        self._new = [
            (
                value((1, heads, self.rows, head_dim), np.float32),
                value((1, heads, self.rows, head_dim), np.float32),
            )
            for _ in range(config.num_hidden_layers)
        ]
        self.binding = session.io_binding()
        self._bound_cache: KVCache | None = None

    def _bind(self, cache: KVCache) -> None:
        """Bind ``cache`` as the past, its unwritten positions zeroed (:func:`_zero_unused`)."""
        _zero_unused(cache, cache.capacity)
        b = self.binding
        b.clear_binding_outputs()
        b.bind_ortvalue_output(LOGITS, self._logits)
        for layer, ((k, v), (new_k, new_v)) in enumerate(
            zip(zip(cache.keys, cache.values, strict=True), self._new, strict=True)
        ):
            past_k, past_v = past_names(layer)
            b.bind_ortvalue_input(past_k, k)
            b.bind_ortvalue_input(past_v, v)
            out_k, out_v = new_names(layer)
            b.bind_ortvalue_output(out_k, new_k)
            b.bind_ortvalue_output(out_v, new_v)
        self._bound_cache = cache

    def run(self, cache: KVCache, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (at most ``rows`` rows) to ``cache``; the last one's logits
        (the bound output buffer: valid until the next run)."""
        count = len(embeds)
        past = cache.length
        if cache.capacity != self.context:
            raise ValueError(
                f"the graph reads {self.context} past positions, the cache has {cache.capacity}"
            )
        if count > cache.free:
            raise ContextOverflowError(
                f"{count} more positions do not fit: {past} of the context's "
                f"{cache.capacity} are used"
            )
        if cache is not self._bound_cache:
            self._bind(cache)
        _zero_unused(cache, cache.written)  # what a reset or a shorter prefix left behind
        pad = self.rows - count
        b = self.binding
        for name, value in run_inputs(self.rows, self.context, past, embeds).items():
            b.bind_cpu_input(name, value)
        self.session.run_with_iobinding(b)
        for (k, v), (new_k, new_v) in zip(
            zip(cache.keys, cache.values, strict=True), self._new, strict=True
        ):
            k.numpy()[0, :, past : past + count] = new_k.numpy()[0, :, pad:]
            v.numpy()[0, :, past : past + count] = new_v.numpy()[0, :, pad:]
        cache.length = past + count
        return self._logits.numpy()[0, 0]


class SplitDecoder:
    """The decoder's interface (:class:`~mobilevlm.runtime.ort.decoder.OnnxDecoder`'s:
    ``forward``, ``decode``, ``reset``, ``release_cache``, ``cache``) over a static
    prefill graph, with tokens decoded by a static decode graph or by ``cpu`` (an
    OnnxDecoder whose cache, of the graphs' context, is the one they fill)."""

    def __init__(
        self, config: LLMConfig, prefill: StaticGraph, decode: StaticGraph | OnnxDecoder
    ) -> None:
        self.config, self.prefill = config, prefill
        self._decode_graph = decode if isinstance(decode, StaticGraph) else None
        self._cpu = None if self._decode_graph else decode
        self._own_cache = None if self._cpu else KVCache(config, prefill.context)

    @property
    def cache(self) -> KVCache:
        return self._cpu.cache if self._cpu is not None else self._own_cache

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (seq, hidden) in chunks of the prefill graph's rows (the first
        one padded); logits (vocab,) of the last position."""
        if len(embeds) > self.cache.free:
            raise ContextOverflowError(
                f"{len(embeds)} more positions do not fit: {self.cache.length} of the "
                f"context's {self.cache.capacity} are used"
            )
        for start, end in chunks(len(embeds), self.prefill.rows):
            logits = self.prefill.run(self.cache, embeds[start:end])
        return logits

    def decode(self, embedding: np.ndarray) -> np.ndarray:
        if self._cpu is not None:
            return self._cpu.decode(embedding)
        return self._decode_graph.run(self.cache, np.asarray(embedding, np.float32)[None])

    def reset(self) -> None:
        self.cache.reset()

    def release_cache(self) -> None:
        if self._cpu is not None:
            self._cpu.release_cache()
        else:
            self._own_cache = KVCache(self.config, self.prefill.context)

    @property
    def prefill_provider(self) -> str:
        return main_provider(self.prefill.session)

    @property
    def decode_provider(self) -> str:
        if self._cpu is not None:
            return self._cpu.session.get_providers()[0]
        return main_provider(self._decode_graph.session)

    def info(self) -> dict[str, Any]:
        """What ``runtime_info`` adds: the NPU graphs' nodes per provider and their source
        (epcontext: precompiled), and whether the NPU is a simulator."""
        from mobilevlm.runtime.ort import qnn

        info = {}
        graphs = {"prefill": self.prefill, "decode": self._decode_graph}
        for part, graph in graphs.items():
            if graph is not None:
                info[f"{part}_nodes"] = placement(graph.session)
                info[f"{part}_source"] = graph.source
        info["npu_rows"] = self.prefill.rows
        if qnn.simulated():
            info["llm_simulated"] = True
        return info


def open_split_decoder(
    root: Path,
    selection: Selection,
    options: LoadOptions,
    config: LLMConfig,
    cpu_decoder: Callable[[int], OnnxDecoder],
) -> SplitDecoder:
    """The selection's NPU graphs (precompiled forms first) on the providers ``options``
    name, for the SoC they were compiled for; tokens on the CPU (``cpu_decoder(context)``)
    where there is no decode graph. A required NPU (``qnn!``) must take every node."""
    from mobilevlm.runtime.ort.vision import CONTEXT_KEYS, open_precompiled, vision_providers

    providers, entries = vision_providers(selection.prefill.context, options)
    entries = {k: v for k, v in entries.items() if not k.startswith(CONTEXT_KEYS)}
    if providers[0][0] == CPU:
        raise ValueError("the LLM's NPU graphs need an NPU provider first in line")

    def open_graph(npu: NpuGraph) -> StaticGraph:
        context = root / npu.context.path if npu.context is not None else None
        session, source = open_precompiled(
            root / npu.graph.path, providers, options.threads, context, entries,
            requires_npu(options.providers),
        )  # fmt: skip
        return StaticGraph(session, config, source)

    prefill = open_graph(selection.prefill)
    if options.context not in (None, prefill.context):
        log.warning(
            "the NPU graphs read a cache of %d positions: --context %d does not apply",
            prefill.context,
            options.context,
        )
    decode = open_graph(selection.decode) if selection.decode else cpu_decoder(prefill.context)
    return SplitDecoder(config, prefill, decode)
