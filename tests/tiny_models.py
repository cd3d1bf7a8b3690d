"""Tiny random MobileVLMs for the tests (not part of the installed package).

They have the real architecture (CLIP ViT, a real projector, a LLaMA LLM, a
real BPE tokenizer) at toy sizes and seeded random weights: their answers are
meaningless, their numerics and file layouts are exact. ``write_original``
writes the published MobileVLM / LLaVA layout with the original key names.

    python tests/tiny_models.py OUT_DIR [--projector ldpnetv2] [--layout own|original]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mobilevlm.config import (
    ClipVisionConfig,
    LLMConfig,
    ModelConfig,
    PreprocessConfig,
    ProjectorConfig,
)
from mobilevlm.reference.checkpoint import (
    CONFIG_FILE,
    atomic_directory,
    original_key,
    save_checkpoint,
)
from mobilevlm.reference.model import MobileVLM
from mobilevlm.reference.random_weights import random_init_, tiny_tokenizer


def tiny_config(
    projector: str = "ldpnetv2",
    template: str = "v1",
    vocab_size: int = 320,
    image_size: int = 56,
    select_feature: str = "patch",
    tie_word_embeddings: bool = False,
    cell_labels: tuple[int, ...] = (),
) -> ModelConfig:
    """A 4x4-patch CLIP (56 px, patch 14), 2-layer LLaMA with GQA; 32/64-wide."""
    vision = ClipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        select_layer=-2,
        select_feature=select_feature,
    )
    llm = LLMConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2 if template == "v1" else 4,
    )
    return ModelConfig(
        vision=vision,
        projector=ProjectorConfig(projector, 32, 64, cell_labels=cell_labels),
        llm=llm,
        preprocess=PreprocessConfig(image_size=image_size),
        template=template,
    )


def build_tiny_model(seed: int = 0, **config_kwargs) -> MobileVLM:
    config = tiny_config(**config_kwargs)
    tokenizer = tiny_tokenizer(config.llm.vocab_size, add_bos=config.template == "v1")
    model = MobileVLM(config, tokenizer)
    return random_init_(model, seed).eval()


def build_tiny_efficientnet_model(seed: int = 1) -> MobileVLM:
    """The default model's architecture at toy size: EfficientNet-Lite0 blocks at 128 px
    (a 4x4 feature grid), LDPv2 with 2x2 labelled cells, the tiny chatml LLaMA."""
    from mobilevlm.config import EfficientNetLiteConfig

    base = tiny_config(template="chatml")
    config = ModelConfig(
        vision=EfficientNetLiteConfig(image_size=128, feature="blocks"),
        projector=ProjectorConfig("ldpnetv2", 320, base.llm.hidden_size, cell_labels=(2, 1, 0, 1)),
        llm=base.llm,
        preprocess=PreprocessConfig(image_size=128, aspect="pad"),
        template="chatml",
    )
    model = random_init_(MobileVLM(config, tiny_tokenizer(base.llm.vocab_size, False)), seed)
    return model.eval()  # batch norm in inference mode, as exported


def write_original(
    model: MobileVLM, path: str | Path, weights: str = "safetensors"
) -> tuple[Path, Path]:
    """Write ``model`` as a published MobileVLM checkpoint plus a separate CLIP directory.

    Returns (checkpoint_dir, clip_dir); the checkpoint's ``mm_vision_tower`` is the
    CLIP directory's absolute path. ``weights``: ``safetensors`` or ``bin``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    cfg = model.config
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.llm.tie_word_embeddings:
        state.pop("language_model.lm_head.weight")
    renamed = {original_key(k, cfg.projector.type): v for k, v in state.items()}
    clip_state = {k: v for k, v in renamed.items() if k.startswith("vision_model.")}
    llm_state = {k: v for k, v in renamed.items() if not k.startswith("vision_model.")}

    def write_weights(directory: Path, tensors: dict[str, torch.Tensor], stem: str) -> None:
        if weights == "safetensors":
            save_file(tensors, str(directory / f"{stem}.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / "pytorch_model.bin")

    clip_dir = path.with_name(path.name + "-clip")
    with atomic_directory(clip_dir) as tmp:
        vision = cfg.vision.to_hf_dict()
        # the layout of openai/clip-vit-*: a full CLIPConfig with a vision_config inside
        clip_config = {
            "model_type": "clip",
            "vision_config": {**vision, "model_type": "clip_vision_model"},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(clip_config, indent=2))
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "crop_size": cfg.preprocess.image_size,
                    "image_mean": list(cfg.preprocess.mean),
                    "image_std": list(cfg.preprocess.std),
                    "resample": 3,
                    "size": {"shortest_edge": cfg.preprocess.image_size},
                },
                indent=2,
            )
        )
        write_weights(tmp, clip_state, "model")

    with atomic_directory(path) as tmp:
        config = {
            **cfg.llm.to_dict(),
            "architectures": ["MobileLlamaForCausalLM"],
            "model_type": "mobilevlm",
            "mm_vision_tower": str(clip_dir.resolve()),
            "vision_tower_type": "clip",
            "mm_projector_type": cfg.projector.type,
            "mm_hidden_size": cfg.projector.input_dim,
            "mm_vision_select_layer": cfg.vision.select_layer,
            "mm_vision_select_feature": cfg.vision.select_feature,
            "image_aspect_ratio": "pad" if cfg.preprocess.aspect == "pad" else "square",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        write_weights(tmp, llm_state, "model")
        (tmp / "tokenizer.json").write_text(model.tokenizer.to_str())
    return path, clip_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random MobileVLM checkpoint.")
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--projector", default="ldpnetv2", choices=["ldpnet", "ldpnetv2", "mlp2x_gelu", "linear"]
    )
    parser.add_argument("--layout", default="own", choices=["own", "original"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = build_tiny_model(seed=args.seed, projector=args.projector)
    if args.layout == "own":
        save_checkpoint(model, args.out, extra={"random_weights": True})
        print(args.out)
    else:
        print(*write_original(model, args.out))


if __name__ == "__main__":
    main()
