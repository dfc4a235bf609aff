"""Membership-inference scores per example, from the per-token log-probs of one forward pass.

Every score here is oriented so that **higher = more likely a member** (trained on), which is what
:func:`obliviate.evaluate.scores.roc_auc` expects (members labelled 1). The AUCs these give on forget (members) vs
holdout (non-members) are best at 0.5 after unlearning: above it the forget set is still recognisable, below it
the model treats the forget set suspiciously differently (over-unlearning).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from obliviate.evaluate.scores import roc_auc
from obliviate.evaluate.uncertainty import auc_components, auc_units, components_se

MIN_K = 0.4
"""Fraction of lowest-scoring tokens Min-K% and Min-K%++ average (k = 40 % as in TOFU / open-unlearning)."""

SIGMA_FLOOR = 1e-3
"""Smallest std used by Min-K%++: a near one-hot next-token distribution has sigma ≈ 0 (variance floor 1e-6)."""


def _vector(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 array from a list, NumPy array or (CPU / GPU, any dtype) torch tensor."""
    if hasattr(values, "detach"):  # torch tensor: avoid importing torch here
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty: an example needs at least one scored token")
    return array


def loss_score(token_logp: Any) -> float:
    """LOSS attack: ``mean(token_logp) = -NLL`` (Yeom et al. 2018, arXiv:1709.01604; Carlini et al. 2021).

    Args:
        token_logp: ``[n_tokens]`` log-prob of each actual next token over the scored positions.
    """
    return float(_vector(token_logp, "token_logp").mean())


def zlib_score(token_logp: Any, text: str) -> float:
    """zlib attack: ``-NLL / len(zlib.compress(text.encode("utf-8")))`` (Carlini et al. 2021, arXiv:2012.07805).

    ``docs/METRICS.md`` states it as ``NLL / zlib length`` (large for non-members); it is negated here so
    that, like every score in this module, higher means member. The length is in compressed bytes at zlib's
    default level, the reference normaliser of how predictable the text is without the model.

    Args:
        token_logp: ``[n_tokens]`` log-probs of the actual next tokens.
        text: the text those tokens encode.
    """
    return loss_score(token_logp) / len(zlib.compress(text.encode("utf-8")))


