"""The mmproj GGUF: llama.cpp's mtmd loads it and computes what its llava graph promises.

Tiny CLIP towers at 336 px (patch 14: the 24x24 grid llama.cpp hard-codes for
LDP / LDPv2), fed a 336x336 image so that mtmd does no resampling. llama.cpp
must agree with the torch emulation of its own graph (that proves the tensors,
names and block count) and differs from the true reference (that documents
llama.cpp's deviation; see docs/llama-cpp.md). The towers get larger random
weights than ``build_tiny_model``'s so that one block more or less is visible.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mobilevlm.config import EfficientNetLiteConfig, ModelConfig, ProjectorConfig
from mobilevlm.errors import BundleError, ImageError, UnsupportedModelError

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

PROJECTORS = {"ldpnet": "ldp", "ldpnetv2": "ldpv2", "mlp2x_gelu": "mlp"}
SIZE = 336


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-token cosine similarity of two (tokens, width) arrays."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


def clip_model(torch_threads, projector: str, **vision_changes):
    """A tiny MobileVLM at 336 px whose tower weights are big enough to matter."""
    from tiny_models import build_tiny_model, random_init_

    from mobilevlm.reference.model import MobileVLM

    model = build_tiny_model(seed=0, projector=projector, image_size=SIZE)
    if vision_changes:
        config = dataclasses.replace(
            model.config, vision=dataclasses.replace(model.config.vision, **vision_changes)
        )
        model = random_init_(MobileVLM(config, model.tokenizer), 0).eval()
    random_init_(model.vision_tower, seed=1, std=0.2)
    return model


def llama_cpp_encode(model, directory, image, ftype: str = "f16") -> tuple[np.ndarray, dict]:
    """Export the mmproj and the LLM GGUF, run mtmd on ``image``; (embeddings, details)."""
    from mobilevlm.export.gguf_llm import write_llm_gguf
    from mobilevlm.export.gguf_mmproj import write_mmproj
    from mobilevlm.runtime.llamacpp.model import open_llama
    from mobilevlm.runtime.llamacpp.mtmd_vision import MtmdVisionEncoder

    state = {k: v.float().numpy() for k, v in model.language_model.state_dict().items()}
    write_llm_gguf(model.config, state, model.tokenizer, directory / "llm.gguf")
    details = write_mmproj(model, directory / "mmproj.gguf", ftype)
    llama = open_llama(directory / "llm.gguf", context=64, threads=2)
    try:
        with MtmdVisionEncoder(directory / "mmproj.gguf", llama, threads=2) as encoder:
            return encoder.encode(image), details
    finally:
        llama.close()


@dataclasses.dataclass
class Export:
    projector: str
    model: object
    directory: Path  # llm.gguf and mmproj.gguf
    embeds: np.ndarray  # llama.cpp's image embeddings of the module's image
    details: dict
    pixels: object  # the reference's pixel values of that image


@pytest.fixture(scope="module")
def export_of(torch_threads, tmp_path_factory, image):
    """projector -> its :class:`Export`, made once per module."""
    done: dict[str, Export] = {}

    def get(projector: str) -> Export:
        if projector not in done:
            model = clip_model(torch_threads, projector)
            directory = tmp_path_factory.mktemp(projector)
            embeds, details = llama_cpp_encode(model, directory, image)
            pixels = model.pixel_values(image)
            done[projector] = Export(projector, model, directory, embeds, details, pixels)
        return done[projector]

    return get


@pytest.fixture(params=list(PROJECTORS))
def exported(request, export_of) -> Export:
    return export_of(request.param)


def test_llama_cpp_matches_the_emulation_of_its_llava_graph(exported):
    from mobilevlm.export.mtmd_emulation import llama_cpp_image_embeddings

    emulated = llama_cpp_image_embeddings(exported.model, exported.pixels)[0].numpy()
    assert exported.embeds.shape == emulated.shape == (exported.model.config.num_image_tokens, 64)
    assert exported.details["projector_type"] == PROJECTORS[exported.projector]
    similarity = cosines(exported.embeds, emulated)
    print(f"{exported.projector}: llama.cpp vs emulation, min cosine {similarity.min():.6f}")
    assert similarity.min() >= 0.999


def test_llama_cpp_deviates_from_the_reference(exported):
    import torch

    with torch.inference_mode():
        reference = exported.model.encode_images(exported.pixels)[0].numpy()
    similarity = cosines(exported.embeds, reference)
    print(
        f"{exported.projector}: llama.cpp vs reference, mean cosine {similarity.mean():.4f} "
        f"(min {similarity.min():.4f})"
    )
    assert similarity.mean() < 0.99  # the class token and the shifted positions show


def test_llama_cpp_runs_exactly_the_blocks_the_reference_uses(export_of):
    from mobilevlm.export.mtmd_emulation import llama_cpp_image_embeddings

    exported = export_of("mlp2x_gelu")  # the block count does not depend on the projector
    used = exported.model.config.vision.num_layers_used
    assert exported.details["block_count"] == exported.details["feature_layer"] == used
    one_fewer = llama_cpp_image_embeddings(exported.model, exported.pixels, blocks=used - 1)
    assert cosines(exported.embeds, one_fewer[0].numpy()).mean() < 0.95


def test_mmproj_holds_the_used_blocks_and_the_metadata_clip_cpp_reads(exported):
    path = exported.directory / "mmproj.gguf"
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    fields = {name: field.contents() for name, field in reader.fields.items()}
    vision = exported.model.config.vision
    used = vision.num_layers_used
    assert used < vision.num_hidden_layers
    blocks = {int(n.split(".")[2]) for n in names if n.startswith("v.blk.")}
    assert blocks == set(range(used))
    assert not any(n.startswith("v.post_ln") for n in names)
    assert fields["clip.projector_type"] == PROJECTORS[exported.projector]
    assert fields["clip.vision.block_count"] == used
    assert fields["clip.vision.feature_layer"] == [used]
    assert fields["clip.vision.image_size"] == SIZE
    assert sorted(p.name for p in exported.directory.iterdir()) == ["llm.gguf", "mmproj.gguf"]


def test_a_tower_whose_ffn_is_as_wide_as_its_hidden_size_still_matches(
    torch_threads, tmp_path, image
):
    """clip.cpp swaps ffn_up/ffn_down when the shapes look like legacy names; n_ff == n_embd
    looks like that, so the writer uses the legacy names for it."""
    from mobilevlm.export.mtmd_emulation import llama_cpp_image_embeddings

    model = clip_model(torch_threads, "mlp2x_gelu", intermediate_size=32)
    embeds, _ = llama_cpp_encode(model, tmp_path, image)
    emulated = llama_cpp_image_embeddings(model, model.pixel_values(image))[0].numpy()
    assert cosines(embeds, emulated).min() >= 0.999


def test_an_f32_mmproj_matches_too(torch_threads, tmp_path, image):
    """f32 matrices; the convolution kernels stay f16, as ggml's im2col needs."""
    from mobilevlm.export.mtmd_emulation import llama_cpp_image_embeddings

    model = clip_model(torch_threads, "ldpnet")
    embeds, details = llama_cpp_encode(model, tmp_path, image, ftype="f32")
    emulated = llama_cpp_image_embeddings(model, model.pixel_values(image))[0].numpy()
    assert details["ftype"] == "f32"
    assert cosines(embeds, emulated).min() >= 0.999


