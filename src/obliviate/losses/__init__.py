"""The unlearning objectives, one file each, and the one registry of them.

Every objective is a pure function ``loss(inputs: LossInputs, params: LossParams) -> LossOutput`` of model
outputs, and declares in ``NEEDS`` what the loop must compute for it (a retain batch, a reference pass, hidden
states), so nothing else is built or run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from obliviate.errors import ConfigError
from obliviate.losses import contrast, finetune, ga, ga_gd, ga_kl, npo, relabel, rmu, simnpo
from obliviate.losses.common import LossInputs, LossOutput, LossParams, Needs, Weight

DEFAULT_STEPS = 120
"""A method's step budget, in forget steps, unless it declares its own (:attr:`Method.steps`)."""

DEFAULT_CHECKS = 20
"""How many stop checks a run makes over its planned steps, unless the method declares otherwise
(:attr:`Method.checks`)."""


@dataclass(frozen=True)
class Method:
    """One objective and what it needs.

    Attributes:
        name: the name used on the command line and in configs.
        loss: the objective, ``(LossInputs, LossParams) -> LossOutput``.
        needs: what the loop must compute for it (at most: see ``needs_given``).
        summary: one line for ``--help`` and reports.
        paper: arXiv id of the paper that defines it, or None.
        weights: the loss weights the objective reads (its file's ``WEIGHTS``), each with its default, help and
            range: the one place a weight is defined (:class:`~obliviate.losses.common.Weight`).
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
        steps: the step budget in forget steps when neither ``--epochs`` nor ``--max_steps`` is given: a maximum,
            which the stop rule (on by default where PII values are known) usually ends sooner. Under
            ``--schedule interleaved`` each forget step brings its retain steps along
            (:func:`obliviate.train.resolve.resolve_budget`).
        checks: how many stop checks an unset ``--stop_check_steps`` spreads over the planned steps, each at a whole
            cycle (:func:`obliviate.train.resolve.resolve_stop_check`).
        passes: with neither ``--epochs`` nor ``--max_steps``, the budget is at least this many passes over the
            forget set (0: ``steps`` alone). ``steps`` is a number, and a large forget set needs more forget steps
            than a small one before the stop rule can end the run; the checks stay where ``steps`` puts them, so a
            longer budget only lets the same run go on (``docs/METHODS.md``, *Length*).
    """

    name: str
    loss: Callable[[LossInputs, LossParams], LossOutput]
    needs: Needs
    summary: str
    paper: str | None
    weights: Mapping[str, Weight] = field(default_factory=dict)
    token_mean: bool = False
    relabels: bool = False
    preset: Mapping[str, object] = field(default_factory=dict)
    means: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    steps: int = DEFAULT_STEPS
    checks: int = DEFAULT_CHECKS
    passes: int = 0
    needs_given: Callable[[LossParams], Needs] | None = None

    def needs_for(self, params: LossParams) -> Needs:
        """What the loop must compute for a run with ``params``: :attr:`needs`, narrowed by ``needs_given`` where
        a weight turns a part off (contrast with ``fixed = 0`` reads no reference, so none is built)."""
        return self.needs if self.needs_given is None else self.needs_given(params)

    @property
    def piece_units(self) -> Mapping[str, tuple[str, ...]]:
        """``means``, with ``token_mean`` read as ``{"forget": ("tokens",)}``: the ``(split, units)`` a length piece
        is weighted by; empty when the loss never runs as pieces."""
        return {"forget": ("tokens",)} if self.token_mean else self.means

    def params(self, given: Mapping[str, float | None] | None = None) -> LossParams:
        """The :class:`LossParams` for a run: each weight's declared default, with ``given`` values on top (None
        in ``given`` means unset).

        Raises:
            ConfigError: ``given`` names a weight this method does not read, or a value out of its range.
        """
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(set(given) - set(self.weights))
        if unknown:
            has = f"its weights: {', '.join(self.weights)}" if self.weights else "it has no weights"
            raise ConfigError(f"{', '.join('--' + u for u in unknown)} is not a weight of {self.name} ({has})")
        checked = {name: self.weights[name].check(name, value) for name, value in given.items()}
        return LossParams(**{**{name: w.default for name, w in self.weights.items()}, **checked})

    def scale_retain(self, params: LossParams, factor: float) -> LossParams:
        """``params`` with every retain-term weight times ``factor`` (the retain guard's dual step)."""
        return params.replace(**{name: getattr(params, name) * factor for name, w in self.weights.items() if w.retain})

    def forget_only(self, params: LossParams) -> LossParams:
        """``params`` with every retain-term weight at 0: the forget steps of ``--schedule interleaved``."""
        return params.replace(**{name: 0.0 for name, w in self.weights.items() if w.retain})


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
        weights=ga.WEIGHTS,
    ),
    "ga_kl": Method(
        "ga_kl",
        ga_kl.loss,
        ga_kl.NEEDS,
        "gradient ascent on F plus KL(ref || model) on the retain set's answer tokens",
        "2401.06121",
        preset={"stop_forget_nll": 8.0},
        means=TOKEN_MEANS,
        weights=ga_kl.WEIGHTS,
    ),
    "ga_gd": Method(
        "ga_gd",
        ga_gd.loss,
        ga_gd.NEEDS,
        "gradient difference: -gamma*NLL(F) + alpha*NLL(R)",
        "2401.06121",
        preset={"stop_forget_nll": 8.0},
        means=TOKEN_MEANS,
        weights=ga_gd.WEIGHTS,
    ),
    "npo": Method(
        "npo",
        npo.loss,
        npo.NEEDS,
        "negative preference optimisation against the frozen reference, plus alpha*NLL(R)",
        "2404.05868",
        means={"forget": ("sequences", "tokens"), "retain": ("tokens",)},
        weights=npo.WEIGHTS,
    ),
    "simnpo": Method(
        "simnpo",
        simnpo.loss,
        simnpo.NEEDS,
        "reference-free, length-normalised NPO with margin delta, plus alpha*NLL(R)",
        "2410.07163",
        means={"forget": ("sequences", "tokens"), "retain": ("tokens",)},
        weights=simnpo.WEIGHTS,
    ),
    "rmu": Method(
        "rmu",
        rmu.loss,
        rmu.NEEDS,
        "steer forget-set hidden states at one layer to c*u, keep retain hidden states at the reference's",
        "2403.03218",
        means={"forget": ("positions", "tokens"), "retain": ("positions", "tokens")},
        weights=rmu.WEIGHTS,
    ),
    "relabel": Method(
        "relabel",
        relabel.loss,
        relabel.NEEDS,
        "descend on forget records relabelled with what the model says about a stranger, plus alpha*NLL(R)",
        "2310.02238",
        relabels=True,
        means=TOKEN_MEANS,
        weights=relabel.WEIGHTS,
    ),
    "contrast": Method(
        "contrast",
        contrast.loss,
        contrast.NEEDS,
        "hinge until each true PII value is no more likely than a fresh fake of its format, plus alpha*NLL(R)",
        "1802.08232",
        means={"forget": ("pairs",), "retain": ("tokens",)},
        weights=contrast.WEIGHTS,
        preset={
            "trainable_modules": "mlp",
            "retain_sampling": "matched",
            "schedule": "interleaved",
            "retain_steps": 15,
            "field_stop": True,
            "lr_probe_settle": 3,
        },
        needs_given=contrast.needs,
        steps=2 * DEFAULT_STEPS,  # docs/METHODS.md, "Length": the stop rule, not the budget, ends LUME Task2's run
        checks=2 * DEFAULT_CHECKS,  # the same interval as 120 steps with 20 checks: every 6 cycles
        passes=10,  # docs/METHODS.md, "Length": LUME Task2's 47 forget steps a pass need more than 240
    ),
}

