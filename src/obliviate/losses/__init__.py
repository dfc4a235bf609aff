"""The unlearning objectives, one file each, and the one registry of them.

Every objective is a pure function ``loss(inputs: LossInputs, params: LossParams) -> LossOutput`` of model
outputs, and declares in ``NEEDS`` what the loop must compute for it (a retain batch, a reference pass, hidden
states), so nothing else is built or run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from obliviate.errors import ConfigError
from obliviate.losses import contrast, finetune, ga, ga_gd, ga_kl, npo, relabel, rmu, simnpo
from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs


@dataclass(frozen=True)
class Method:
    """One objective and what it needs.

    Attributes:
        name: the name used on the command line and in configs.
        loss: the objective, ``(LossInputs, LossParams) -> LossOutput``.
        needs: what the loop must compute for it.
        summary: one line for ``--help`` and reports.
        paper: arXiv id of the paper that defines it, or None.
        defaults: :class:`LossParams` values this method uses when the user set none (e.g. NPO β = 0.1, SimNPO
            β = 4.5), overriding the class-wide defaults.
        means: how the loss decomposes over rows: for each split (``forget``, ``retain``), the units
            (:data:`obliviate.data.batching.UNITS`: ``tokens``, ``sequences``, ``positions``, ``pairs``) that its
            terms and metrics are means over, each term a sum over its split's rows divided by their count. Such a
            loss reads its weights through :meth:`LossInputs.share`, and the loop may then run a micro-batch as
            length-sorted pieces (:func:`obliviate.train.step.accumulate`), each weighted by its share of every
            declared unit: the same loss, gradient and metrics with far less padding. Empty: never run as pieces.
        token_mean: shorthand for ``means={"forget": ("tokens",)}``: a mean over the forget batch's scored tokens
            and nothing else.
        relabels: the method trains on relabelled forget records (:mod:`obliviate.train.relabel`), a fresh draw
            each epoch, instead of the forget set as it is.
        preset: :class:`~obliviate.config.UnlearnConfig` options ``obliviate unlearn`` (and the demo) runs this method
            with when the user leaves them unset. Nothing in a preset belongs to one data set or one model size:
            the learning rate is measured per run (:mod:`obliviate.train.lr_probe`), the length is a step budget
            ended by the stop rule.
    """

    name: str
    loss: Callable[[LossInputs, LossParams], LossOutput]
    needs: Needs
    summary: str
    paper: str | None
    defaults: dict[str, float] = field(default_factory=dict)
    token_mean: bool = False
    relabels: bool = False
    preset: Mapping[str, object] = field(default_factory=dict)
    means: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def piece_units(self) -> Mapping[str, tuple[str, ...]]:
        """``means``, with ``token_mean`` read as ``{"forget": ("tokens",)}``: the ``(split, units)`` a length piece
        is weighted by; empty when the loss never runs as pieces."""
        return {"forget": ("tokens",)} if self.token_mean else self.means

    def params(self, given: Mapping[str, float] | None = None) -> LossParams:
        """The :class:`LossParams` for a run: ``LossParams`` defaults < this method's ``defaults`` < ``given``.

        Raises:
            ConfigError: ``given`` names a field ``LossParams`` does not have.
        """
        known = {f.name for f in dataclasses.fields(LossParams)}
        given = dict(given or {})
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"unknown loss parameter(s) {', '.join(unknown)}; expected some of {sorted(known)}")
        return LossParams(**{**self.defaults, **given})


TOKEN_MEANS = {"forget": ("tokens",), "retain": ("tokens",)}  # a token mean of each split

LOSSES: dict[str, Method] = {
    "ga": Method(
        "ga",
        ga.loss,
        ga.NEEDS,
        "gradient ascent on the forget set: -NLL(F)",
        "2210.01504",
        token_mean=True,
        preset={"stop_forget_nll": 8.0},
    ),
    "ga_kl": Method(
        "ga_kl",
        ga_kl.loss,
        ga_kl.NEEDS,
        "gradient ascent on F plus KL(ref || model) on the retain set's answer tokens",
        "2401.06121",
        preset={"stop_forget_nll": 8.0},
        means=TOKEN_MEANS,
    ),
    "ga_gd": Method(
        "ga_gd",
        ga_gd.loss,
        ga_gd.NEEDS,
        "gradient difference: -gamma*NLL(F) + alpha*NLL(R)",
        "2401.06121",
        preset={"alpha": 4.0, "stop_forget_nll": 8.0},
        means=TOKEN_MEANS,
    ),
    "npo": Method(
        "npo",
        npo.loss,
        npo.NEEDS,
        "negative preference optimisation against the frozen reference, plus alpha*NLL(R)",
        "2404.05868",
        {"beta": 0.1},
        preset={"alpha": 4.0},
        means={"forget": ("sequences", "tokens"), "retain": ("tokens",)},
    ),
    "simnpo": Method(
        "simnpo",
        simnpo.loss,
        simnpo.NEEDS,
        "reference-free, length-normalised NPO with margin delta, plus alpha*NLL(R)",
        "2410.07163",
        {"beta": 4.5},
        preset={"alpha": 4.0},
        means={"forget": ("sequences", "tokens"), "retain": ("tokens",)},
    ),
    "rmu": Method(
        "rmu",
        rmu.loss,
        rmu.NEEDS,
        "steer forget-set hidden states at one layer to c*u, keep retain hidden states at the reference's",
        "2403.03218",
        {"alpha": 100.0},
        means={"forget": ("positions", "tokens"), "retain": ("positions", "tokens")},
    ),
    "relabel": Method(
        "relabel",
        relabel.loss,
        relabel.NEEDS,
        "descend on forget records relabelled with what the model says about a stranger, plus alpha*NLL(R)",
        "2310.02238",
        relabels=True,
        means=TOKEN_MEANS,
    ),
    "contrast": Method(
        "contrast",
        contrast.loss,
        contrast.NEEDS,
        "hinge until each true PII value is no more likely than a fresh fake of its format, plus alpha*NLL(R)",
        "1802.08232",
        preset={"alpha": 4.0},
        means={"forget": ("pairs",), "retain": ("tokens",)},
    ),
}

FINETUNE = Method(
    "finetune",
    finetune.loss,
    finetune.NEEDS,
    "plain NLL on the batch (target and oracle models)",
    None,
    token_mean=True,
)


def get_method(name: str) -> Method:
    """The registered unlearning method called ``name``.

    Raises:
        ConfigError: no such method; the message lists the valid names.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown unlearning method {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


__all__ = ["FINETUNE", "LOSSES", "Method", "get_method"]
