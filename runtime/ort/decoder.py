"""The LLM decoder on ONNX Runtime, driven through IO binding.

Bound once at load: every layer's KV buffers (past and present alike), the
logits buffer, the two length scalars and a one-token input. A decode step
then writes the token's embedding and the two lengths into those buffers in
place and runs: no OrtValue is created, no past tensor is copied or
concatenated in Python. A prefill binds its (seq, hidden) input once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevlm.config import LLMConfig
from mobilevlm.errors import BundleError, ContextOverflowError, at
from mobilevlm.runtime.ort.graph_io import (
    INPUT_EMBEDS,
    LOGITS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    past_names,
    present_names,
)
from mobilevlm.runtime.ort.kv_cache import KVCache
from mobilevlm.runtime.ort.providers import PARALLEL_PREPACK, create_session

# MatMulNBits packs its weights at load; on the intra-op threads the int4 decoder at
# MobileVLM_V2-1.7B's geometry (2 cores) opened in 0.65-0.85 s instead of 1.0-1.2, and the
# whole int4/int8-vision pipeline loaded in 1.1 s instead of 2.0 with no higher peak. Not
# for float MatMuls: the default model's fp32 pipeline then peaked at 1,133 MiB against
# 736, and the fp32 ViT-L's session at 2,284 MiB against 1,330.
QUANTIZED_SESSION_CONFIG = {PARALLEL_PREPACK: "1"}
# A prompt runs in chunks of at most this many positions: a run's activations and attention
# scores grow with its positions (a 4,000-token prompt in one run: 236 MiB beyond the KV
# cache; in chunks of 250: 29), and a memory budget must hold for any prompt.
PREFILL_CHUNK = 256


class OnnxDecoder:
    def __init__(
        self,
        path: str | Path,
        config: LLMConfig,
        capacity: int,
        providers: list[tuple[str, dict[str, str]]],
        threads: int | None = None,
        quantized: bool = False,
    ) -> None:
        """``quantized``: the graph's MatMuls are MatMulNBits (the int8 and int4 decoders)."""
        import onnxruntime

        self.config = config
        config_entries = QUANTIZED_SESSION_CONFIG if quantized else None
        self.session = create_session(path, providers, threads, config_entries)
        expected = {INPUT_EMBEDS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, *past_names(0)}
        names = {i.name for i in self.session.get_inputs()}
        if not expected <= names:
            raise BundleError(at(path, f"not a decoder graph (inputs {sorted(names)[:5]}...)"))
        self.binding = self.session.io_binding()

        def value(array: np.ndarray):
            return onnxruntime.OrtValue.ortvalue_from_numpy(array)

        self._logits = value(np.zeros((1, 1, config.vocab_size), np.float32))
        self._seqlens = value(np.zeros(1, np.int32))
        self._total = value(np.zeros((), np.int32))
        self._token = value(np.zeros((1, 1, config.hidden_size), np.float32))
        # numpy views onto the bound buffers: writing them is writing the graph's inputs
        self._logits_view = self._logits.numpy()[0, 0]
        self._seqlens_view = self._seqlens.numpy()
        self._total_view = self._total.numpy()
        self._token_view = self._token.numpy()[0]
        self._bind(KVCache(config, capacity))

    def _bind(self, cache: KVCache) -> None:
        """Bind every buffer: the fixed ones and ``cache``'s, each layer's present output
        on its past input (the graph writes new positions in place)."""
        self.cache = cache
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_ortvalue_output(LOGITS, self._logits)
        b.bind_ortvalue_input(SEQLENS_K, self._seqlens)
        b.bind_ortvalue_input(TOTAL_SEQUENCE_LENGTH, self._total)
        for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
            past_k, past_v = past_names(layer)
            present_k, present_v = present_names(layer)
            b.bind_ortvalue_input(past_k, k)
            b.bind_ortvalue_input(past_v, v)
            b.bind_ortvalue_output(present_k, k)
            b.bind_ortvalue_output(present_v, v)
        self._token_bound = False  # the one-position input is bound again on the next step

    def reset(self) -> None:
        self.cache.reset()

    def release_cache(self) -> None:
        """Empty the cache and free its buffers: new ones, of the same capacity, become
        resident only as positions fill again."""
        self._bind(KVCache(self.config, self.cache.capacity))  # the old ones are unbound

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (seq, hidden) float32, in runs of at most ``PREFILL_CHUNK``
        positions; logits (vocab,) of the last position.

        The returned array is the bound output buffer: valid until the next call."""
        seq = embeds.shape[0]
        if seq > self.cache.free:
            raise ContextOverflowError(
                f"{seq} more positions do not fit: {self.cache.length} of the context's "
                f"{self.cache.capacity} are used"
            )
        if seq == 1:
            return self.decode(embeds[0])
        for start in range(0, seq, PREFILL_CHUNK):
            chunk = embeds[start : start + PREFILL_CHUNK]
            if len(chunk) == 1:  # a last chunk of one position: the decode step's buffer
                return self.decode(chunk[0])
            self.binding.bind_cpu_input(INPUT_EMBEDS, np.ascontiguousarray(chunk[None], np.float32))
            self._token_bound = False
            logits = self._run(len(chunk))
        return logits

    def decode(self, embedding: np.ndarray) -> np.ndarray:
        """Append one position from its (hidden,) embedding (any float dtype, e.g. a row of an
        fp16 table): it is written straight into the bound input buffer."""
        if not self.cache.free:
            raise ContextOverflowError(f"the context's {self.cache.capacity} positions are used")
        np.copyto(self._token_view[0], embedding)
        if not self._token_bound:
            self.binding.bind_ortvalue_input(INPUT_EMBEDS, self._token)
            self._token_bound = True
        return self._run(1)

    def _run(self, seq: int) -> np.ndarray:
        total = self.cache.length + seq
        self._seqlens_view[0] = total - 1
        self._total_view[...] = total
        self.session.run_with_iobinding(self.binding)
        self.cache.length = total
        return self._logits_view
