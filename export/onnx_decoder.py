"""The LLaMA decoder as an ONNX graph on ONNX Runtime's fused operators.

The graph is emitted operator by operator from the weights, the way
onnxruntime-genai's model builder does: a generic exporter (optimum-onnx,
torch.onnx) produces an input_ids graph whose attention ORT must pattern-match
back into a fused op, and a KV cache that grows by concatenation. Here every
layer is

    SkipSimplifiedLayerNormalization -> MatMul (packed q|k|v) ->
    GroupQueryAttention (rotary fused, KV cache in place) -> MatMul (o) ->
    SkipSimplifiedLayerNormalization -> MatMul (packed gate|up) -> SiLU * up -> MatMul (down)

and the graph takes ``inputs_embeds`` (so image embeddings splice in) and
returns the logits of the last position only, (batch, 1, vocab) (the lm_head over every prompt
position would cost more than the prompt's layers for a small LLM).

Inputs: ``inputs_embeds`` (batch, seq, hidden) float32; ``seqlens_k``
(batch,) int32 = tokens in the cache after this call, minus one;
``total_sequence_length`` () int32 = that count; per layer ``past_key_<i>`` /
``past_value_<i>`` (batch, kv_heads, capacity, head_dim). Outputs: ``logits``
(batch, 1, vocab) and ``present_key_<i>`` / ``present_value_<i>``. When the
caller binds each present output to the buffer of its past input, ORT updates
the cache in place: no copy, no per-token allocation. These names are written
once, in :mod:`mobilevlm.runtime.ort.graph_io`, which the runtime reads too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilevlm.config import LLMConfig
from mobilevlm.export.external_data import ExternalData
from mobilevlm.runtime.ort.graph_io import (
    INPUT_EMBEDS,
    LOGITS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    past_names,
    present_names,
)

OPSET = 17
MS_DOMAIN = "com.microsoft"
LM_HEAD = "lm_head"  # the lm_head MatMul's node name (the int4 recipes keep it 8-bit)


def rotary_caches(
    inv_freq: np.ndarray, positions: int, attention_scaling: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables (positions, head_dim / 2) for GroupQueryAttention's fused rotary.

    ``inv_freq`` is the LLM's own (transformers computes it from rope_theta and
    any rope_scaling), so scaled variants come out right without special cases.
    """
    freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq.astype(np.float64))
    return (
        (np.cos(freqs) * attention_scaling).astype(np.float32),
        (np.sin(freqs) * attention_scaling).astype(np.float32),
    )


