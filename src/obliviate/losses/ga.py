"""GA, gradient ascent on the forget set: ``L = -NLL_θ(F)``.

Jang et al. 2022, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", arXiv:2210.01504.
The loss is unbounded below (the model can push the answer probability to zero forever), so a run needs a bound
or an early stop.
"""

from __future__ import annotations

from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight, answer_nll

NEEDS = Needs()
WEIGHTS: dict[str, Weight] = {}  # plain ascent: nothing to weigh


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``-NLL_θ(F)``; logs ``forget_nll``. ``params`` is unused: plain GA has no weights."""
    forget_nll = answer_nll(inputs.forget, "ga", "forget") * inputs.share("forget", "tokens")
    return LossOutput(-forget_nll, {"forget_nll": forget_nll.detach()})
