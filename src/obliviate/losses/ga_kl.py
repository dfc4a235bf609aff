"""GA+KL: ``L = -NLL_θ(F) + kl_weight·KL(ref ‖ θ)`` on the retain set.

The KL term keeps the model's next-token distribution on retain answers close to the frozen reference's
(TOFU, Maini et al. 2024, arXiv:2401.06121). It is a per-token KL averaged over answer tokens only: some
implementations average over every position, padding and prompt included, which dilutes the term by the share
of masked positions and makes its weight depend on the padding.
"""

from __future__ import annotations

import torch

from obliviate.errors import ConfigError, ModelError
from obliviate.losses.common import (
    IGNORE_INDEX,
    LossInputs,
    LossOutput,
    LossParams,
    Needs,
    Weight,
    answer_nll,
    mean_nll,
)

NEEDS = Needs(retain=True, reference_on=("retain",))
WEIGHTS = {"kl_weight": Weight(1.0, "weight of the KL term on the retain set", ge=0, retain=True)}


def answer_token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(ref ‖ θ)`` per answer token, averaged over answer tokens of the whole batch.

    At each position ``t`` whose next label ``labels[:, t+1]`` is not ``-100``, ``KL_t = Σ_v p_ref(v)·(log p_ref(v)
    − log p_θ(v))``; the result is the mean of ``KL_t`` over those positions only (0 when there are none).

    Args:
        logits: ``[batch, seq_len, vocab]`` of the model being unlearned.
        ref_logits: ``[batch, seq_len, vocab]`` of the frozen reference (no gradient flows into it).
        labels: ``[batch, seq_len]``, unshifted, ``-100`` on prompt and padding.

    Returns:
        A scalar, ``>= 0``.
    """
    if ref_logits.shape != logits.shape:
        raise ModelError(
            f"reference logits have shape {tuple(ref_logits.shape)}, expected the model's {tuple(logits.shape)}"
        )
    scored = labels[:, 1:].ne(IGNORE_INDEX)
    # A masked sum over every position, not boolean indexing: selecting the scored rows has a data-dependent shape,
    # so it waits for the GPU once per call. ``where`` (not ``* scored``) keeps a non-finite value at an unscored
    # position out of the sum, as the selection did.
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits[:, :-1].detach().float(), dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return torch.where(scored, per_token, 0.0).sum() / scored.sum().clamp_min(1)


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``-NLL_θ(F) + params.kl_weight·KL(ref ‖ θ)`` on R; logs ``forget_nll``, ``retain_nll`` and ``kl``."""
    forget_nll = answer_nll(inputs.forget, "ga_kl", "forget") * inputs.share("forget", "tokens")
    retain, retain_ref = inputs.retain, inputs.retain_ref
    if retain is None or retain.logits is None:
        raise ConfigError("method 'ga_kl' needs logits of a retain batch; none were given")
    if retain_ref is None or retain_ref.logits is None:
        raise ConfigError("method 'ga_kl' needs the reference model's logits on the retain batch; none were given")
    retain_share = inputs.share("retain", "tokens")
    kl = answer_token_kl(retain.logits, retain_ref.logits, retain.labels) * retain_share
    with torch.no_grad():  # retain NLL is only watched here, not optimised
        retain_nll = mean_nll(retain.logits, retain.labels) * retain_share
    metrics = {"forget_nll": forget_nll.detach(), "retain_nll": retain_nll, "kl": kl.detach()}
    return LossOutput(-forget_nll + params.kl_weight * kl, metrics)
