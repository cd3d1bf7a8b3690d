"""The numpy sampler follows transformers' logits processors and is seed-reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevlm.generation.sampling import (
    GenerationConfig,
    Sampler,
    apply_repetition_penalty,
    softmax,
    top_k_filter,
    top_p_filter,
)


@pytest.fixture
def logits() -> np.ndarray:
    return np.random.default_rng(1).normal(size=64).astype(np.float32) * 3


def test_repetition_penalty_matches_transformers(logits):
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    seen_ids = [3, 7, 7, 20, 41]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(
        torch.tensor([seen_ids]), torch.from_numpy(logits)[None].clone()
    )[0].numpy()
    seen = np.zeros(64, dtype=bool)
    seen[seen_ids] = True
    np.testing.assert_allclose(apply_repetition_penalty(logits, seen, 1.3), expected, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 63])
def test_top_k_matches_transformers(logits, k):
    import torch
    from transformers import TopKLogitsWarper

    expected = TopKLogitsWarper(k)(None, torch.from_numpy(logits)[None].clone())[0].numpy()
    np.testing.assert_array_equal(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_top_p_matches_transformers(logits, p):
    import torch
    from transformers import TopPLogitsWarper

    expected = TopPLogitsWarper(p)(None, torch.from_numpy(logits)[None].clone())[0].numpy()
    np.testing.assert_array_equal(np.isinf(top_p_filter(logits, p)), np.isinf(expected))


def test_greedy_is_argmax_after_repetition_penalty():
    logits = np.array([0.0, 5.0, 4.9, -1.0], dtype=np.float32)
    assert Sampler(GenerationConfig(), 4)(logits) == 1
    penalised = Sampler(GenerationConfig(repetition_penalty=1.2), 4, context_ids=[1])
    assert penalised(logits) == 2


def test_same_seed_same_tokens_other_seed_other_tokens(logits):
    config = GenerationConfig(temperature=1.5, top_k=40, top_p=0.95, seed=1234)

    def draw(cfg):
        sampler = Sampler(cfg, 64)
        return [sampler(logits) for _ in range(30)]

    assert draw(config) == draw(config)
    other = GenerationConfig(temperature=1.5, top_k=40, top_p=0.95, seed=4321)
    assert draw(config) != draw(other)


def test_top_k_one_samples_the_argmax(logits):
    sampler = Sampler(GenerationConfig(temperature=2.0, top_k=1, seed=0), 64)
    assert {sampler(logits) for _ in range(20)} == {int(np.argmax(logits))}


@pytest.mark.parametrize("temperature", [1e-39, 1e-45, 1e-30])
def test_a_temperature_near_zero_samples_the_argmax(logits, temperature):
    sampler = Sampler(GenerationConfig(temperature=temperature, seed=0), 64)
    assert {sampler(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_sampling_frequencies_follow_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(GenerationConfig(temperature=1.0, seed=7), 4)
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, softmax(logits), atol=0.015)


def test_sampler_never_picks_filtered_tokens(logits):
    sampler = Sampler(GenerationConfig(temperature=1.0, top_k=3, seed=3), 64)
    allowed = set(np.argsort(logits)[-3:].tolist())
    assert {sampler(logits) for _ in range(300)} <= allowed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": -2},
        {"max_new_tokens": -1},
        {"repetition_penalty": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)