FINETUNE = Method(
    "finetune",
    finetune.loss,
    finetune.NEEDS,
    "plain NLL on the batch (target and oracle models)",
    None,
    token_mean=True,
    weights=finetune.WEIGHTS,
)


def weight_options(methods: Mapping[str, Method] | None = None) -> dict[str, tuple[Weight, str]]:
    """Every loss weight of the registry, once: its first declaration (for type and range) and a help line that
    gives each meaning and every method's default, e.g. ``--alpha``: ``weight of the retain term (ga_gd: 4, …)``."""
    methods = LOSSES if methods is None else methods
    found: dict[str, list[tuple[str, Weight]]] = {}
    for method in methods.values():
        for name, weight in method.weights.items():
            found.setdefault(name, []).append((method.name, weight))
    options = {}
    for name, declared in found.items():
        meanings = list(dict.fromkeys(weight.help for _, weight in declared))
        defaults = ", ".join(
            f"{method}: {'per run' if w.default is None else f'{w.default:g}'}" for method, w in declared
        )
        options[name] = (declared[0][1], f"{'; '.join(meanings)} (default per method, {defaults})")
    return options


def get_method(name: str) -> Method:
    """The registered unlearning method called ``name``.

    Raises:
        ConfigError: no such method; the message lists the valid names.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown unlearning method {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


__all__ = ["FINETUNE", "LOSSES", "Method", "get_method", "weight_options"]
