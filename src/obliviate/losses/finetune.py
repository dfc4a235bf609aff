"""Plain fine-tuning, ``L = NLL_θ(batch)``: builds the target model (trained on everything) and the oracle
(trained on the retain set only). Not an unlearning method, so it is not in ``LOSSES``.
"""

from __future__ import annotations

from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight, answer_nll

NEEDS = Needs()
WEIGHTS: dict[str, Weight] = {}


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """Mean answer-token NLL of the batch under training, passed as ``inputs.forget``; logs ``nll``."""
    nll = answer_nll(inputs.forget, "finetune", "training") * inputs.share("forget", "tokens")
    return LossOutput(nll, {"nll": nll.detach()})
