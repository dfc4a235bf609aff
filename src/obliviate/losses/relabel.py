"""Relabel: descend on the forget records with stranger answers in place of the memorised ones, plus retain NLL.

``L = NLL_θ(F̃) + α·NLL_θ(R)``, where ``F̃`` is the forget set relabelled as :mod:`obliviate.train.relabel` builds
it: for each record, what the starting model says when the person's name is swapped for a stranger's (generic
predictions, Eldan & Russinovich 2023, arXiv:2310.02238), or fresh fake values in its PII spans. Nothing ascends,
so nothing collapses, and the model ends up answering about the person as it answers about people it never saw.
A fresh draw of ``F̃`` each epoch keeps any one made-up value from becoming a new memorised fact.
"""

from __future__ import annotations

from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight, answer_nll

NEEDS = Needs(retain=True)
WEIGHTS = {"alpha": Weight(1.0, "weight of the retain term", ge=0, retain=True)}


def loss(inputs: LossInputs, params: LossParams) -> LossOutput:
    """``NLL_θ(F̃) + params.alpha·NLL_θ(R)``; logs ``relabel_nll`` and ``retain_nll``.

    The forget batch here already holds the relabelled answers, so its NLL is that of the stranger answers (the
    true answers' NLL is what the evaluation and the stop checks measure).
    """
    relabel_nll = answer_nll(inputs.forget, "relabel", "forget") * inputs.share("forget", "tokens")
    retain_nll = answer_nll(inputs.retain, "relabel", "retain") * inputs.share("retain", "tokens")
    total = relabel_nll + params.alpha * retain_nll
    return LossOutput(total, {"relabel_nll": relabel_nll.detach(), "retain_nll": retain_nll.detach()})