class _Graph:
    """Collects nodes and initializers; names every value after the node that makes it.

    With ``external``, every weight that is not small goes straight to its file as it is
    made and the graph only references it, so a 1.4B-parameter decoder is emitted holding
    one weight at a time rather than a second copy of the model (which ran a 23 GiB
    machine out of memory)."""

    def __init__(self, external: ExternalData | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.external = external

    def weight(self, name: str, array: np.ndarray) -> str:
        if self.external is None:
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        else:
            self.initializers.append(self.external.array(name, array))
        return name

    def op(
        self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs
    ) -> list[str]:
        domain = (
            MS_DOMAIN
            if op_type in ("GroupQueryAttention", "SkipSimplifiedLayerNormalization")
            else ""
        )
        names = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=name, domain=domain, **attrs)
        )
        return names

    def matmul(self, x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """x @ weight.T (torch's (out, in) layout); the quantizers rewrite these MatMuls."""
        (y,) = self.op("MatMul", [x, self.weight(f"{name}.weight", weight.T)], name)
        if bias is not None:
            (y,) = self.op("Add", [y, self.weight(f"{name}.bias", bias)], f"{name}_bias")
        return y


def build_decoder(
    config: LLMConfig,
    weights: dict[str, np.ndarray],
    inv_freq: np.ndarray,
    attention_scaling: float = 1.0,
    external: ExternalData | None = None,
) -> onnx.ModelProto:
    """The decoder graph of a ``LlamaForCausalLM`` state dict (float32 numpy, HF key names);
    ``external``: where the weights are written as they are made."""
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (LLaMA uses silu)")
    heads, kv_heads, head_dim = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    hidden, eps = config.hidden_size, config.rms_norm_eps
    g = _Graph(external)
    cos, sin = rotary_caches(inv_freq, config.max_position_embeddings, attention_scaling)
    cos_name, sin_name = g.weight("cos_cache", cos), g.weight("sin_cache", sin)

    def w(key: str) -> np.ndarray:
        return weights[key]

    def b(key: str) -> np.ndarray | None:
        return weights.get(key)

    def packed(prefixes: list[str], bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Projections that read the same input, as one (sum of outs, in) matrix."""
        weight = np.concatenate([w(f"{k}.weight") for k in prefixes])
        return weight, np.concatenate([w(f"{k}.bias") for k in prefixes]) if bias else None

    def add_and_norm(block_out: str | None, residual: str, key: str, name: str):
        """RMSNorm of ``residual + block_out`` and that sum, the new residual stream."""
        ln = g.weight(key, w(key))
        if block_out is None:
            (normed,) = g.op(
                "SimplifiedLayerNormalization", [residual, ln], name, axis=-1, epsilon=eps
            )
            return normed, residual
        normed, _, _, summed = g.op(
            "SkipSimplifiedLayerNormalization", [block_out, residual, ln], name, 4, epsilon=eps
        )
        return normed, summed

    inputs = [
        helper.make_tensor_value_info(INPUT_EMBEDS, TensorProto.FLOAT, ["batch", "seq", hidden]),
        helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
    ]
    outputs = [
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", 1, config.vocab_size])
    ]
    cache_shape = ["batch", kv_heads, "capacity", head_dim]

    x, pending = INPUT_EMBEDS, None  # residual stream; a block output not yet added to it
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        # pre-attention norm, adding the previous layer's MLP output to the residual on the way
        normed, x = add_and_norm(pending, x, f"{p}.input_layernorm.weight", f"{p}/input_norm")
        a = f"{p}.self_attn"
        qkv_w, qkv_b = packed([f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], config.attention_bias)
        qkv = g.matmul(normed, qkv_w, f"{a}.qkv_proj", qkv_b)
        past_k, past_v = past_names(i)
        present_k, present_v = present_names(i)
        inputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_shape)
            for n in (past_k, past_v)
        ]
        outputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_shape)
            for n in (present_k, present_v)
        ]
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", past_k, past_v, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, cos_name, sin_name],
                [f"{a}/attn", present_k, present_v],
                name=f"{a}/attn",
                domain=MS_DOMAIN,
                num_heads=heads,
                kv_num_heads=kv_heads,
                do_rotary=1,
                rotary_interleaved=0,
                scale=float(head_dim**-0.5),
            )
        )
        attn_out = g.matmul(
            f"{a}/attn", w(f"{a}.o_proj.weight"), f"{a}.o_proj", b(f"{a}.o_proj.bias")
        )
        # post-attention norm, adding the attention output to the residual
        normed, x = add_and_norm(
            attn_out, x, f"{p}.post_attention_layernorm.weight", f"{p}/post_attention_norm"
        )
        m = f"{p}.mlp"
        gate_up_w, gate_up_b = packed([f"{m}.gate_proj", f"{m}.up_proj"], config.mlp_bias)
        gate_up = g.matmul(normed, gate_up_w, f"{m}.gate_up_proj", gate_up_b)
        split = g.weight(f"{m}.split", np.array([config.intermediate_size] * 2, dtype=np.int64))
        gate, up = g.op("Split", [gate_up, split], f"{m}/split", 2, axis=-1)
        (sig,) = g.op("Sigmoid", [gate], f"{m}/sigmoid")
        (silu,) = g.op("Mul", [gate, sig], f"{m}/silu")
        (act,) = g.op("Mul", [silu, up], f"{m}/act")
        pending = g.matmul(
            act, w(f"{m}.down_proj.weight"), f"{m}.down_proj", b(f"{m}.down_proj.bias")
        )

    normed, _ = add_and_norm(pending, x, "model.norm.weight", "model/norm")
    last = g.weight("last_position", np.array([-1], dtype=np.int64))
    (last_hidden,) = g.op("Gather", [normed, last], "model/last_position", axis=1)
    lm_head = g.matmul(last_hidden, w("lm_head.weight"), LM_HEAD)
    g.nodes.append(helper.make_node("Identity", [lm_head], [LOGITS], name=LOGITS))

    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="mobilevlm-export",
    )
    model.ir_version = 8
    return model
