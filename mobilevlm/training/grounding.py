"""Grounding: what each image token should say (the LLM's words for the object in its
patch, the cells' names as labels), the loss that pulls the projector's output there and
how often it gets there."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mobilevlm import shapes_vqa
from mobilevlm.reference.projectors import labelled_order
from mobilevlm.training.data import image_embeddings


def _words(model, text: str) -> torch.Tensor:
    """The sum of the LLM's input embeddings of the words in ``text`` (each word the mean of
    its sub-tokens: " hexagon" is two)."""
    table = model.language_model.get_input_embeddings().weight
    return sum(table[model.tokenizer.encode(" " + w)].mean(dim=0) for w in text.split())


def cell_label_words(model) -> torch.Tensor:
    """(labels, hidden): the LLM's input embeddings of the words naming each of the spec's
    3x3 cells, in the projector's label order (" top", " left", " top", ...). The projector's
    labels are these, frozen, so the image reads like "top left <tokens> top <tokens> ..."."""
    table = model.language_model.get_input_embeddings().weight
    ids = [model.tokenizer.encode(" " + name) for name in shapes_vqa.POSITION_NAMES]
    if tuple(len(i) for i in ids) != model.config.projector.cell_labels:
        raise RuntimeError(
            f"cell_labels {model.config.projector.cell_labels} do not match the tokenizer's "
            f"words for the cells {[len(i) for i in ids]}"
        )
    return table[[t for i in ids for t in i]].detach().clone()


GROUNDING_WORDS = (
    "background",
    *(f"{c} {s}" for c in shapes_vqa.COLORS for s in shapes_vqa.SHAPES),
)


def grounding_words(model) -> torch.Tensor:
    """(41, hidden): what a grid token may say, in GROUNDING_WORDS order."""
    return torch.stack([_words(model, text) for text in GROUNDING_WORDS]).detach()


def grid_targets(
    scene: shapes_vqa.Scene, grid: int, words: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each grid token should say (the cell labels say where): (grid*grid, hidden)
    embeddings of the words " {color}" + " {shape}" for the object whose centre lies in the
    token's patch (summed when two do), the word " background" elsewhere, and (grid*grid,)
    their index in GROUNDING_WORDS (-100 where two objects share a patch). Written in the
    LLM's own input embeddings, the image tokens start out as text the frozen LLM already
    reads. ``words``: :func:`grounding_words`, computed once per split by the caller."""
    cells: dict[int, list[int]] = {}
    for o in scene.objects:
        cell = min(int(o.cy * grid), grid - 1) * grid + min(int(o.cx * grid), grid - 1)
        cells.setdefault(cell, []).append(GROUNDING_WORDS.index(f"{o.color} {o.shape}"))
    indices = [cells.get(c, [0]) for c in range(grid * grid)]
    targets = torch.stack([words[i].sum(dim=0) for i in indices])
    classes = torch.tensor([i[0] if len(i) == 1 else -100 for i in indices])
    return targets, classes


def _grid(model) -> int:
    return math.isqrt(model.config.num_image_tokens - sum(model.config.projector.cell_labels))


def grid_part(model, images: torch.Tensor) -> torch.Tensor:
    """The grid tokens (B, grid*grid, hidden), row-major, of the projector's output."""
    cells = model.config.projector.cell_labels
    if not cells:
        return images
    grid = _grid(model)
    order = labelled_order(grid, cells)
    return images[:, [order.index(k) for k in range(grid * grid)]]


@dataclass
class Grounding:
    """Word targets of a split's first scenes: (scenes, grid tokens, hidden) float16 and
    (scenes, grid tokens) classes, plus the words a token chooses among."""

    targets: torch.Tensor
    classes: torch.Tensor
    words: torch.Tensor
    tau: float

    def loss(self, images: torch.Tensor, idx) -> torch.Tensor:
        return grounding_loss(images, self.targets[idx], self.classes[idx], self.words, self.tau)


def scene_targets(model, split: str, count: int, tau: float) -> Grounding:
    grid, words = _grid(model), grounding_words(model)
    pairs = [grid_targets(shapes_vqa.sample(split, i).scene, grid, words) for i in range(count)]
    targets, classes = zip(*pairs, strict=True)
    return Grounding(torch.stack(targets).half(), torch.stack(classes), words, tau)


def grounding_loss(
    images: torch.Tensor,
    targets: torch.Tensor,
    classes: torch.Tensor | None = None,
    words: torch.Tensor | None = None,
    tau: float = 0.05,
) -> torch.Tensor:
    """Squared error of the image tokens against their word targets, relative to the
    targets' own energy (scale-free: embeddings of a small LLM are small); with ``classes``
    plus the cross-entropy of each token's choice among ``words``, scored by squared distance
    relative to the words' energy over ``tau``. The squared error alone spends itself on
    what all the words share: after 3000 steps 23% of object tokens were still nearest a
    wrong word; with the choice term 14% after 1000 steps, most of them read as background
    (probes on the same features find the token of an object's centre for 90% of objects)."""
    images, targets = images.float(), targets.float()  # bfloat16 under autocast
    loss = ((images - targets) ** 2).sum(-1).mean() / (targets**2).sum(-1).mean()
    if classes is not None:
        distances = torch.cdist(images.reshape(-1, images.shape[-1]), words) ** 2
        logits = -distances / ((words**2).sum(-1).mean() * tau)
        loss = loss + F.cross_entropy(logits, classes.reshape(-1), ignore_index=-100)
    return loss


def grounding_accuracy(model, features: np.ndarray, targets: torch.Tensor, first: int) -> float:
    """Share of object tokens (targets other than background) whose nearest word target,
    among all the split's targets, is their own."""
    with torch.no_grad():
        images = grid_part(model, image_embeddings(model, torch.from_numpy(features), first))
        images = images.reshape(-1, targets.shape[-1])
        flat = targets.float().reshape(-1, targets.shape[-1])
        vocab, inverse = torch.unique(flat, dim=0, return_inverse=True)
        nearest = torch.cdist(images, vocab).argmin(dim=1)
    objects = inverse != inverse.mode().values
    return float((nearest == inverse)[objects].float().mean())