def _lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the ``max(1, floor(k · n))`` smallest values (the rounding of Shi et al.'s reference code)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    count = max(1, int(values.size * k))
    return float(np.sort(values)[:count].mean())


def min_k_score(token_logp: Any, k: float = MIN_K) -> float:
    """Min-K% Prob: mean of the lowest ``max(1, floor(k·n))`` token log-probs (Shi et al. 2023, arXiv:2310.16789).

    Members have few very unlikely tokens, so a higher (less negative) value means member.

    Args:
        token_logp: ``[n_tokens]`` log-probs of the actual next tokens.
        k: fraction of tokens kept; with n = 7 and k = 0.4, floor(2.8) = 2 tokens.
    """
    return _lowest_mean(_vector(token_logp, "token_logp"), k)


def min_k_pp_score(token_logp: Any, mu: Any, sigma: Any, k: float = MIN_K) -> float:
    """Min-K%++: Min-K% over standardised log-probs (Zhang et al. 2024, arXiv:2404.02936).

    Each token's log-prob is standardised as ``(log p(x_t) - mu_t) / sigma_t`` where, under the model's own
    next-token distribution p at position t, ``mu_t = Σ_v p(v) log p(v)`` and
    ``sigma_t = sqrt(Σ_v p(v) log² p(v) - mu_t²)``; sigma is floored at :data:`SIGMA_FLOOR`. Then the mean of the
    lowest ``max(1, floor(k·n))`` standardised values; higher = member.

    Args:
        token_logp: ``[n_tokens]`` log-probs of the actual next tokens.
        mu: ``[n_tokens]`` expected log-prob per position.
        sigma: ``[n_tokens]`` std of the log-prob per position.
        k: fraction of tokens kept.
    """
    logp, mean, std = _vector(token_logp, "token_logp"), _vector(mu, "mu"), _vector(sigma, "sigma")
    if not logp.shape == mean.shape == std.shape:
        raise ValueError(f"token_logp, mu, sigma differ in length: {logp.size}, {mean.size}, {std.size}")
    standardised = (logp - mean) / np.maximum(std, SIGMA_FLOOR)
    return _lowest_mean(standardised, k)


@dataclass(frozen=True)
class ExampleLogProbs:
    """What one forward pass gives for one example, enough for every attack.

    Attributes:
        token_logp: ``[n_tokens]`` log-prob of each actual next token over the scored positions.
        mu: ``[n_tokens]`` mean log-prob of the model's next-token distribution, or None (no Min-K%++).
        sigma: ``[n_tokens]`` its std, or None.
        text: the scored text (for zlib).
        owner: the person (or document) it is about: the examples of one owner count as one draw in the AUC's
            standard error (:func:`mia_aucs_with_stderr`); None: its own.
        id: the record's id, which pairs it with the same record under another model (None: its position).
    """

    token_logp: np.ndarray
    mu: np.ndarray | None
    sigma: np.ndarray | None
    text: str
    owner: str | None = None
    id: str | None = None


def attack_scores(examples: list[ExampleLogProbs], k: float = MIN_K) -> dict[str, list[float]]:
    """Each attack's score of every example (higher = member): ``{"loss", "zlib", "mink", "minkpp"}``, Min-K%++
    left out when any example lacks mu / sigma."""
    attacks = {
        "loss": lambda ex: loss_score(ex.token_logp),
        "zlib": lambda ex: zlib_score(ex.token_logp, ex.text),
        "mink": lambda ex: min_k_score(ex.token_logp, k),
    }
    if all(ex.mu is not None and ex.sigma is not None for ex in examples):
        attacks["minkpp"] = lambda ex: min_k_pp_score(ex.token_logp, ex.mu, ex.sigma, k)
    return {name: [score(ex) for ex in examples] for name, score in attacks.items()}


def mia_aucs(members: list[ExampleLogProbs], nonmembers: list[ExampleLogProbs], k: float = MIN_K) -> dict[str, float]:
    """AUC of each attack at telling members (forget) from non-members (holdout); 0.5 is ideal after unlearning.

    Returns:
        ``{"loss", "zlib", "mink", "minkpp"}`` → AUC; ``"minkpp"`` is left out when any example lacks mu / sigma.
    """
    return {name: auc for name, (auc, _) in mia_aucs_with_stderr(members, nonmembers, k).items()}


def mia_aucs_with_stderr(
    members: list[ExampleLogProbs], nonmembers: list[ExampleLogProbs], k: float = MIN_K, units: dict | None = None
) -> dict[str, tuple[float, float | None]]:
    """:func:`mia_aucs` with each AUC's standard error, the examples of one owner counted as one draw
    (:func:`~obliviate.evaluate.uncertainty.auc_se`). ``units``, where given, gets each attack's
    :data:`~obliviate.evaluate.uncertainty.Units` under its name."""
    scored = attack_scores([*members, *nonmembers], k)
    m = len(members)
    keys = [
        (ex.id if ex.id is not None else f"#{i}", ex.owner if ex.owner is not None else f"#{i}")
        for i, ex in enumerate([*members, *nonmembers])
    ]
    owners = [owner for _, owner in keys]
    out = {}
    for name, values in scored.items():
        member_scores, nonmember_scores = values[:m], values[m:]
        v10, v01 = auc_components(member_scores, nonmember_scores)
        se = components_se(v10, v01, owners[:m], owners[m:])  # None where a side has fewer than two people
        out[name] = (roc_auc(member_scores, nonmember_scores), se)
        if units is not None:
            units[name] = auc_units(keys[:m], keys[m:], v10, v01)
    return out
