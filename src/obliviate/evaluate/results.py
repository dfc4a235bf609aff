"""The typed results of an evaluation: one :class:`Metric`, one model's :class:`EvalResult`, one epoch's
:class:`EpochEval`, one method's unlearning run (:class:`MethodRun`).

They flow one way: the suite builds an ``EvalResult``; the epoch hook turns it into an ``EpochEval``, which the
training loop collects in ``RunResult.epoch_results`` and the pipeline reads from there; the report serialises them.
``"split/metric"`` string keys (``"forget/rougeL_recall"``) appear only in the serialised form: ``summary()`` and
``results.json``, whose layout is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.evaluate.scores import METRICS, SPLITS, higher_is_better
from obliviate.train.forward_count import compute_tokens

METRIC_FIELDS = ("name", "split", "task", "value", "higher_is_better")
"""The fixed keys of a metric in ``results.json``; any other key is one of its ``extra`` figures."""


def direction_of(name: str, split: str) -> bool | None:
    """Whether a larger ``name`` on ``split`` is better (``split`` "all" or any other: as on forget); None when
    :data:`~obliviate.evaluate.scores.METRICS` does not know the metric."""
    if name not in METRICS:
        return None
    return higher_is_better(name, split if split in SPLITS else "forget")


@dataclass(frozen=True)
class Metric:
    """One aggregate: ``name`` on ``split`` (``"all"`` for split-free ones) over ``task`` rows.

    ``extra`` holds the figures that come with some metrics (``n`` rows, exposure's ``k`` and ``chance``, forget
    quality's ``statistic``).
    """

    name: str
    split: str
    value: float | None
    task: str = "all"
    higher_is_better: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, split: str, value: float | None, task: str = "all", **extra: Any) -> Metric:
        """A metric with its direction looked up in :data:`~obliviate.evaluate.scores.METRICS`."""
        return cls(name, split, value, task, direction_of(name, split), extra)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metric:
        extra = {k: v for k, v in data.items() if k not in METRIC_FIELDS}
        higher = data.get("higher_is_better")
        return cls(data["name"], data["split"], data["value"], data.get("task", "all"), higher, extra)

    @property
    def key(self) -> str:
        """``"split/name"``: the summary key."""
        return f"{self.split}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "task": self.task,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            **self.extra,
        }


@dataclass
class EvalResult:
    """One model's evaluation: aggregates (``metrics``) and per-example rows, plus the SemEval, leak and exposure
    breakdowns. Metrics given as ``results.json`` dicts are read into :class:`Metric`."""

    metrics: list[Metric]
    per_example: list[dict[str, Any]]
    semeval: dict[str, Any]
    leak: dict[str, dict[str, Any]]
    notes: list[str]
    forget_nll: list[float]
    mink_auc: float | None
    exposure: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaked: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict, repr=False)
    """Split → ``(person_id, field, attacks)`` of every leaked pair (:attr:`LeakReport.leaked_by`); kept in memory
    for ``--evidence``, not written to ``results.json``."""
    units: dict[str, Any] = field(default_factory=dict, repr=False)
    """``"split/metric"`` → the units behind that overall mean (:data:`~obliviate.evaluate.uncertainty.Units`: ids,
    people and per-unit numbers, never a value or a generation): what pairs two models' figures on the same rows."""

    def __post_init__(self) -> None:
        self.metrics = [m if isinstance(m, Metric) else Metric.from_json(m) for m in self.metrics]

    def value(self, name: str, split: str = "all", task: str = "all") -> float | None:
        return next((m.value for m in self.metrics if (m.name, m.split, m.task) == (name, split, task)), None)

    def summary(self) -> dict[str, float]:
        """``"split/metric"`` (overall task) → value: the flat view ``results.json`` and the tables read."""
        return {m.key: m.value for m in self.metrics if m.task == "all"}

    def stderrs(self) -> dict[str, float]:
        """``"split/metric"`` (overall task) → the standard error of its value, for the metrics that have one
        (:mod:`obliviate.evaluate.uncertainty`; ``docs/METRICS.md``, *Standard errors*)."""
        return {
            m.key: m.extra["stderr"] for m in self.metrics if m.task == "all" and m.extra.get("stderr") is not None
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": [m.to_json() for m in self.metrics],
            "summary": self.summary(),
            "stderr": self.stderrs(),
            "semeval": self.semeval,
            "leak": self.leak,
            "exposure": self.exposure,
            "notes": self.notes,
            "units": self.units,
        }


@dataclass
class EpochEval:
    """One evaluated epoch of a run (epoch 0: the model before unlearning).

    Attributes:
        epoch: the epoch.
        path: the checkpoint evaluated (``evaluate --checkpoints``) or the folder its results were written to (an
            unlearning run's ``eval/epoch-N``).
        summary: :meth:`EvalResult.summary`.
        result: the whole evaluation where it is still to be written; None once it is on disk.
        stderr: :meth:`EvalResult.stderrs` (empty for an evaluation written before they were measured).
        units: :attr:`EvalResult.units`; kept in memory and in the epoch's own ``results.json``, not in a run's
            list of epochs.
    """

    epoch: int
    path: str
    summary: dict[str, float]
    result: EvalResult | None = None
    stderr: dict[str, float] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, epoch: int, path: Any, result: EvalResult, keep: bool = False) -> EpochEval:
        return cls(epoch, str(path), result.summary(), result if keep else None, result.stderrs(), result.units)

    def to_json(self) -> dict[str, Any]:
        """``{"epoch", "path", "summary", "stderr"}``: an epoch's entry in ``results.json``."""
        return {"epoch": self.epoch, "path": self.path, "summary": self.summary, "stderr": self.stderr}


