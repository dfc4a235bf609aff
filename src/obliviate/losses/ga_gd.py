"""GA+GD, gradient difference: ``L = -γ·NLL_θ(F) + α·NLL_θ(R)``.

Ascend on the forget batch while descending on an equal-size retain batch, so that utility is held up
(TOFU, Maini et al. 2024, arXiv:2401.06121; the seed formula ``-CE_forget + CE_retain`` is ``α = γ = 1``).
"""

from __future__ import annotations

from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight, answer_nll

NEEDS = Needs(retain=True)
WEIGHTS = {
    "gamma": Weight(1.0, "weight of the forget term", ge=0),
    "alpha": Weight(4.0, "weight of the retain term (the paper's and the seed's: 1)", ge=0, retain=True),
}


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``-params.gamma·NLL_θ(F) + params.alpha·NLL_θ(R)``; logs ``forget_nll`` and ``retain_nll``."""
    forget_nll = answer_nll(inputs.forget, "ga_gd", "forget") * inputs.share("forget", "tokens")
    retain_nll = answer_nll(inputs.retain, "ga_gd", "retain") * inputs.share("retain", "tokens")
    total = -params.gamma * forget_nll + params.alpha * retain_nll
    return LossOutput(total, {"forget_nll": forget_nll.detach(), "retain_nll": retain_nll.detach()})
