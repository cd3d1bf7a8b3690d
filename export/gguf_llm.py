"""The LLM as a llama.cpp GGUF: weights, geometry, tokenizer and chat template.

Written with the ``gguf`` package from the model's own tensors (f16 matrices,
f32 norms); quantized variants come from llama.cpp's own quantizer
(:func:`quantize_llm`). Two facts of llama.cpp's ``llama`` architecture shape
the file:

- its rotary embedding rotates interleaved pairs, while Hugging Face LLaMA
  weights rotate the two halves of each head, so q and k rows are permuted
  back into llama.cpp's order;
- its tokenizer is rebuilt from GGUF metadata, so the vocabulary must be
  written as the tokenizer family llama.cpp implements: a byte-level BPE as
  ``gpt2`` with the matching pre-tokenizer (``smollm`` when digits are split
  one by one, as SmolLM2 does; ``gpt-2`` otherwise), a byte-fallback BPE
  (converted SentencePiece, MobileLLaMA) as ``llama`` with scores that keep
  its merge order. :func:`check_tokenizer` proves the round trip inside
  llama.cpp at export time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

from mobilevlm.config import LLMConfig, ModelConfig
from mobilevlm.errors import BundleError, UnsupportedModelError, at
from mobilevlm.generation.prompts import get_template
from mobilevlm.generation.tokenizer import Tokenizer
from mobilevlm.manifest import GGUF_PRECISIONS

log = logging.getLogger(__name__)

# llama.cpp's llama_ftype values for what its quantizer makes from the f16 file
LLAMA_FTYPES = {"q8_0": 7, "q4_k_m": 15}
TOKENIZER_PROBES = (
    "What color is the circle in the top left?",
    "  two spaces, 12345 digits, tabs\tand\nnewlines; émigré ümlaut 日本",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "A chat between a curious user and an artificial intelligence assistant.</s>USER: x",
)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _rotary_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection from Hugging Face's half-split rotary layout to llama.cpp's
    interleaved one: within each head, row i of the first half and row i of the second
    half become rows 2i and 2i+1."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _check_supported(llm: LLMConfig) -> None:
    problems = []
    if llm.attention_bias or llm.mlp_bias:
        problems.append("attention/MLP biases")
    if llm.rope_scaling and llm.rope_scaling.get("rope_type", llm.rope_scaling.get("type")) not in (
        None,
        "default",
        "linear",
    ):
        problems.append(f"rope scaling {llm.rope_scaling}")
    if llm.hidden_act != "silu":
        problems.append(f"activation {llm.hidden_act}")
    if problems:
        raise UnsupportedModelError(
            f"the GGUF export does not support this LLM's {', '.join(problems)}"
        )


@dataclass(frozen=True)
class PendingTensor:
    """A GGUF tensor to be made from a float32 source when it is written: converted one at
    a time, a 1.4B LLM's f16 tensors never sit in memory together (2.7 GB at once)."""

    source: np.ndarray
    heads: int | None = None  # q/k rows to reorder into llama.cpp's rotary layout

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.source.ndim == 1 else np.float16)

    @property
    def nbytes(self) -> int:
        return self.source.size * self.dtype.itemsize

    def make(self) -> np.ndarray:
        array = self.source if self.heads is None else _rotary_order(self.source, self.heads)
        return array.astype(self.dtype)


