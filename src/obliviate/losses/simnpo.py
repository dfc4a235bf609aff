"""SimNPO, simple NPO: Fan et al. 2024, arXiv:2410.07163.

``L = −(2/β)·mean_batch log σ(−(β/|y|)·log π_θ(y|x) − δ) + α·NLL_θ(R)``, with ``log π_θ(y|x)`` summed over the
answer tokens and ``|y|`` their number. Reference-free: the length-normalised log-probability replaces NPO's
ratio to a frozen model, so no second model is run. Since ``−log σ(−z) = softplus(z)``, the forget term is
computed as ``(2/β)·softplus((β/|y|)·log π_θ(y|x) + δ)``, which is stable for large arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError
from obliviate.losses.common import (
    LossInputs,
    LossOutput,
    LossParams,
    Needs,
    Weight,
    answer_nll,
    token_logprobs,
    token_mean_nll,
)

NEEDS = Needs(retain=True)
WEIGHTS = {
    "beta": Weight(4.5, "inverse temperature", gt=0),
    "delta": Weight(0.0, "reward margin", ge=-1000, le=1000),
    "alpha": Weight(4.0, "weight of the retain term", ge=0, retain=True),
}


def simnpo_term(logprob: torch.Tensor, num_tokens: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """``(2/β)·mean softplus((β/|y|)·log π_θ(y|x) + δ)``.

    Args:
        logprob: ``[batch]``, summed answer log-probability under the model.
        num_tokens: ``[batch]``, answer tokens per example ``|y|`` (an example with none counts as one, so a
            fully truncated answer contributes ``softplus(δ)`` rather than a division by zero).
        beta: inverse temperature ``β > 0``.
        delta: reward margin ``δ``.

    Returns:
        A scalar.
    """
    if beta <= 0:
        raise ConfigError(f"SimNPO needs beta > 0, got {beta}")
    normalised = logprob / num_tokens.clamp_min(1.0)
    return (2.0 / beta) * F.softplus(beta * normalised + delta).mean()


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """SimNPO on F plus ``params.alpha·NLL_θ(R)``; logs ``forget_nll``, ``retain_nll`` and ``simnpo_term``."""
    forget = inputs.forget
    if forget.logits is None:
        raise ConfigError("method 'simnpo' needs logits of the forget batch; the forward pass returned none")
    logp, mask = token_logprobs(forget.logits, forget.labels)
    forget_term = simnpo_term(logp.sum(-1), mask.sum(-1), params.beta, params.delta)
    forget_term = forget_term * inputs.share("forget", "sequences")  # a mean over forget rows
    retain_nll = answer_nll(inputs.retain, "simnpo", "retain") * inputs.share("retain", "tokens")
    metrics = {
        "forget_nll": (token_mean_nll(logp, mask) * inputs.share("forget", "tokens")).detach(),
        "retain_nll": retain_nll.detach(),
        "simnpo_term": forget_term.detach(),
    }
    return LossOutput(forget_term + params.alpha * retain_nll, metrics)
