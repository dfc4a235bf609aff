"""NPO, negative preference optimisation: Zhang et al. 2024, arXiv:2404.05868.

``L = (2/β)·mean_batch log(1 + (π_θ(y|x) / π_ref(y|x))^β) + α·NLL_θ(R)``, with ``log π(y|x)`` the answer's
log-probability summed over its tokens. Writing ``r = log π_θ(y|x) − log π_ref(y|x)``:
``log(1 + e^{β·r}) = softplus(β·r) = −log σ(−β·r)``, so this is the paper's ``−(2/β)·log σ(−β·r)``; softplus is
used because it is stable for large ``|β·r|``. At ``θ = ref`` the forget term is ``(2/β)·log 2``; it falls towards
0 as the forget answer becomes less likely than under the reference, and, unlike GA, its gradient vanishes
there instead of running away.
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
    sequence_logprob,
    token_logprobs,
    token_mean_nll,
)

NEEDS = Needs(retain=True, reference_on=("forget",), reference_logprob=True)
WEIGHTS = {
    "beta": Weight(0.1, "inverse temperature", gt=0),
    "alpha": Weight(4.0, "weight of the retain term", ge=0, retain=True),
}


def npo_term(logprob: torch.Tensor, ref_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """``(2/β)·mean softplus(β·(log π_θ − log π_ref))``.

    Args:
        logprob: ``[batch]``, summed answer log-probability under the model.
        ref_logprob: ``[batch]``, the same under the frozen reference (no gradient flows into it).
        beta: inverse temperature ``β > 0``.

    Returns:
        A scalar.
    """
    if beta <= 0:
        raise ConfigError(f"NPO needs beta > 0, got {beta}")
    return (2.0 / beta) * F.softplus(beta * (logprob - ref_logprob.detach())).mean()


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """NPO on F plus ``params.alpha·NLL_θ(R)``; logs ``forget_nll``, ``retain_nll``, ``npo_term``, ``log_ratio``."""
    forget, forget_ref = inputs.forget, inputs.forget_ref
    if forget.logits is None:
        raise ConfigError("method 'npo' needs logits of the forget batch; the forward pass returned none")
    ref_logprob = inputs.forget_ref_logprob  # cached before training (full fine-tuning): no frozen copy is kept
    if ref_logprob is None:
        if forget_ref is None or forget_ref.logits is None:
            raise ConfigError("method 'npo' needs the reference model's logits on the forget batch; none were given")
        with torch.no_grad():
            ref_logprob, _ = sequence_logprob(forget_ref.logits, forget_ref.labels)
    # One log-softmax serves both the NPO term and the logged forget NLL.
    logp, mask = token_logprobs(forget.logits, forget.labels)
    logprob = logp.sum(-1)
    rows = inputs.share("forget", "sequences")  # the NPO term and the log ratio are means over forget rows
    forget_term = npo_term(logprob, ref_logprob, params.beta) * rows
    retain_nll = answer_nll(inputs.retain, "npo", "retain") * inputs.share("retain", "tokens")
    metrics = {
        "forget_nll": (token_mean_nll(logp, mask) * inputs.share("forget", "tokens")).detach(),
        "retain_nll": retain_nll.detach(),
        "npo_term": forget_term.detach(),
        "log_ratio": ((logprob - ref_logprob).mean() * rows).detach(),
    }
    return LossOutput(forget_term + params.alpha * retain_nll, metrics)
