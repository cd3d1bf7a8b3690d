"""The ONNX graphs' input and output names: the contract between the exporter
(:mod:`mobilevlm.export.onnx_vision`, :mod:`mobilevlm.export.onnx_decoder`,
:mod:`mobilevlm.export.qnn_vision`) and the ONNX Runtime engine
(:mod:`mobilevlm.runtime.ort.vision`, :mod:`mobilevlm.runtime.ort.decoder`).

Written once, here, and imported by both sides. Bundles already on disk carry
these names: changing a value breaks every bundle exported before the change.
"""

from __future__ import annotations

# ---------------------------------------------------------------- vision graph
# (batch, 3, S, S) float32 -> (batch, image_tokens, llm_hidden) float32
PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"

# ---------------------------------------------------------------- decoder graph
# inputs: (batch, seq, hidden) float32; (batch,) int32 = tokens in the cache after the
# call, minus one; () int32 = that count
INPUT_EMBEDS = "inputs_embeds"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
# output: (batch, 1, vocab) float32, the last position's logits
LOGITS = "logits"
# per layer i, (batch, kv_heads, capacity, head_dim) float32: the cache read (past) and
# written (present); binding a present output to its past input updates it in place
PAST_KEY, PAST_VALUE = "past_key_{layer}", "past_value_{layer}"
PRESENT_KEY, PRESENT_VALUE = "present_key_{layer}", "present_value_{layer}"


# ---------------------------------------------------------------- NPU decoder graphs
# (mobilevlm.export.qnn_decoder) static: N rows over a past of C positions. Inputs:
# inputs_embeds (1, N, hidden) float32; position ids (1, N) int32; an additive mask
# (1, 1, N, C + N) float32; past_key_<i> / past_value_<i> (1, kv_heads, C, head_dim).
# Outputs: logits (1, 1, vocab) of the last row; the rows' own K/V, (1, kv_heads, N, head_dim)
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
NEW_KEY, NEW_VALUE = "new_key_{layer}", "new_value_{layer}"


def past_names(layer: int) -> tuple[str, str]:
    """The decoder's (key, value) cache inputs of ``layer``."""
    return PAST_KEY.format(layer=layer), PAST_VALUE.format(layer=layer)


def present_names(layer: int) -> tuple[str, str]:
    """The decoder's (key, value) cache outputs of ``layer``."""
    return PRESENT_KEY.format(layer=layer), PRESENT_VALUE.format(layer=layer)


def new_names(layer: int) -> tuple[str, str]:
    """The NPU decoder's (key, value) outputs of ``layer``: its rows' K/V."""
    return NEW_KEY.format(layer=layer), NEW_VALUE.format(layer=layer)
