"""GA, gradient ascent on the forget set: ``L = -NLL_θ(F)``.

Jang et al. 2022, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", arXiv:2210.01504.
The loss is unbounded below (the model can push the answer probability to zero forever), so a run needs a bound
or an early stop.
"""

from __future__ import annotations

import torch

from obliviate.errors import ConfigError
from obliviate.losses.common import Forward, LossInputs, LossOutput, LossParams, Needs, mean_nll

NEEDS = Needs()


def answer_nll(forward: Forward | None, method: str, split: str) -> torch.Tensor:
    """``NLL_θ`` of one split: the mean answer-token NLL (token-weighted over the batch), a scalar with gradient.

    Args:
        forward: the model's pass on the split; its ``logits`` are ``[batch, seq_len, vocab]``.
        method: the method's name, for the error message.
        split: ``"forget"`` or ``"retain"``, for the error message.

    Raises:
        ConfigError: the split or its logits are missing, i.e. the method was run without what it needs.
    """
    if forward is None:
        raise ConfigError(f"method {method!r} needs a {split} batch; none was given")
    if forward.logits is None:
        raise ConfigError(f"method {method!r} needs logits of the {split} batch; the forward pass returned none")
    return mean_nll(forward.logits, forward.labels)


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``-NLL_θ(F)``; logs ``forget_nll``. ``params`` is unused: plain GA has no weights."""
    forget_nll = answer_nll(inputs.forget, "ga", "forget")
    return LossOutput(-forget_nll, {"forget_nll": forget_nll.detach().item()})
