"""Prompt tokenization places the image exactly as LLaVA's tokenizer_image_token does."""

from __future__ import annotations

import pytest
from tiny_models import tiny_tokenizer

from mobilevlm.errors import TokenizerError
from mobilevlm.generation.prompts import Turn, get_template
from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID, Tokenizer


def llava_tokenizer_image_token(prompt, hf_tokenizer):
    """MobileVLM's utils.tokenizer_image_token, restated over a transformers tokenizer."""
    chunks = [hf_tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == hf_tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [x for chunk in chunks for x in (chunk, [IMAGE_TOKEN_ID] * (offset + 1))][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


@pytest.mark.parametrize("template,add_bos", [("v1", True), ("chatml", False)])
def test_encode_prompt_matches_llava(template, add_bos):
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer(add_bos=add_bos)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token="<s>", eos_token="</s>")
    prompt = get_template(template).render([Turn("What color is the circle?")])
    ids = tok.encode_prompt(prompt)
    assert ids == llava_tokenizer_image_token(prompt, hf)
    assert ids.count(IMAGE_TOKEN_ID) == 1
    assert (ids[0] == 1) == add_bos and ids.count(1) == (1 if add_bos else 0)


def test_special_tokens_in_text_map_to_their_ids():
    tok = tiny_tokenizer(add_bos=False)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.token_to_id("<|im_end|>")
    assert tok.decode(tok.encode("red circle")) == "red circle"


def test_text_only_prompt_has_no_image_slot():
    tok = tiny_tokenizer()
    text = get_template("v1").render([Turn("hi")], with_image=False)
    assert IMAGE_TOKEN_ID not in tok.encode_prompt(text)


def test_tokenizer_file_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="nope.json: no such tokenizer file"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_file(bad)
