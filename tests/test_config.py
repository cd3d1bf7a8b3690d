"""Model configs: the published geometries, JSON round trips and clear refusals."""

from __future__ import annotations

import pytest

from mobilevlm.config import ClipVisionConfig, LLMConfig, ModelConfig, ProjectorConfig
from mobilevlm.errors import UnsupportedModelError

MOBILEVLM_V2_1_7B = {  # config.json of MobileVLM_V2-1.7B, abridged
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "model_type": "mobilevlm",
    "mm_hidden_size": 1024,
    "mm_projector_type": "ldpnetv2",
    "mm_vision_select_layer": -2,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
CLIP_L_336 = {
    "model_type": "clip",
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
    },
}


def published_config(projector: str) -> ModelConfig:
    return ModelConfig(
        vision=ClipVisionConfig.from_hf_dict(CLIP_L_336, select_layer=-2, select_feature="patch"),
        projector=ProjectorConfig(projector, 1024, 2048),
        llm=LLMConfig.from_dict(MOBILEVLM_V2_1_7B),
    )


@pytest.mark.parametrize(
    "projector,tokens", [("ldpnet", 144), ("ldpnetv2", 144), ("mlp2x_gelu", 576)]
)
def test_published_geometry_gives_the_papers_token_counts(projector, tokens):
    config = published_config(projector)
    assert config.vision.grid_size == 24 and config.vision.num_layers_used == 23
    assert config.num_image_tokens == tokens


def test_kv_cache_cost_of_mobilellama_1_4b():
    llm = LLMConfig.from_dict(MOBILEVLM_V2_1_7B)
    assert llm.head_dim == 128
    assert llm.kv_cache_bytes_per_token(2) == 2 * 16 * 128 * 2 * 24  # 196,608 bytes in fp16


def test_dict_round_trip_ignores_unknown_keys():
    config = published_config("ldpnetv2")
    data = config.to_dict()
    data["llm"]["some_future_key"] = 1
    assert ModelConfig.from_dict(data) == config


def test_mismatched_widths_and_grids_are_refused():
    vision = ClipVisionConfig(image_size=350, patch_size=14)  # 25x25 grid
    llm = LLMConfig.from_dict(MOBILEVLM_V2_1_7B)
    with pytest.raises(UnsupportedModelError, match="even grid"):
        ModelConfig(vision=vision, projector=ProjectorConfig("ldpnetv2", 1024, 2048), llm=llm)
    with pytest.raises(UnsupportedModelError, match="does not match the LLM hidden size"):
        ModelConfig(
            vision=ClipVisionConfig(), projector=ProjectorConfig("ldpnet", 1024, 999), llm=llm
        )
    labelled = ProjectorConfig("ldpnetv2", 1024, 2048, cell_labels=[2, 1, 2, 1, 1, 1, 2, 1, 2])
    assert labelled.cell_labels == (2, 1, 2, 1, 1, 1, 2, 1, 2)  # from JSON's list
    assert labelled.output_tokens(24 * 24) == 144 + 13
    with pytest.raises(UnsupportedModelError, match="12x12 output grid does not split into 5x5"):
        ModelConfig(
            vision=ClipVisionConfig(),
            projector=ProjectorConfig("ldpnetv2", 1024, 2048, cell_labels=(1,) * 25),
            llm=llm,
        )
    with pytest.raises(UnsupportedModelError, match="k x k cells, got \\[1, 1\\]"):
        ProjectorConfig("ldpnetv2", 1024, 2048, cell_labels=(1, 1))
    with pytest.raises(UnsupportedModelError, match="cell_labels need ldpnetv2, not 'ldpnet'"):
        ProjectorConfig("ldpnet", 1024, 2048, cell_labels=(1,))
    with pytest.raises(UnsupportedModelError, match="vision tower type 'siglip'"):
        ModelConfig.from_dict({"vision": {"type": "siglip"}, "projector": {}, "llm": {}})
