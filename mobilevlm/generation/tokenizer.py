"""Tokenization of prompts that hold an image placeholder (torch-free).

Wraps a Hugging Face ``tokenizers`` tokenizer.json, the one tokenizer used by
the reference, the export checks and the runtime. ``encode_prompt`` follows
LLaVA's ``tokenizer_image_token``: every text chunk around ``<image>`` is
tokenized on its own (with the tokenizer's special tokens, then its BOS
dropped), the chunks are joined by :data:`IMAGE_TOKEN_ID`, and a single BOS
leads the sequence when the tokenizer adds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from mobilevlm.errors import PromptError, TokenizerError, at
from mobilevlm.generation.prompts import IMAGE_PLACEHOLDER

IMAGE_TOKEN_ID = -200  # marks the image's position in a token sequence (LLaVA's IMAGE_TOKEN_INDEX)


def _text(text: str) -> str:
    """``text`` if it can be tokenized: a str that is valid Unicode (no lone surrogates,
    which Python strings may hold and UTF-8 cannot)."""
    if not isinstance(text, str):
        raise PromptError(f"text to tokenize must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(f"the text is not valid Unicode ({exc.reason} at {exc.start})") from None
    return text


class Tokenizer:
    def __init__(self, backend: HFTokenizer, source: str = "<memory>") -> None:
        self.backend = backend
        self.source = source
        leading = backend.encode("", add_special_tokens=True).ids
        self.bos_token_id: int | None = leading[0] if leading else None

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(at(path, "no such tokenizer file"))
        try:
            return cls(HFTokenizer.from_file(str(path)), str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(at(path, f"not a valid tokenizer.json ({exc})")) from exc

    def to_str(self) -> str:
        return self.backend.to_str()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(_text(text), add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt, with IMAGE_TOKEN_ID where ``<image>`` stood."""
        chunks = [
            self.backend.encode(c, add_special_tokens=True).ids
            for c in _text(prompt).split(IMAGE_PLACEHOLDER)
        ]
        ids: list[int] = []
        offset = 0
        if self.bos_token_id is not None and chunks[0][:1] == [self.bos_token_id]:
            offset = 1
            ids.append(self.bos_token_id)
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_TOKEN_ID)
            ids.extend(chunk[offset:])
        return ids
