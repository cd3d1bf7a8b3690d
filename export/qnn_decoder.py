"""The LLM decoder as the static graphs Qualcomm's HTP takes: AR-N prefill and AR-1 decode.

The CPU graph (:mod:`mobilevlm.export.onnx_decoder`) is built on ONNX Runtime's fused
CPU operators with dynamic shapes; QNN takes neither. This graph is the same LLaMA
layer in standard operators at fixed shapes, the form Qualcomm's Genie, ExecuTorch and
Olive give an NPU:

    RMSNormalization -> MatMul q, k, v -> RoPE (cos/sin gathered by position)
    -> Concat(past K/V, new K/V) -> scores + additive mask -> Softmax -> MatMul -> MatMul o
    -> Add -> RMSNormalization -> MatMul gate, up -> SiLU * up -> MatMul down -> Add

Inputs (``positions`` = N rows, ``context`` = C past positions, names in
:mod:`mobilevlm.runtime.ort.graph_io`): ``inputs_embeds`` (1, N, hidden) float32;
``position_ids`` (1, N) int32; ``attention_mask`` (1, 1, N, C + N) float32, 0 where a row
may attend and :data:`MASK_VALUE` where not; per layer ``past_key_<i>`` / ``past_value_<i>``
(1, kv_heads, C, head_dim), the host's cache. Outputs: ``logits`` (1, 1, vocab) of the
last row, and per layer ``new_key_<i>`` / ``new_value_<i>`` (1, kv_heads, N, head_dim),
the rows' rotated keys and values, which the host writes into its cache: the layout and
the rotation are the CPU graph's, so a cache filled on the NPU decodes on the CPU as is.

A prompt shorter than N is padded at the front (its last position is always the last
row: the logits need no dynamic index), and the mask keeps real rows from the padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from mobilevlm.config import LLMConfig
from mobilevlm.export.external_data import ExternalData
from mobilevlm.export.onnx_decoder import LM_HEAD, _Graph, rotary_caches
from mobilevlm.runtime.ort.graph_io import (
    ATTENTION_MASK,
    INPUT_EMBEDS,
    LOGITS,
    POSITION_IDS,
    new_names,
    past_names,
)

# 23: RMSNormalization is a standard op from 23 on (onnxruntime's SimplifiedLayerNormalization
# has no ONNX schema, so the quantizer's shape inference, and with it the calibration of every
# tensor after the first norm, stopped there); 16-bit QDQ needs 21
OPSET = 23
ROPE_TABLES = ("rope_cos", "rope_sin")  # kept at 16 bits by the quantizer: positions' angles


def build_static_decoder(
    config: LLMConfig,
    weights: dict[str, np.ndarray],
    inv_freq: np.ndarray,
    positions: int,
    context: int,
    attention_scaling: float = 1.0,
    external: ExternalData | None = None,
) -> onnx.ModelProto:
    """The graph of ``positions`` rows over a past of ``context`` positions, from a
    ``LlamaForCausalLM`` state dict (float32 numpy, HF key names)."""
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (LLaMA uses silu)")
    heads, kv_heads, head_dim = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    groups, half, n = heads // kv_heads, head_dim // 2, positions
    hidden, eps = config.hidden_size, config.rms_norm_eps
    g = _Graph(external)

    def const(name: str, values, dtype=np.int64) -> str:
        return g.weight(name, np.array(values, dtype=dtype))

    def w(key: str) -> np.ndarray:
        return weights[key]

    def b(key: str) -> np.ndarray | None:
        return weights.get(key)

    def norm(x: str, key: str, name: str) -> str:
        (y,) = g.op("RMSNormalization", [x, g.weight(key, w(key))], name, axis=-1, epsilon=eps)
        return y

    def linear(x: str, prefix: str) -> str:
        return g.matmul(x, w(f"{prefix}.weight"), prefix, b(f"{prefix}.bias"))

    def heads_first(x: str, count: int, name: str) -> str:
        """(1, N, count * head_dim) -> (1, count, N, head_dim)."""
        (y,) = g.op("Reshape", [x, const(f"{name}/shape", [1, n, count, head_dim])], name)
        (y,) = g.op("Transpose", [y], f"{name}/t", perm=[0, 2, 1, 3])
        return y

    # the rotation of each row's position: cos and sin gathered from tables of every position
    cos, sin = rotary_caches(inv_freq, config.max_position_embeddings, attention_scaling)
    angles = []
    for table, values in zip(ROPE_TABLES, (cos, sin), strict=True):
        (rows,) = g.op("Gather", [g.weight(table, values), POSITION_IDS], f"{table}/gather", axis=0)
        (rows,) = g.op("Unsqueeze", [rows, const(f"{table}/axis", [1])], f"{table}/unsqueeze")
        angles.append(rows)  # (1, 1, N, head_dim / 2)
    cos_rows, sin_rows = angles
    halves = const("rope/halves", [half, half])

    def rotate(x: str, name: str) -> str:
        """RoPE in the half-split layout (transformers' rotate_half)."""
        x1, x2 = g.op("Split", [x, halves], f"{name}/split", 2, axis=-1)
        (a,) = g.op("Mul", [x1, cos_rows], f"{name}/x1cos")
        (b_,) = g.op("Mul", [x2, sin_rows], f"{name}/x2sin")
        (c,) = g.op("Mul", [x2, cos_rows], f"{name}/x2cos")
        (d,) = g.op("Mul", [x1, sin_rows], f"{name}/x1sin")
        (first,) = g.op("Sub", [a, b_], f"{name}/first")
        (second,) = g.op("Add", [c, d], f"{name}/second")
        (y,) = g.op("Concat", [first, second], f"{name}/concat", axis=-1)
        return y

    # every query head of a KV head's group reads the same mask rows: (1, 1, groups * N, C + N)
    (mask,) = g.op("Tile", [ATTENTION_MASK, const("mask/repeats", [1, 1, groups, 1])], "mask")
    scale = const("attention/scale", [head_dim**-0.5], np.float32)

    inputs = [
        helper.make_tensor_value_info(INPUT_EMBEDS, TensorProto.FLOAT, [1, n, hidden]),
        helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT32, [1, n]),
        helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.FLOAT, [1, 1, n, context + n]),
    ]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [1, 1, config.vocab_size])]
    past_shape, new_shape = [1, kv_heads, context, head_dim], [1, kv_heads, n, head_dim]

    x = INPUT_EMBEDS
    for i in range(config.num_hidden_layers):
        p, a = f"model.layers.{i}", f"model.layers.{i}.self_attn"
        normed = norm(x, f"{p}.input_layernorm.weight", f"{p}/input_norm")
        q = rotate(heads_first(linear(normed, f"{a}.q_proj"), heads, f"{a}/q"), f"{a}/q_rope")
        k = rotate(heads_first(linear(normed, f"{a}.k_proj"), kv_heads, f"{a}/k"), f"{a}/k_rope")
        v = heads_first(linear(normed, f"{a}.v_proj"), kv_heads, f"{a}/v")
        past_k, past_v = past_names(i)
        new_k, new_v = new_names(i)
        inputs += [
            helper.make_tensor_value_info(t, TensorProto.FLOAT, past_shape)
            for t in (past_k, past_v)
        ]
        outputs += [
            helper.make_tensor_value_info(t, TensorProto.FLOAT, new_shape) for t in (new_k, new_v)
        ]
        g.nodes += [
            helper.make_node("Identity", [k], [new_k], name=f"{a}/new_k"),
            helper.make_node("Identity", [v], [new_v], name=f"{a}/new_v"),
        ]
        (keys,) = g.op("Concat", [past_k, k], f"{a}/keys", axis=2)  # (1, kv, C + N, hd)
        (values,) = g.op("Concat", [past_v, v], f"{a}/values", axis=2)
        # a KV head's query heads stacked as rows: (1, kv, groups * N, hd), no repeated K/V
        (q,) = g.op("Mul", [q, scale], f"{a}/q_scaled")
        (q,) = g.op(
            "Reshape",
            [q, const(f"{a}/q_groups", [1, kv_heads, groups * n, head_dim])],
            f"{a}/q_grouped",
        )
        (keys_t,) = g.op("Transpose", [keys], f"{a}/keys_t", perm=[0, 1, 3, 2])
        (scores,) = g.op("MatMul", [q, keys_t], f"{a}/scores")
        (scores,) = g.op("Add", [scores, mask], f"{a}/masked")
        (probs,) = g.op("Softmax", [scores], f"{a}/softmax", axis=-1)
        (attn,) = g.op("MatMul", [probs, values], f"{a}/attn")
        (attn,) = g.op(
            "Reshape", [attn, const(f"{a}/heads", [1, heads, n, head_dim])], f"{a}/attn_heads"
        )
        (attn,) = g.op("Transpose", [attn], f"{a}/attn_t", perm=[0, 2, 1, 3])
        (attn,) = g.op(
            "Reshape", [attn, const(f"{a}/rows", [1, n, heads * head_dim])], f"{a}/attn_rows"
        )
        (x,) = g.op("Add", [x, linear(attn, f"{a}.o_proj")], f"{p}/attn_residual")

        m = f"{p}.mlp"
        normed = norm(x, f"{p}.post_attention_layernorm.weight", f"{p}/post_attention_norm")
        gate, up = linear(normed, f"{m}.gate_proj"), linear(normed, f"{m}.up_proj")
        (sig,) = g.op("Sigmoid", [gate], f"{m}/sigmoid")
        (silu,) = g.op("Mul", [gate, sig], f"{m}/silu")
        (act,) = g.op("Mul", [silu, up], f"{m}/act")
        (x,) = g.op("Add", [x, linear(act, f"{m}.down_proj")], f"{p}/mlp_residual")

    normed = norm(x, "model.norm.weight", "model/norm")
    (last,) = g.op("Gather", [normed, const("last_row", [n - 1])], "model/last_row", axis=1)
    lm_head = g.matmul(last, w("lm_head.weight"), LM_HEAD)
    g.nodes.append(helper.make_node("Identity", [lm_head], [LOGITS], name=LOGITS))

    graph = helper.make_graph(g.nodes, f"decoder_ar{n}", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mobilevlm-export"
    )
    model.ir_version = 8
    return model


def save_static_decoder(model, path: Path, positions: int, context: int) -> None:
    """The fp32 static graph of ``model``'s LLM (a MobileVLM), ``positions`` rows over
    ``context`` past positions, with its weights as external data beside it."""
    from mobilevlm.export.onnx_bundle import save_llm_graph

    def build(config, weights, inv_freq, attention_scaling, external):
        return build_static_decoder(
            config, weights, inv_freq, positions, context, attention_scaling, external
        )

    save_llm_graph(model, path, build)
