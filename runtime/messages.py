"""OpenAI-style chat messages -> (image, turns, system) for the project's templates.

Accepted, as in the OpenAI chat format: ``{"role": "system" | "user" | "assistant",
"content": str | [parts]}`` where a part is ``{"type": "text", "text": ...}`` or an
image: ``{"type": "image_url", "image_url": {"url": PATH | "data:image/...;base64,..."}}``
(a string ``image_url`` too) or ``{"type": "image", "image": PATH | bytes | PIL image |
numpy array}``. MobileVLM models take one image, placed in the first user turn by the
template, so a conversation may carry at most one image (in any user message).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mobilevlm.errors import PromptError
from mobilevlm.generation.preprocess import ImageInput
from mobilevlm.generation.prompts import Turn

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ParsedChat:
    image: ImageInput | None
    turns: list[Turn]  # past turns with answers, the last one awaiting an answer
    system: str | None


def _image_of(part: dict[str, Any]) -> ImageInput:
    if part.get("type") == "image":
        if part.get("image") is None:
            raise PromptError("an image part needs an image (a path, bytes or pixels)")
        return part["image"]
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise PromptError("an image_url part needs a url (a local path or a data: URL)")
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=True)
        except (IndexError, ValueError) as exc:
            raise PromptError("an image_url data: URL is not valid base64") from exc
    if url.startswith(("http://", "https://")):
        raise PromptError(f"image URLs are not fetched (nothing is downloaded): {url}")
    return url.removeprefix("file://")


def _text_and_images(content: Any, role: str) -> tuple[str, list[ImageInput]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        raise PromptError(f"a {role} message's content must be a string or a list of parts")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text", "")
            if not isinstance(text, str):
                raise PromptError(f"a text part's text must be a string, not {type(text).__name__}")
            texts.append(text)
        elif kind in ("image_url", "image"):
            if role != "user":
                raise PromptError(f"only user messages may carry an image, not {role} ones")
            images.append(_image_of(part))
        else:
            raise PromptError(f"unknown message part {kind!r} (expected text or image_url)")
    return "\n".join(texts), images


def parse_messages(messages: Sequence[dict[str, Any]]) -> ParsedChat:
    """Check and convert a chat; :class:`PromptError` names what is wrong."""
    if not isinstance(messages, (list, tuple)):
        raise PromptError(
            f"messages must be a list of message objects, not {type(messages).__name__}"
        )
    system = None
    images: list[ImageInput] = []
    users: list[str] = []
    answers: list[str | None] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise PromptError(f"message {i} must be an object with a role and a content")
        role = message.get("role")
        if role not in ROLES:
            raise PromptError(f"message {i}: unknown role {role!r} (expected {', '.join(ROLES)})")
        text, found = _text_and_images(message.get("content", ""), str(role))
        images += found
        if role == "system":
            if i:
                raise PromptError("a system message may only come first")
            system = text
        elif role == "user":
            if len(users) > len(answers):
                raise PromptError("two user messages in a row: answer the first, or join them")
            users.append(text)
        else:  # assistant
            if len(users) != len(answers) + 1:
                raise PromptError("an assistant message must follow a user message")
            answers.append(text)
    if not users or len(answers) == len(users):
        raise PromptError("the chat must end with a user message")
    if len(images) > 1:
        raise PromptError(f"the model takes one image per conversation, got {len(images)}")
    turns = [Turn(u, a) for u, a in zip(users, answers + [None], strict=True)]
    return ParsedChat(images[0] if images else None, turns, system)
