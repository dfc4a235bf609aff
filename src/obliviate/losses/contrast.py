"""Contrast: make each true PII value no more likely than a fresh fake of its format, and stop there.

The objective is a hinge on the gap between a true value and its fake:

    L = mean_i relu(NLL_θ(ṽ_i | x̃_i) − NLL_θ(v_i | x_i) + m) + α·NLL_θ(R)

where ``v_i`` are the PII value tokens of forget row ``i`` and ``ṽ_i`` those of the same row with every value
replaced by a fresh fake of the same format (a new draw each epoch; never a real value). Both NLLs are means over
the value tokens only. The hinge is zero once the true value is at least ``m`` nats less likely than its fake, so
the forget term stops pushing where a model that never saw the person would be: exposure (Carlini et al. 2019,
arXiv:1802.08232) at the chance level, not below it. Gradient difference (Maini et al. 2024, arXiv:2401.06121)
pushes without such a floor; this is the margin form of it on the PII values, against their own fakes.
"""

from __future__ import annotations

import torch

from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight, answer_nll, sequence_logprob

NEEDS = Needs(retain=True, paired=True)
WEIGHTS = {
    "delta": Weight(0.0, "hinge margin m in nats", ge=0, le=1000),
    "alpha": Weight(4.0, "weight of the retain term", ge=0, retain=True),
}


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch]`` mean NLL over each row's scored tokens, and ``[batch]`` whether the row has any."""
    logp, count = sequence_logprob(logits, labels)
    return -logp / count.clamp_min(1.0), count > 0


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """The hinge on ``NLL(fake) - NLL(true) + params.delta`` (the margin ``m``) plus ``params.alpha·NLL(R)``.

    Logs ``forget_nll`` (true values), ``fake_nll`` and ``gap_hinge``.
    """
    true_nll, scored = per_example_nll(inputs.forget.logits, inputs.forget.labels)
    fake_nll, fake_scored = per_example_nll(inputs.paired.logits, inputs.paired.labels)
    both = (scored & fake_scored).float()
    hinge = torch.relu(fake_nll - true_nll + params.delta) * both
    pairs = inputs.share("forget", "pairs")  # every forget figure is a mean over the rows scored in both
    forget_term = hinge.sum() / both.sum().clamp_min(1.0) * pairs
    retain_nll = answer_nll(inputs.retain, "contrast", "retain") * inputs.share("retain", "tokens")
    total = forget_term + params.alpha * retain_nll
    metrics = {
        "forget_nll": ((true_nll * both).sum() / both.sum().clamp_min(1.0) * pairs).detach(),
        "fake_nll": ((fake_nll * both).sum() / both.sum().clamp_min(1.0) * pairs).detach(),
        "gap_hinge": forget_term.detach(),
        "retain_nll": retain_nll.detach(),
    }
    return LossOutput(total, metrics)