@dataclass
class MethodRun:
    """One method's unlearning run: every evaluated epoch (0: the target) and the one chosen."""

    method: str
    run_dir: Path
    epochs: list[EpochEval]
    best: dict[str, Any]  # select_best's choice: epoch, path, rule, reason
    tokens: int  # every token trained on: the run's steps and its range test's trials
    wall_seconds: float  # training and the per-epoch evaluations
    preset: dict[str, Any]
    lr: float | None
    steps: int
    stopped: str | None
    stop_checks: list[dict[str, float]]
    step_budget: int | None = None  # --max_steps of the run (None: its epochs alone set its length)
    lr_probe_tokens: int = 0  # the range test's share of ``tokens`` (0: the rate was given)
    forward_tokens: int = 0  # read by passes that trained nothing (the reference's, the stop rule's checks...)

    @property
    def compute(self) -> float:
        """``tokens`` plus a forward pass's share of ``forward_tokens``
        (:func:`~obliviate.train.forward_count.compute_tokens`)."""
        return compute_tokens(self.tokens, self.forward_tokens)

    @property
    def ended(self) -> str:
        return ended_by(self.stopped, self.steps, self.step_budget)

    @property
    def best_epoch(self) -> EpochEval:
        return next(e for e in self.epochs if e.epoch == self.best["epoch"])

    def to_json(self) -> dict[str, Any]:
        """The run's entry in the report's ``results.json``."""
        fields = ("method", "best", "preset", "lr", "steps", "step_budget", "stopped", "ended", "stop_checks")
        fields += ("tokens", "lr_probe_tokens", "forward_tokens", "compute", "wall_seconds")
        return {**{name: getattr(self, name) for name in fields}, "epochs": [e.to_json() for e in self.epochs]}


_ENDS = (
    ("never-seen band", "exposure in band"),
    ("retain NLL", "retain bound"),
    ("stop_forget_nll", "forget NLL bound"),
)


def ended_by(stopped: str | None, steps: int, step_budget: int | None) -> str:
    """What ended an unlearning run, in two or three words: its stop rule's reason; else its step budget where it
    spent it; else its epochs (they ran out first, or no budget was set)."""
    if stopped:
        return next((end for marker, end in _ENDS if marker in stopped), "stopped")
    return "step budget" if step_budget is not None and steps >= step_budget else "epochs"


@dataclass
class AttackResult:
    """One attack on a copy of the evaluated model (:mod:`obliviate.evaluate.attacks`), beside the unattacked numbers.

    Attributes:
        attack: ``relearn`` or ``quantize``.
        name: the setting, e.g. ``relearn forget_half k=10`` or ``quantize int4 g128``.
        params: what was done (source, steps, learning rate; bits, group size).
        before: the unattacked model's summary on the data the attacked model is probed on (``relearn
            forget_half``: the held-back half, evaluated separately; every other attack: the main evaluation).
        after: the attacked model's summary on the same data; None when the attack could not run (see ``note``).
        note: why it did not run, or what to know about it.
        details: records trained on and probed, how far the weights moved.
        leak: the attacked model's leak report per split (rates and counts, no values).
        leaked / leaked_before: ``(person_id, field, probes)`` leaked after / before the attack, per split; kept in
            memory for ``--evidence``, not written to ``results.json``.
    """

    attack: str
    name: str
    params: dict[str, Any]
    before: dict[str, float]
    after: dict[str, float] | None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    leak: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaked: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict, repr=False)
    leaked_before: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict, repr=False)

    @property
    def ran(self) -> bool:
        return self.after is not None

    def to_json(self) -> dict[str, Any]:
        """The attack's entry in ``results.json["attacks"]``."""
        fields = ("attack", "name", "params", "ran", "note", "details", "before", "after", "leak")
        return {name: getattr(self, name) for name in fields}
