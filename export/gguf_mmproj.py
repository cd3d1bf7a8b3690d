"""The vision side as an mmproj GGUF for llama.cpp's mtmd: CLIP tower plus projector.

The file is what ``tools/mtmd/clip.cpp`` loads for its ``clip_graph_llava``
(``tools/mtmd/models/llava.cpp``): ``clip.*`` metadata, ``v.*`` tower tensors
and ``mm.*`` projector tensors, with ``clip.projector_type`` ``ldp`` (ldpnet),
``ldpv2`` (ldpnetv2) or ``mlp`` (mlp2x_gelu).

Block count. Without ``clip.vision.feature_layer`` the llava graph runs
``block_count - 1`` blocks (it assumes the LLaVA default, select layer -2, on
a full tower); with it, the graph runs up to the deepest feature layer and
returns that hidden state (index 0 = the embeddings, as in transformers'
``hidden_states``). The writer therefore stores exactly the reference's
``num_layers_used`` blocks, ``block_count = num_layers_used`` and
``feature_layer = [num_layers_used]``: llama.cpp runs every block written, the
same blocks the reference runs, and no unused block is stored. (The legacy
converter, given a CLIP directory whose config has no select layer, writes
``layers - 1`` blocks without a feature layer, so llama.cpp stops one block
short of ``mm_vision_select_layer = -2``.)

What llama.cpp computes from these tensors still differs from the reference in
its token order (class token appended after the patches, so positions shift by
one and the first patch is dropped): see :mod:`mobilevlm.export.mtmd_emulation`
and docs/llama-cpp.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from mobilevlm.config import ClipVisionConfig, ModelConfig
from mobilevlm.errors import UnsupportedModelError, at
from mobilevlm.reference.model import MobileVLM

# the project's projector types -> llama.cpp's clip.projector_type
PROJECTOR_TYPES = {"ldpnet": "ldp", "ldpnetv2": "ldpv2", "mlp2x_gelu": "mlp"}
# llava.cpp reshapes LDP / LDPv2 tokens with a hard-coded `n_patch = 24`
LDP_GRID = 24
MMPROJ_FTYPES = ("f16", "f32")
# transformers' CLIP activation -> the clip.use_* flag selecting llama.cpp's FFN op
# (neither flag: quick GELU; ggml's gelu is the tanh approximation of transformers' erf gelu)
_FFN_FLAGS = {"quick_gelu": None, "gelu": "clip.use_gelu", "silu": "clip.use_silu"}
_TOWER = "vision_tower.vision_model."


def mmproj_problems(config: ModelConfig) -> list[str]:
    """Why llama.cpp's mtmd cannot run this model from an mmproj, one sentence each.

    Empty when it can. The geometry checks matter beyond a clean message: a
    graph llama.cpp cannot build aborts the whole process when mtmd loads it.
    """
    problems = []
    vision, projector = config.vision, config.projector.type
    if projector not in PROJECTOR_TYPES:
        problems.append(
            f"projector {projector!r} has no llama.cpp equivalent "
            f"(supported: {', '.join(PROJECTOR_TYPES)})"
        )
    if config.projector.cell_labels:
        problems.append("llama.cpp's ldpv2 graph writes no cell label tokens (cell_labels)")
    if not isinstance(vision, ClipVisionConfig):
        problems.append(f"vision tower {vision.type!r} is not a CLIP ViT, the only tower mtmd runs")
        return problems
    grid = vision.grid_size
    if projector in ("ldpnet", "ldpnetv2") and grid != LDP_GRID:
        problems.append(
            f"llama.cpp's {PROJECTOR_TYPES[projector]} graph hard-codes a {LDP_GRID}x{LDP_GRID} "
            f"patch grid ({LDP_GRID * vision.patch_size} px at patch {vision.patch_size}); "
            f"this model has {grid}x{grid} ({vision.image_size} px)"
        )
    if vision.select_feature != "patch":
        problems.append(
            f"mm_vision_select_feature {vision.select_feature!r}: llama.cpp's llava graph "
            "hands the projector one token per patch, never the class token in addition"
        )
    if vision.hidden_act not in _FFN_FLAGS:
        problems.append(f"CLIP activation {vision.hidden_act!r} has no llama.cpp equivalent")
    return problems


def _check(config: ModelConfig, path: Path) -> None:
    problems = mmproj_problems(config)
    if problems:
        raise UnsupportedModelError(
            at(path, "llama.cpp's mtmd cannot run this model: " + "; ".join(problems))
        )


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """A 1x1 convolution kernel (out, in, 1, 1) as the (out, in) matrix llama.cpp multiplies."""
    return a.reshape(a.shape[0], -1)


def _projector_names(projector: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp's ``mm.*`` names for the projector's tensors (``projector.*`` in ``state``).

    The names are those of the legacy MobileVLM converter (TN_MVLM_* and TN_LLAVA_PROJ in
    clip-impl.h); pointwise convolutions become matrices, depthwise kernels stay 4-D.
    """
    p = {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
    out: dict[str, np.ndarray] = {}
    if projector == "mlp2x_gelu":
        for i in (0, 2):
            out[f"mm.{i}.weight"] = p[f"{i}.weight"]
            out[f"mm.{i}.bias"] = p[f"{i}.bias"]
    elif projector == "ldpnetv2":
        for i in (0, 2):
            out[f"mm.model.mlp.{i}.weight"] = p[f"mlp.mlp.{i}.weight"]
            out[f"mm.model.mlp.{i}.bias"] = p[f"mlp.mlp.{i}.bias"]
        out["mm.model.peg.0.weight"] = p["peg.peg.0.weight"]
        out["mm.model.peg.0.bias"] = p["peg.peg.0.bias"]
    elif projector == "ldpnet":
        for i in (1, 3):
            out[f"mm.model.mlp.{i}.weight"] = p[f"mlp.{i}.weight"]
            out[f"mm.model.mlp.{i}.bias"] = p[f"mlp.{i}.bias"]
        for b in (1, 2):
            src, dst = f"mb_block.{b}.block.", f"mm.model.mb_block.{b}.block."
            out[dst + "0.0.weight"] = p[src + "0.0.weight"]  # depthwise 3x3
            out[dst + "0.1.weight"] = p[src + "0.1.weight"]
            out[dst + "0.1.bias"] = p[src + "0.1.bias"]
            for fc in ("fc1", "fc2"):  # squeeze-excitation 1x1 convs
                out[dst + f"1.{fc}.weight"] = _as_matrix(p[src + f"1.{fc}.weight"])
                out[dst + f"1.{fc}.bias"] = p[src + f"1.{fc}.bias"]
            out[dst + "2.0.weight"] = _as_matrix(p[src + "2.0.weight"])  # pointwise
            out[dst + "2.1.weight"] = p[src + "2.1.weight"]
            out[dst + "2.1.bias"] = p[src + "2.1.bias"]
    else:  # pragma: no cover - mmproj_problems refused it
        raise UnsupportedModelError(f"projector {projector!r} has no llama.cpp equivalent")
    return out


def _tower_names(vision: ClipVisionConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp's ``v.*`` names for the CLIP blocks the reference runs (no post-LN: the
    reference never applies it, and llama.cpp would if it were present)."""
    t = {k.removeprefix(_TOWER): v for k, v in state.items() if k.startswith(_TOWER)}
    out = {
        "v.class_embd": t["embeddings.class_embedding"],
        "v.patch_embd.weight": t["embeddings.patch_embedding.weight"],
        "v.position_embd.weight": t["embeddings.position_embedding.weight"],
        "v.pre_ln.weight": t["pre_layrnorm.weight"],
        "v.pre_ln.bias": t["pre_layrnorm.bias"],
    }
    # clip.cpp swaps ffn_up/ffn_down back when ffn_down's rows are n_embd wide (legacy files
    # named fc1 "ffn_down"); with n_ff == n_embd that test fires on correct names too, so
    # then the legacy names are written and the loader's swap restores fc1 as the up matrix.
    legacy = vision.intermediate_size == vision.hidden_size
    up, down = ("ffn_down", "ffn_up") if legacy else ("ffn_up", "ffn_down")
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.out_proj": "attn_out",
        "layer_norm1": "ln1",
        "layer_norm2": "ln2",
        "mlp.fc1": up,
        "mlp.fc2": down,
    }
    for i in range(vision.num_layers_used):
        for src, dst in names.items():
            for kind in ("weight", "bias"):
                out[f"v.blk.{i}.{dst}.{kind}"] = t[f"encoder.layers.{i}.{src}.{kind}"]
    return out


def mmproj_tensors(model: MobileVLM, ftype: str = "f16") -> dict[str, np.ndarray]:
    """llama.cpp name -> array for every tensor the mmproj holds, in the dtype written.

    Matrices (and the position table) in ``ftype``; vectors in f32; convolution kernels
    always in f16: ggml's im2col convolutions take f16 kernels, not f32.
    """
    if ftype not in MMPROJ_FTYPES:
        raise UnsupportedModelError(
            f"mmproj precisions are {', '.join(MMPROJ_FTYPES)}, not {ftype!r}"
        )
    state = {  # the vision side's: an export may have released the LLM's weights already
        k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items() if not v.is_meta
    }
    try:
        tensors = {
            **_tower_names(model.config.vision, state),
            **_projector_names(model.config.projector.type, state),
        }
    except KeyError as exc:
        raise UnsupportedModelError(f"the model has no tensor {exc.args[0]!r}") from None
    matrix = np.float16 if ftype == "f16" else np.float32
    out = {}
    for name, a in tensors.items():
        dtype = np.float16 if a.ndim == 4 else matrix if a.ndim == 2 else np.float32
        out[name] = np.ascontiguousarray(a, dtype=dtype)
    return out


def write_mmproj(model: MobileVLM, path: str | Path, ftype: str = "f16") -> dict[str, Any]:
    """Write the mmproj GGUF of ``model`` at ``path`` (atomically: a temporary sibling renamed).

    Raises :class:`UnsupportedModelError` naming ``path`` when llama.cpp's mtmd cannot run
    the model (:func:`mmproj_problems`), before anything is written. Returns the details
    recorded in the bundle manifest.
    """
    path = Path(path)
    config = model.config
    _check(config, path)
    try:
        tensors = mmproj_tensors(model, ftype)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(at(path, str(exc))) from None
    vision: ClipVisionConfig = config.vision  # type: ignore[assignment]  # _check: CLIP only
    projector = PROJECTOR_TYPES[config.projector.type]
    blocks = vision.num_layers_used

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = GGUFWriter(str(tmp), "clip")
    try:
        writer.add_name("mobilevlm-mmproj")
        writer.add_description(f"MobileVLM image encoder: CLIP ViT + {config.projector.type}")
        writer.add_file_type(LlamaFileType.MOSTLY_F16 if ftype == "f16" else LlamaFileType.ALL_F32)
        writer.add_bool("clip.has_vision_encoder", True)
        writer.add_bool("clip.has_text_encoder", False)
        writer.add_bool("clip.has_llava_projector", True)  # read by older llama.cpp builds
        writer.add_string("clip.projector_type", projector)
        writer.add_uint32("clip.vision.image_size", vision.image_size)
        writer.add_uint32("clip.vision.patch_size", vision.patch_size)
        writer.add_uint32("clip.vision.embedding_length", vision.hidden_size)
        writer.add_uint32("clip.vision.feed_forward_length", vision.intermediate_size)
        writer.add_uint32("clip.vision.projection_dim", config.projector.output_dim)
        writer.add_uint32("clip.vision.attention.head_count", vision.num_attention_heads)
        writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.layer_norm_eps)
        writer.add_uint32("clip.vision.block_count", blocks)
        writer.add_array("clip.vision.feature_layer", [blocks])  # see the module docstring
        writer.add_array("clip.vision.image_mean", [float(m) for m in config.preprocess.mean])
        writer.add_array("clip.vision.image_std", [float(s) for s in config.preprocess.std])
        flag = _FFN_FLAGS[vision.hidden_act]
        if flag:
            writer.add_bool(flag, True)
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return {
        "writer": "gguf",
        "projector_type": projector,
        "ftype": ftype,
        "block_count": blocks,
        "feature_layer": blocks,
        "image_size": vision.image_size,
        "num_image_tokens": config.num_image_tokens,
        "notes": mmproj_notes(config),
    }


def mmproj_notes(config: ModelConfig) -> list[str]:
    """How llama.cpp's image embeddings differ from the reference's for a model it can run."""
    notes = [
        "llama.cpp's llava graph appends the class token after the patches and adds position "
        "embeddings in that order, drops the first patch and passes the class token on as the "
        "last image token (docs/llama-cpp.md)",
    ]
    pre = config.preprocess
    if pre.aspect != "pad" or pre.resample != "bicubic":
        notes.append(
            f"mtmd letterboxes every image (bicubic resize of the long side, then pad); the "
            f"model's preprocessing is {pre.aspect}/{pre.resample}"
        )
    if tuple(int(m * 255) for m in pre.mean) != (122, 116, 104):
        notes.append("mtmd pads with CLIP's mean color (122, 116, 104), not the model's mean")
    if isinstance(config.vision, ClipVisionConfig) and config.vision.hidden_act == "gelu":
        notes.append("ggml's gelu is the tanh approximation of the tower's erf gelu")
    return notes
