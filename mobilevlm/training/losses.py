"""Stage 2's loss: cross-entropy on the answers (and the replayed text answers) of a
batch of conversations, plus the grounding loss of their image tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobilevlm.generation.tokenizer import IMAGE_TOKEN_ID
from mobilevlm.training.data import Example, image_embeddings
from mobilevlm.training.grounding import Grounding, grid_part


def autocast(precision: str):
    """Where stage 2's forward runs: bfloat16 autocast for "bf16" (the weights, their
    gradients and the optimizer stay fp32), plain fp32 otherwise."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def batch_loss(
    model,
    features: torch.Tensor,
    seqs: list[Example],
    first: int,
    grounding: Grounding | None = None,
    idx=None,
    aux_weight: float = 0.0,
    text_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """:func:`answer_loss` of the sequences on the images of ``features``, plus
    ``aux_weight`` times the grounding loss of the image tokens (scenes ``idx`` of
    ``grounding``) when given."""
    images = image_embeddings(model, features, first)
    loss, stats = answer_loss(model, images, seqs, text_weight)
    if grounding is not None and aux_weight:
        aux = grounding.loss(grid_part(model, images), idx)
        stats["grounding"] = round(aux.item(), 4)
        loss = loss + aux_weight * aux
    return loss, stats


def answer_loss(
    model, images: torch.Tensor, seqs: list[Example], text_weight: float = 1.0, rows: int = 4
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over answer tokens (logits only where a label is), plus
    ``text_weight`` times the mean over replayed text answers. The first ``len(images)``
    sequences hold the images, the rest are text only. The LLM runs on ``rows`` sequences
    at a time, sorted by length: less padding than one batch, as fast per token."""
    embeds, labels, replays = [], [], []
    for b, seq in enumerate(seqs):
        if b < len(images):  # the image's tokens take the placeholder's place, unsupervised
            embeds.append(model.embed(seq.ids, images[b])[0])
            at, n = seq.ids.index(IMAGE_TOKEN_ID), images.shape[1]
            labels.append(seq.labels[:at] + [-100] * n + seq.labels[at + 1 :])
            replays.append(seq.replay[:at] + [False] * n + seq.replay[at + 1 :])
        else:
            embeds.append(model.embed(seq.ids, None)[0])
            labels.append(seq.labels)
            replays.append(seq.replay)
    lm = model.language_model.get_base_model()  # the LlamaForCausalLM, LoRA layers inside
    order = sorted(range(len(seqs)), key=lambda b: embeds[b].shape[0])
    losses, flags, exact = [], [], {}
    for chunk in (order[i : i + rows] for i in range(0, len(order), rows)):
        length = max(embeds[b].shape[0] for b in chunk)
        mask = torch.zeros(len(chunk), length, dtype=torch.long)
        target = torch.full((len(chunk), length), -100, dtype=torch.long)
        is_replay = torch.zeros(len(chunk), length, dtype=torch.bool)
        padded = torch.zeros(len(chunk), length, embeds[0].shape[1])
        for row, b in enumerate(chunk):
            n = embeds[b].shape[0]
            padded[row, :n] = embeds[b]
            mask[row, :n] = 1
            target[row, :n] = torch.tensor(labels[b])
            is_replay[row, :n] = torch.tensor(replays[b])
        hidden = lm.model(inputs_embeds=padded, attention_mask=mask).last_hidden_state
        where = target[:, 1:] != -100
        logits = lm.lm_head(hidden[:, :-1][where])
        gold = target[:, 1:][where]
        losses.append(F.cross_entropy(logits, gold, reduction="none"))
        flags.append(is_replay[:, 1:][where])
        exact.update(zip(chunk, _exact(logits.argmax(-1), gold, where), strict=True))
    token_losses, replayed = torch.cat(losses), torch.cat(flags)
    answers = token_losses[~replayed]
    loss = answers.mean() if len(answers) else token_losses.new_zeros(())
    if replayed.any():
        loss = loss + text_weight * token_losses[replayed].mean()
    return loss, {"tokens": int((~replayed).sum()), "exact": [exact[b] for b in range(len(seqs))]}


def _exact(pred: torch.Tensor, gold: torch.Tensor, where: torch.Tensor) -> list[bool]:
    """Per sequence: every supervised token predicted (teacher forcing == greedy decoding)."""
    ok = (pred == gold).tolist()
    out, i = [], 0
    for n in where.sum(dim=1).tolist():
        out.append(all(ok[i : i + n]))
        i += n
    return out
