"""What llama.cpp's mtmd computes from the project's mmproj, written in torch on the reference.

llama.cpp runs MobileVLM's vision side with ``clip_graph_llava::build``
(``tools/mtmd/models/llava.cpp``, llama-cpp-python 0.3.36's vendored copy),
which differs from CLIP as transformers and the original MobileVLM run it:

1. ``ggml_concat(inp, class_embedding)`` puts the class token *after* the
   patch tokens; the position embeddings ``0..n`` are then added in that
   order (``clip.cpp``, ``clip_encode``: ``positions[i] = i``), so
   patch ``i`` gets the embedding of position ``i`` (its left neighbour's in
   CLIP's layout, where position 0 is the class token's) and the class token
   gets position ``n``;
2. after the blocks, ``ggml_get_rows(embeddings, patches)`` with
   ``patches[i] = i + 1`` keeps rows ``1..n``: the first patch is dropped and
   the class token is handed to the projector as the last patch;
3. GELUs in the projector are ggml's tanh approximation.

The number of blocks is what the mmproj asks for; :func:`write_mmproj
<mobilevlm.export.gguf_mmproj.write_mmproj>` makes it the reference's
``num_layers_used``. This module exists so tests and docs can prove that the
mmproj's tensors are right (llama.cpp matches this emulation) and measure
how far llama.cpp is from the true reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mobilevlm.config import ClipVisionConfig
from mobilevlm.errors import UnsupportedModelError
from mobilevlm.reference.model import MobileVLM


@contextmanager
def _tanh_gelus(*modules: nn.Module) -> Iterator[None]:
    """Temporarily switch every ``nn.GELU`` in ``modules`` to the tanh approximation."""
    gelus = [m for module in modules for m in module.modules() if isinstance(m, nn.GELU)]
    saved = [g.approximate for g in gelus]
    for g in gelus:
        g.approximate = "tanh"
    try:
        yield
    finally:
        for g, approximate in zip(gelus, saved, strict=True):
            g.approximate = approximate


@contextmanager
def _ggml_tower_activation(layers: nn.ModuleList, hidden_act: str) -> Iterator[None]:
    """For ``gelu`` towers, llama.cpp's FFN uses ggml_gelu (tanh approximation) too."""
    if hidden_act != "gelu":
        yield
        return
    saved = [layer.mlp.activation_fn for layer in layers]
    for layer in layers:
        layer.mlp.activation_fn = nn.GELU(approximate="tanh")
    try:
        yield
    finally:
        for layer, fn in zip(layers, saved, strict=True):
            layer.mlp.activation_fn = fn


@torch.inference_mode()
def llama_cpp_image_embeddings(
    model: MobileVLM, pixel_values: torch.Tensor, blocks: int | None = None
) -> torch.Tensor:
    """(B, 3, S, S) pixel values -> (B, tokens, llm_hidden), as llama.cpp's llava graph
    computes them; ``blocks``: vision blocks run (default: the reference's
    ``num_layers_used``, which the project's mmproj asks for; the legacy converter's files
    run one fewer). ``tokens`` equals the reference's image token count."""
    vision = model.config.vision
    if not isinstance(vision, ClipVisionConfig):
        raise UnsupportedModelError(f"llama.cpp runs CLIP towers only, not {vision.type!r}")
    blocks = vision.num_layers_used if blocks is None else blocks
    vm = model.vision_tower.vision_model
    emb = vm.embeddings
    x = pixel_values.to(emb.patch_embedding.weight.dtype)
    patches = emb.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, n, C), row-major grid
    n = patches.shape[1]
    cls = emb.class_embedding.expand(patches.shape[0], 1, -1)
    tokens = torch.cat([patches, cls], dim=1)  # class token last
    hidden = vm.pre_layrnorm(tokens + emb.position_embedding.weight[: n + 1])
    layers = vm.encoder.layers[:blocks]
    with _ggml_tower_activation(layers, vision.hidden_act), _tanh_gelus(model.projector):
        for layer in layers:
            hidden = layer(hidden, None, None)[0]
        features = hidden[:, 1:]  # rows 1..n: patches 1..n-1, then the class token
        return model.projector(features)
