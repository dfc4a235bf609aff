"""Membership-inference scores on known log-prob vectors."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from obliviate.evaluate.mia import (
    ExampleLogProbs,
    loss_score,
    mia_aucs,
    min_k_pp_score,
    min_k_score,
    zlib_score,
)

LOGP = [-0.1, -5.0, -0.2, -3.0, -0.3, -4.0, -0.05]


def test_loss_score_is_minus_nll() -> None:
    assert loss_score([-1.0, -2.0, -3.0]) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="empty"):
        loss_score([])


def test_min_k_known_vector() -> None:
    """n = 7, k = 0.4 → floor(2.8) = 2 lowest log-probs: -5 and -4 → mean -4.5."""
    assert min_k_score(LOGP, k=0.4) == pytest.approx(-4.5)
    # k = 0.1 → floor(0.7) = 0, raised to the minimum of one token: -5.
    assert min_k_score(LOGP, k=0.1) == pytest.approx(-5.0)
    assert min_k_score(LOGP, k=1.0) == pytest.approx(np.mean(LOGP))
    with pytest.raises(ValueError):
        min_k_score(LOGP, k=0.0)


def test_min_k_pp_known_mu_sigma() -> None:
    """Standardised (logp - mu) / sigma = [0, -1, -1, -6, -1]; k = 0.4 of 5 → 2 lowest: -6, -1 → -3.5."""
    logp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    mu = [-1.0] * 5
    sigma = [1.0, 1.0, 2.0, 0.5, 4.0]
    assert min_k_pp_score(logp, mu, sigma, k=0.4) == pytest.approx(-3.5)


def test_min_k_pp_guards_zero_sigma() -> None:
    # A one-hot next-token distribution: sigma 0; the floor (1e-3) keeps the score finite.
    assert min_k_pp_score([0.0], [0.0], [0.0]) == 0.0
    assert min_k_pp_score([-0.5], [0.0], [0.0]) == pytest.approx(-500.0)
    with pytest.raises(ValueError, match="differ in length"):
        min_k_pp_score([-1.0, -2.0], [0.0], [1.0])


def test_zlib_score_known_string() -> None:
    text = "hello hello hello hello"
    compressed = len(zlib.compress(text.encode("utf-8")))
    assert zlib_score([-1.0, -3.0], text) == pytest.approx(-2.0 / compressed)
    # Higher = member: a text the model finds likelier scores higher.
    assert zlib_score([-0.5], text) > zlib_score([-2.0], text)


def test_accepts_torch_tensors() -> None:
    logp = torch.tensor(LOGP, dtype=torch.bfloat16)
    assert min_k_score(logp) == pytest.approx(-4.5, abs=0.02)


def _example(logp: list[float], with_moments: bool = True) -> ExampleLogProbs:
    array = np.array(logp)
    zeros, ones = np.zeros_like(array), np.ones_like(array)
    return ExampleLogProbs(array, zeros if with_moments else None, ones if with_moments else None, "same text")


def test_mia_aucs_separable_and_identical() -> None:
    members = [_example([-0.1, -0.2, -0.3]), _example([-0.2, -0.1, -0.4])]
    nonmembers = [_example([-2.0, -3.0, -4.0]), _example([-3.0, -2.5, -5.0])]
    assert mia_aucs(members, nonmembers) == {"loss": 1.0, "zlib": 1.0, "mink": 1.0, "minkpp": 1.0}
    assert mia_aucs(members, members) == {"loss": 0.5, "zlib": 0.5, "mink": 0.5, "minkpp": 0.5}


def test_mia_aucs_without_moments_skips_minkpp() -> None:
    members = [_example([-0.1, -0.2], with_moments=False)]
    nonmembers = [_example([-2.0, -3.0])]
    assert set(mia_aucs(members, nonmembers)) == {"loss", "zlib", "mink"}
