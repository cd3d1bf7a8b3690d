"""Prompt templates render exactly the text the models were trained on."""

from __future__ import annotations

import pytest

from mobilevlm.errors import PromptError
from mobilevlm.generation.prompts import Turn, get_template

V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# SmolLM2-Instruct's chat template (tokenizer.chat_template in its GGUF)
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_v1_single_turn_is_mobilevlm_conversation_format():
    text = get_template("v1").render([Turn("What is in the image?")])
    assert text == f"{V1_SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"


def test_v1_multi_turn_ends_answers_with_eos_text():
    text = get_template("v1").render([Turn("Q1", "A1"), Turn("Q2")])
    assert text == f"{V1_SYSTEM} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"


def test_v1_text_only_has_no_placeholder():
    assert "<image>" not in get_template("v1").render([Turn("hi")], with_image=False)


def test_chatml_matches_smollm2_jinja_template():
    import jinja2

    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "<image>\nWhat color is the star?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the circle?"},
    ]
    expected = jinja2.Template(SMOLLM2_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=True
    )
    ours = get_template("chatml").render(
        [Turn("What color is the star?", "red"), Turn("And the circle?")], system="Answer briefly."
    )
    assert ours == expected


def test_templates_know_their_stop_strings():
    assert get_template("v1").stop_strings == ("</s>",)
    assert get_template("chatml").stop_strings == ("<|im_end|>",)


def test_user_text_may_not_carry_the_placeholder_and_unknown_templates_fail():
    with pytest.raises(PromptError, match="must not contain"):
        get_template("v1").render([Turn("look: <image>")])
    with pytest.raises(PromptError, match="unknown prompt template 'alpaca'"):
        get_template("alpaca")
    with pytest.raises(PromptError, match="last turn"):
        get_template("v1").render([Turn("q", "a")])