def test_the_encoder_takes_what_preprocess_takes(export_of, tmp_path, image):
    from PIL import Image

    from mobilevlm.runtime.llamacpp.model import open_llama
    from mobilevlm.runtime.llamacpp.mtmd_vision import MtmdVisionEncoder

    exported = export_of("ldpnetv2")
    Image.fromarray(image).save(tmp_path / "image.png")
    llama = open_llama(exported.directory / "llm.gguf", context=64, threads=2)
    try:
        with MtmdVisionEncoder(exported.directory / "mmproj.gguf", llama, 2) as encoder:
            from_path = encoder.encode(tmp_path / "image.png")
            from_pil = encoder.encode(Image.fromarray(image))
            with pytest.raises(ImageError, match="missing.png"):
                encoder.encode(tmp_path / "missing.png")
    finally:
        llama.close()
    np.testing.assert_array_equal(from_path, exported.embeds)
    np.testing.assert_array_equal(from_pil, exported.embeds)


def test_a_file_mtmd_cannot_load_is_a_bundle_error_naming_it(export_of, tmp_path):
    from mobilevlm.runtime.llamacpp.model import open_llama
    from mobilevlm.runtime.llamacpp.mtmd_vision import MtmdVisionEncoder

    llm = export_of("mlp2x_gelu").directory / "llm.gguf"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really" * 8)
    llama = open_llama(llm, context=64, threads=2)
    try:
        for path in (broken, llm, tmp_path / "absent.gguf"):
            with pytest.raises(BundleError, match=path.name):
                MtmdVisionEncoder(path, llama, threads=2)
    finally:
        llama.close()


def _efficientnet_config() -> ModelConfig:
    from tiny_models import tiny_config

    base = tiny_config()
    return ModelConfig(
        vision=EfficientNetLiteConfig(image_size=128),
        projector=ProjectorConfig(type="ldpnetv2", input_dim=1280, output_dim=64),
        llm=base.llm,
    )


@pytest.mark.parametrize(
    ("tiny", "message"),
    [
        (None, "'efficientnet_lite' is not a CLIP ViT"),
        ({"projector": "linear", "image_size": SIZE}, "projector 'linear' has no llama.cpp"),
        ({"projector": "ldpnetv2"}, "hard-codes a 24x24 patch grid.*this model has 4x4"),
        ({"projector": "ldpnet"}, "hard-codes a 24x24 patch grid.*this model has 4x4"),
        (
            {"projector": "mlp2x_gelu", "image_size": SIZE, "select_feature": "cls_patch"},
            "select_feature 'cls_patch'",
        ),
        (
            {"projector": "ldpnetv2", "image_size": SIZE, "cell_labels": (1, 0, 0, 2)},
            "writes no cell label tokens",
        ),
    ],
    ids=["efficientnet", "linear", "ldpnetv2-56px", "ldpnet-56px", "mlp-cls_patch", "ldpv2-labels"],
)
def test_models_mtmd_cannot_run_are_refused_with_the_reason(tiny, message, torch_threads, tmp_path):
    from tiny_models import build_tiny_model

    from mobilevlm.export.gguf_mmproj import mmproj_problems, write_mmproj
    from mobilevlm.reference.model import MobileVLM

    model = MobileVLM(_efficientnet_config()) if tiny is None else build_tiny_model(**tiny)
    assert len(mmproj_problems(model.config)) == 1
    with pytest.raises(UnsupportedModelError, match=f"mmproj.gguf: .*{message}"):
        write_mmproj(model, tmp_path / "mmproj.gguf")
    assert list(tmp_path.iterdir()) == []


def test_mlp_runs_any_grid_in_llama_cpp():
    from tiny_models import tiny_config

    from mobilevlm.export.gguf_mmproj import mmproj_problems

    assert mmproj_problems(tiny_config(projector="mlp2x_gelu", image_size=56)) == []
    assert mmproj_problems(tiny_config(projector="ldpnetv2", image_size=SIZE)) == []
