"""Prompt templates: conversation turns -> the exact text the LLM was trained on.

Torch-free and shared by every path. A template places the image placeholder
in the first user turn and knows the strings that end an answer. The
placeholder is later replaced by the image embeddings (see
:mod:`mobilevlm.generation.tokenizer`), never tokenized as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mobilevlm.errors import PromptError

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's text and, for past turns, the assistant's answer."""

    user: str
    assistant: str | None = None


@dataclass(frozen=True)
class PromptTemplate:
    """A chat format. ``render`` returns the text up to where the assistant speaks next."""

    name: str
    default_system: str
    stop_strings: tuple[str, ...]

    def render(
        self, turns: Sequence[Turn], *, system: str | None = None, with_image: bool = True
    ) -> str:
        if not turns or turns[-1].assistant is not None:
            raise PromptError("the last turn must be a user message awaiting an answer")
        for turn in turns:
            if IMAGE_PLACEHOLDER in turn.user:
                raise PromptError(
                    f"the prompt must not contain {IMAGE_PLACEHOLDER!r}: "
                    "the template places the image"
                )
        system = self.default_system if system is None else system
        users = [t.user for t in turns]
        if with_image:
            users[0] = f"{IMAGE_PLACEHOLDER}\n{users[0]}"
        return self._format(system, users, [t.assistant for t in turns])

    def _format(self, system: str, users: list[str], answers: list[str | None]) -> str:
        raise NotImplementedError


class VicunaV1Template(PromptTemplate):
    """MobileVLM's ``v1``: ``{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: ...``."""

    def _format(self, system, users, answers):
        text = system + " "
        for user, answer in zip(users, answers, strict=True):
            text += f"USER: {user} "
            text += "ASSISTANT:" if answer is None else f"ASSISTANT: {answer}</s>"
        return text


class ChatMLTemplate(PromptTemplate):
    """ChatML as used by SmolLM2: ``<|im_start|>role\\ncontent<|im_end|>\\n``."""

    def _format(self, system, users, answers):
        text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        for user, answer in zip(users, answers, strict=True):
            text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            if answer is not None:
                text += f"{answer}<|im_end|>\n"
        return text


TEMPLATES: dict[str, PromptTemplate] = {
    "v1": VicunaV1Template(
        name="v1",
        default_system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        stop_strings=("</s>",),
    ),
    "chatml": ChatMLTemplate(
        name="chatml",
        default_system="You are a helpful assistant.",
        stop_strings=("<|im_end|>",),
    ),
}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise PromptError(
            f"unknown prompt template {name!r} (expected one of {', '.join(TEMPLATES)})"
        ) from None
