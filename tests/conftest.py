"""Shared fixtures: tiny random models are built in-process, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
# the assembled default model is cached inside the repository, shared with `make demo`
os.environ.setdefault("MOBILEVLM_CACHE", str(REPO / ".cache" / "mobilevlm"))


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="session")
def tiny_models(torch_threads):
    """Memoised ``build_tiny_model`` so each tiny geometry is built once per session."""
    from tiny_models import build_tiny_model

    cache = {}

    def get(**kwargs):
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = build_tiny_model(**kwargs)
        return cache[key]

    return get


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A non-square uint8 RGB image with structure (gradients plus noise)."""
    rng = np.random.default_rng(0)
    h, w = 90, 140
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=-1).astype(np.int32)
    img += rng.integers(-20, 20, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> Path:
    """A byte-fallback BPE SentencePiece model set up like MobileLLaMA's tokenizer.model."""
    import sentencepiece as spm

    directory = tmp_path_factory.mktemp("sentencepiece")
    corpus = directory / "corpus.txt"
    lines = [
        "what color is the red circle in the image",
        "how many shapes are there",
        "the blue square is at the top left",
    ]
    corpus.write_text("\n".join(lines * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "sp"),
        vocab_size=300,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        byte_fallback=True,
        normalization_rule_name="identity",  # as Llama's: no NFKC, spaces kept as they are
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return directory / "sp.model"
