"""The multimodal model: splicing, teacher-forced logits and generation against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilevlm.errors import ContextOverflowError, PromptError
from mobilevlm.generation.sampling import GenerationConfig
from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID


@pytest.fixture
def model(tiny_models):
    return tiny_models(projector="ldpnetv2")


def test_image_embeddings_replace_the_placeholder(model, rgb_image):
    ids = model.prompt_ids("What color is the circle?")
    at = ids.index(IMAGE_TOKEN_ID)
    with torch.no_grad():
        image = model.encode_images(model.pixel_values(rgb_image))[0]
        embeds = model.embed(ids, image)[0]
        table = model.language_model.get_input_embeddings().weight
    n = model.config.num_image_tokens
    assert image.shape == (n, model.config.llm.hidden_size)
    assert embeds.shape[0] == len(ids) - 1 + n
    torch.testing.assert_close(embeds[at : at + n], image)
    torch.testing.assert_close(embeds[:at], table[ids[:at]])
    torch.testing.assert_close(embeds[at + n :], table[ids[at + 1 :]])


def test_placeholder_and_image_must_come_together(model, rgb_image):
    ids = model.prompt_ids("hi")
    with pytest.raises(PromptError, match="no image"):
        model.embed(ids, None)
    image = torch.zeros(model.config.num_image_tokens, model.config.llm.hidden_size)
    with pytest.raises(PromptError, match="exactly one"):
        model.embed([t for t in ids if t != IMAGE_TOKEN_ID], image)


@pytest.mark.parametrize("projector", ["ldpnet", "ldpnetv2", "mlp2x_gelu", "linear"])
def test_greedy_generation_equals_transformers_generate(tiny_models, rgb_image, projector):
    model = tiny_models(projector=projector)
    ids = model.prompt_ids("What shape is the red object?")
    with torch.no_grad():
        embeds = model.embed(ids, model.encode_images(model.pixel_values(rgb_image))[0])
        expected = model.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )[0].tolist()
    result = model.generate(
        rgb_image, "What shape is the red object?", GenerationConfig(max_new_tokens=32)
    )
    assert len(result.token_ids) >= 8, "too short to compare; pick another prompt"
    assert result.token_ids == expected


def test_teacher_forced_logits_equal_the_llm_on_spliced_embeddings(model, rgb_image):
    ids = model.prompt_ids("How many shapes are there?")
    pixels = model.pixel_values(rgb_image)
    with torch.no_grad():
        logits = model(ids, pixels)
        image = model.encode_images(pixels)[0]
        direct = model.language_model(inputs_embeds=model.embed(ids, image)).logits
    assert logits.shape == (
        1,
        len(ids) - 1 + model.config.num_image_tokens,
        model.config.llm.vocab_size,
    )
    torch.testing.assert_close(logits, direct)


def test_streamed_pieces_add_up_to_the_answer(model, rgb_image):
    pieces: list[str] = []
    result = model.generate(
        rgb_image,
        "What color is the star?",
        GenerationConfig(max_new_tokens=20, temperature=0.8, seed=5),
        on_text=pieces.append,
    )
    assert "".join(pieces) == result.text
    stats = result.stats
    assert stats.image_tokens == model.config.num_image_tokens
    assert stats.prefill_tokens == stats.image_tokens + stats.prompt_tokens
    assert stats.generated_tokens == len(result.token_ids) > 0
    assert stats.total_ms >= stats.image_encode_ms + stats.prefill_ms > 0


def test_sampling_is_reproducible_by_seed(model, rgb_image):
    def run(seed):
        config = GenerationConfig(max_new_tokens=24, temperature=1.2, top_p=0.95, seed=seed)
        return model.generate(rgb_image, "Where is the blue square?", config).token_ids

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_stop_string_ends_the_answer_before_it(model, rgb_image):
    greedy = model.generate(
        rgb_image, "Is there a green star?", GenerationConfig(max_new_tokens=12)
    )
    stop = model.tokenizer.decode(greedy.token_ids[3:5]).strip()
    assert stop, "the tiny model must produce some text to stop on"
    result = model.generate(
        rgb_image,
        "Is there a green star?",
        GenerationConfig(max_new_tokens=12, stop_strings=(stop,)),
    )
    assert result.stats.stop_reason == "stop_string"
    assert stop not in result.text and greedy.text.startswith(result.text)


def test_max_new_tokens_and_text_only_prompts(model):
    result = model.generate(
        None, "What is the capital of France?", GenerationConfig(max_new_tokens=3)
    )
    assert result.stats.image_tokens == 0 and len(result.token_ids) <= 3


def test_prompt_longer_than_the_context_is_refused(model):
    with pytest.raises(ContextOverflowError, match="the context holds 256"):
        model.generate(np.zeros((32, 32, 3), np.uint8), "red " * 300, GenerationConfig())
