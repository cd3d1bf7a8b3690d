"""Splice: the image embeddings put where the prompt's image placeholder is.

The LLM input of a prompt with an image is its token embeddings with the
placeholder's one row replaced by the image's rows; every backend that takes
input embeddings builds it here, so the image lands at the same positions on all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mobilevlm.errors import PromptError
from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID


def image_slot(input_ids: Sequence[int], image_embeds: np.ndarray | None) -> int | None:
    """Index of the one image placeholder in ``input_ids`` (None when there is no image)."""
    slots = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_ID]
    if image_embeds is None:
        if slots:
            raise PromptError("the prompt has an image placeholder but no image was given")
        return None
    if len(slots) != 1:
        raise PromptError(f"expected exactly one image placeholder, found {len(slots)}")
    return slots[0]


def splice(
    input_ids: Sequence[int],
    image_embeds: np.ndarray | None,
    embed_tokens: Callable[[Sequence[int]], np.ndarray],
) -> np.ndarray:
    """(L, hidden) LLM input: token embeddings with ``image_embeds`` where IMAGE_TOKEN_ID is."""
    ids = list(input_ids)
    at = image_slot(ids, image_embeds)
    if at is None:
        return embed_tokens(ids)
    parts = [embed_tokens(ids[:at]), image_embeds.astype(np.float32), embed_tokens(ids[at + 1 :])]
    return np.concatenate(parts, axis=0)