def gguf_tensors(llm: LLMConfig, state: dict[str, np.ndarray]) -> dict[str, PendingTensor]:
    """llama.cpp tensor names -> tensors (f16 matrices, f32 vectors) of a LlamaForCausalLM
    state dict in float32, in the file's order."""
    head_dim = llm.head_dim or llm.hidden_size // llm.num_attention_heads

    def get(name: str, heads: bool = False) -> PendingTensor:
        try:
            source = state[name]
        except KeyError:
            raise UnsupportedModelError(f"the LLM has no tensor {name!r}") from None
        return PendingTensor(source, source.shape[0] // head_dim if heads else None)

    out = {"token_embd.weight": get("model.embed_tokens.weight")}
    for i in range(llm.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"blk.{i}."
        out[dst + "attn_norm.weight"] = get(src + "input_layernorm.weight")
        out[dst + "attn_q.weight"] = get(src + "self_attn.q_proj.weight", heads=True)
        out[dst + "attn_k.weight"] = get(src + "self_attn.k_proj.weight", heads=True)
        out[dst + "attn_v.weight"] = get(src + "self_attn.v_proj.weight")
        out[dst + "attn_output.weight"] = get(src + "self_attn.o_proj.weight")
        out[dst + "ffn_norm.weight"] = get(src + "post_attention_layernorm.weight")
        out[dst + "ffn_gate.weight"] = get(src + "mlp.gate_proj.weight")
        out[dst + "ffn_up.weight"] = get(src + "mlp.up_proj.weight")
        out[dst + "ffn_down.weight"] = get(src + "mlp.down_proj.weight")
    out["output_norm.weight"] = get("model.norm.weight")
    if not llm.tie_word_embeddings:  # tied: llama.cpp reuses token_embd for the output
        out["output.weight"] = get("lm_head.weight")
    return out


# ---------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(spec: dict) -> str | None:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer, None if it has none for it."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    return None


def _adds_space_prefix(spec: dict) -> bool:
    """Whether a converted SentencePiece tokenizer puts "▁" before the text, as
    SentencePiece does (a Prepend normalizer, or a Metaspace that prepends)."""
    steps = []
    for part in (spec.get("normalizer"), spec.get("pre_tokenizer")):
        if part:
            steps += part.get("normalizers", part.get("pretokenizers", [part]))
    for step in steps:
        if step.get("type") == "Prepend":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never"
    return False


def _vocab(tokenizer: Tokenizer, vocab_size: int) -> dict:
    """GGUF tokenizer fields: model, pre, tokens, scores, types, merges, special ids."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedModelError(
            f"{tokenizer.source}: a {model.get('type')} tokenizer has no llama.cpp equivalent here"
        )
    pieces = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    pieces.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    size = max(vocab_size, max(pieces.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TokenType.UNUSED] * size
    for text, i in pieces.items():
        tokens[i] = text
        types[i] = TokenType.CONTROL if text in special else TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields: dict = {"tokens": tokens, "types": types, "merges": merges}
    if model.get("byte_fallback"):  # converted SentencePiece: llama.cpp's SPM tokenizer
        fields["model"] = "llama"
        # SentencePiece BPE ids follow merge order, so -id ranks pieces as its scores do
        fields["scores"] = [-float(i) for i in range(size)]
        for i, text in enumerate(tokens):
            if _BYTE_TOKEN.fullmatch(text):
                types[i] = TokenType.BYTE
        fields["space_prefix"] = _adds_space_prefix(spec)
        unk = model.get("unk_token")
        if unk in pieces:
            types[pieces[unk]] = TokenType.UNKNOWN
            fields["unk"] = pieces[unk]
    else:
        pre = _pre_tokenizer_name(spec)
        if pre is None or (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise UnsupportedModelError(
                f"{tokenizer.source}: this BPE tokenizer's pre-tokenizer has no llama.cpp "
                "equivalent (supported: byte-level GPT-2, SmolLM digits + byte-level)"
            )
        fields["model"], fields["pre"] = "gpt2", pre
    return fields


def chat_template(config: ModelConfig) -> str:
    """A Jinja chat template that renders what :mod:`mobilevlm.generation.prompts` renders
    (text only; the image goes where a client puts its media marker)."""
    template = get_template(config.template)
    system = config.system_prompt if config.system_prompt is not None else template.default_system
    default = json.dumps(system)
    head = (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system = {default} -%}}{{%- set turns = messages -%}}"
        "{%- endif -%}"
    )
    if config.template == "v1":
        body = (
            "{{- system + ' ' -}}{%- for m in turns -%}"
            "{%- if m['role'] == 'user' -%}{{- 'USER: ' + m['content'] + ' ' -}}"
            "{%- else -%}{{- 'ASSISTANT: ' + m['content'] + '</s>' -}}{%- endif -%}"
            "{%- endfor -%}{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
        )
    elif config.template == "chatml":
        body = (
            "{%- if system -%}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}"
            "{%- endif -%}{%- for m in turns -%}"
            "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
        )
    else:  # pragma: no cover - get_template already refused unknown names
        raise UnsupportedModelError(f"no chat template for {config.template!r}")
    return head + body


# ---------------------------------------------------------------- writing


def write_llm_gguf(
    config: ModelConfig,
    state: dict[str, np.ndarray],
    tokenizer: Tokenizer,
    path: str | Path,
    name: str = "mobilevlm",
) -> dict:
    """Write the f16 LLM GGUF at ``path`` (atomically); ``state`` is the LLM's float32
    LlamaForCausalLM state dict. Returns the details recorded in the bundle manifest."""
    llm = config.llm
    _check_supported(llm)
    tensors = gguf_tensors(llm, state)
    vocab = _vocab(tokenizer, llm.vocab_size)
    head_dim = llm.head_dim or llm.hidden_size // llm.num_attention_heads
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name)
        writer.add_file_type(LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(len(vocab["tokens"]))
        writer.add_context_length(llm.max_position_embeddings)
        writer.add_embedding_length(llm.hidden_size)
        writer.add_block_count(llm.num_hidden_layers)
        writer.add_feed_forward_length(llm.intermediate_size)
        writer.add_head_count(llm.num_attention_heads)
        writer.add_head_count_kv(llm.num_key_value_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != llm.hidden_size // llm.num_attention_heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(llm.rope_theta)
        if llm.rope_scaling and llm.rope_scaling.get("factor"):
            from gguf import RopeScalingType

            writer.add_rope_scaling_type(RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(llm.rope_scaling["factor"]))
        writer.add_layer_norm_rms_eps(llm.rms_norm_eps)

        writer.add_tokenizer_model(vocab["model"])
        if "pre" in vocab:
            writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types([int(t) for t in vocab["types"]])
        if "scores" in vocab:
            writer.add_token_scores(vocab["scores"])
        if "space_prefix" in vocab:
            writer.add_add_space_prefix(vocab["space_prefix"])
        if vocab["merges"]:
            writer.add_token_merges(vocab["merges"])
        if tokenizer.bos_token_id is not None:
            writer.add_bos_token_id(tokenizer.bos_token_id)
        elif llm.bos_token_id is not None:
            writer.add_bos_token_id(llm.bos_token_id)
        writer.add_add_bos_token(tokenizer.bos_token_id is not None)
        if llm.eos_token_ids:
            writer.add_eos_token_id(llm.eos_token_ids[0])
        for stop in get_template(config.template).stop_strings:
            token = tokenizer.token_to_id(stop)
            if token is not None:  # the end of an answer, for llama.cpp's own chat loops
                writer.add_eot_token_id(token)
        if "unk" in vocab:
            writer.add_unk_token_id(vocab["unk"])
        if llm.pad_token_id is not None:
            writer.add_pad_token_id(llm.pad_token_id)
        writer.add_chat_template(chat_template(config))

        for tensor_name, tensor in tensors.items():
            writer.add_tensor_info(tensor_name, tensor.source.shape, tensor.dtype, tensor.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors.values():
            writer.write_tensor_data(tensor.make())
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    tmp.replace(path)
    return {"writer": "gguf", "tokenizer_model": vocab["model"], **_pre(vocab)}


def _pre(vocab: dict) -> dict:
    return {"tokenizer_pre": vocab["pre"]} if "pre" in vocab else {}


def quantize_llm(source: str | Path, target: str | Path, precision: str, threads: int = 0) -> dict:
    """``precision`` (q8_0, q4_k_m) from the f16 GGUF ``source``, by llama.cpp's quantizer."""
    from mobilevlm.runtime.llamacpp.model import import_llama_cpp

    llama_cpp = import_llama_cpp()
    if precision not in LLAMA_FTYPES:
        raise BundleError(f"GGUF precisions are {', '.join(GGUF_PRECISIONS)}, got {precision!r}")
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[precision]
    params.nthread = threads
    try:
        with llama_log(llama_cpp) as captured:
            code = llama_cpp.llama_model_quantize(
                str(source).encode(), str(tmp).encode(), llama_cpp.byref(params)
            )
        notes = "".join(captured)
        log.debug("llama.cpp's quantizer (%s):\n%s", precision, notes)
        if code != 0:
            last = (notes.strip().splitlines() or ["no message"])[-1]
            raise BundleError(
                at(source, f"llama.cpp could not quantize it to {precision} ({last})")
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    fallbacks = quantizer_fallbacks(notes)
    for line in describe_fallbacks(precision, fallbacks):
        log.warning(line)
    details = {"quantizer": "llama.cpp llama_model_quantize", "ftype": precision}
    return {**details, "fallbacks": fallbacks} if fallbacks else details


# "warning: blk.0.attn_k.weight - ncols 64 not divisible by 256 (required for type q4_K)
# -> falling back to q5_0": one line per tensor whose rows do not fit the wanted block size
FALLBACK = re.compile(
    r"ncols\s+\d+ not divisible by (\d+) \(required for type\s+(\w+)\)"
    r"\s*->\s*falling back to\s+(\w+)"
)


def quantizer_fallbacks(notes: str) -> dict[str, int]:
    """Tensors per fallback in llama.cpp's quantizer notes: ``{"q4_K->q5_0": 13, ...}``."""
    counts: dict[str, int] = {}
    for match in FALLBACK.finditer(notes):
        key = f"{match.group(2)}->{match.group(3)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def describe_fallbacks(precision: str, fallbacks: dict[str, int]) -> list[str]:
    """One line per fallback kind, instead of llama.cpp's line per tensor."""
    lines = []
    for key, count in fallbacks.items():
        wanted, used = key.split("->")
        lines.append(
            f"{precision}: {count} tensor{'s' * (count != 1)} fell back from {wanted} to "
            f"{used} (rows not a multiple of its block; -v shows each)"
        )
    return lines


@contextlib.contextmanager
def llama_log(llama_cpp) -> Iterator[list[str]]:
    """llama.cpp's log lines meanwhile, collected instead of printed (its quantizer notes a
    line per tensor); llama-cpp-python's own log callback is put back afterwards."""
    captured: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        captured.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield captured
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


# llama.cpp's CPU backend copies weight matrices of these types into an interleaved layout
# when it loads them (its CPU_REPACK buffer: q4_K and q4_0 as 8x8 blocks with AVX2, q4_0 and
# iq4_nl as 4x4 / 4x8 on ARM), and the mapped file pages of the same tensors stay resident
REPACKED_TYPES = ("Q4_0", "Q4_K", "IQ4_NL")
REPACK_ROWS = 8


def repacked_bytes(path: str | Path) -> int:
    """Bytes of the GGUF's weights that llama.cpp's CPU backend holds a second time,
    repacked: matrices of REPACKED_TYPES whose rows come in multiples of 8 (the token
    embedding, read row by row, stays as it is). At MobileVLM_V2-1.7B's size this is 560
    MiB of a 795 MiB q4_k_m file, which llama.cpp's own log confirms."""
    from gguf import GGUFReader

    total = 0
    for tensor in GGUFReader(str(path)).tensors:
        rows = tensor.shape[1] if len(tensor.shape) == 2 else 0
        if (
            tensor.tensor_type.name in REPACKED_TYPES
            and rows % REPACK_ROWS == 0
            and rows
            and tensor.name != "token_embd.weight"
        ):
            total += int(tensor.n_bytes)
    return total


def llama_cpp_tokenize(path: str | Path, texts: Sequence[str]) -> list[list[int]]:
    """How llama.cpp, reading only the vocabulary of the GGUF at ``path``, tokenizes each
    text (special tokens parsed, no BOS added)."""
    from mobilevlm.runtime.llamacpp.model import import_llama_cpp

    lib = import_llama_cpp()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise BundleError(at(path, "llama.cpp cannot read its vocabulary"))
    try:
        vocab = lib.llama_model_get_vocab(model)
        result = []
        for text in texts:
            data = text.encode("utf-8")
            room = len(data) + 8
            tokens = (lib.llama_token * room)()
            count = lib.llama_tokenize(vocab, data, len(data), tokens, room, False, True)
            result.append(list(tokens[: max(count, 0)]))
        return result
    finally:
        lib.llama_model_free(model)


def check_tokenizer(
    path: str | Path, tokenizer: Tokenizer, probes: Sequence[str] = TOKENIZER_PROBES
) -> None:
    """Raise :class:`BundleError` unless llama.cpp, reading the GGUF at ``path``, tokenizes
    every probe exactly as ``tokenizer`` does."""
    for text, theirs in zip(probes, llama_cpp_tokenize(path, probes), strict=True):
        ours = tokenizer.encode(text)
        if ours != theirs:
            raise BundleError(
                at(
                    path,
                    f"llama.cpp tokenizes {text!r} as {theirs[:12]}..., "
                    f"the model's tokenizer as {ours[:12]}...",
                )
            )
