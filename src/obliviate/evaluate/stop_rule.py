"""A stop rule that needs no oracle: stop once the forget set's PII is as unexposed as a stranger's.

Every ``every`` optimizer steps the loop asks :class:`ExposureStopRule`. The check is two forward passes, no
generation: the exposure (``docs/METRICS.md``) of every forget PII value against fixed fakes, and the answer NLL
of a fixed retain sample. It stops when

- for every PII field (birth date, SSN, phone, e-mail, address, ...), the forget values cannot be told from
  never-seen ones: their mean exposure is at most the field's reference mean plus ``band`` standard errors of the
  difference of the two means (``sqrt(se_ref² + se_forget²)``: a one-sided two-sample z test), and their share
  ranked first among the fakes (the values a greedy answer would most likely reproduce) is inside the same kind of
  band around the reference's share. The reference is the holdout people's exposure under the starting model when
  a holdout set is given (people it never saw), else the chance level of a uniform rank among K + 1; then a field
  whose values the data's own format gives from the name for most forget people (no fakes of that format exist,
  :meth:`~obliviate.data.fakes.CandidateSampler.guessable`) is not checked, since no model ranks it at chance.
  Per field, because fields differ in how much a stranger's value is guessable: LUME's e-mails are
  ``first_last@me.com``, so a never-seen person's e-mail ranks first among its fakes every time, while a never-seen
  SSN ranks at chance. Pooled, the guessable fields lift the reference, and a run stopped with a third of the forget
  values still ranked first (measured on LUME Task2: leak rate 0.36). A field whose never-seen values mostly rank
  first (at least :data:`SATURATED` of them; LUME's e-mails, all of them) does not decide the stop: a rank already at
  the top cannot show a memorised value. Each check logs its forget values' mean NLL beside the never-seen ones',
  and it counts as inside (for ``--field_stop``) only once that NLL is at least the holdout's minus ``band``
  standard errors of the difference. It is not part of the stop because contrast does not bring it there: on
  LUME Task2 the e-mails' NLL rose from 0.09 to about 2 (never-seen: 2.94) and stayed there, and with the NLL in the
  stop the run used its whole budget, its other fields drifting in and out of their bands (``docs/METHODS.md``).
  With ``pooled`` (``--stop_pooled``, off by default) the pooled mean of the fields that decide must be inside the
  pooled band as well: per field the band is wide where a field has few values, and a run can stop with each field
  near the top of its own (``docs/METHODS.md``, *A pooled stop*); or
- the retain NLL has risen more than ``retain_bound`` nats above its starting value (a PDU-style constraint,
  arXiv:2506.05314): unlearning must not buy forgetting with other people's facts; or
- (``words``, with a holdout) the forget answers' other words (the record's phrasing and the person's name:
  every answer token outside a PII value) have become as unlikely as the holdout people's, under the model being
  trained. Past that point the words overshoot: an attacker sees a forget record made less likely than a
  stranger's, and ROUGE-L falls below the oracle's. The values' exposure can still be above its band then; the
  reason says which fields are.

Checking in steps, not epochs, keeps one rule for a 5-step and a 94-step epoch. Overshooting is failing too (an
attacker also sees answers made far less likely than a stranger's): stopping at the first check inside the band,
coming from above, is what keeps the run from going past it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from obliviate.data.fakes import CandidateSampler
from obliviate.data.records import PersonPII, Record, owner_id
from obliviate.evaluate.exposure import chance_exposure, measure_exposure
from obliviate.evaluate.uncertainty import clustered_se

SATURATED = 0.5
"""The share of never-seen values ranked first from which a field's rank cannot show forgetting: it is read by its
true values' NLL and left out of the stop (see the module docstring)."""


def _standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values`` (0 for fewer than two)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else 0.0


def _top_share(values: Sequence[float], k: int) -> float:
    """The share of values ranked first among their K fakes (exposure log2(K + 1), the most a value can have)."""
    top = math.log2(k + 1) - 1e-9
    return float(np.mean([v >= top for v in values])) if len(values) else 0.0


@dataclass(frozen=True)
class Band:
    """One PII field's never-seen exposure: the mean and its standard error, and the share of values ranked
    first and how many values that share rests on."""

    mean: float
    se: float
    top_share: float
    count: int
    sd: float | None = None  # chance: each value's exact standard deviation under a uniform rank (the band exact)

    @classmethod
    def of(cls, values: Sequence[float], k: int) -> Band:
        return cls(float(np.mean(values)), _standard_error(values), _top_share(values, k), len(values))

    @classmethod
    def chance(cls, k: int, count: int) -> Band:
        """A uniform rank among K + 1: its mean and share ranked first are exact, with no sampling error of their
        own; ``se`` is the standard error ``count`` such values' mean would have (what a plot draws)."""
        logs = np.log2(np.arange(1, k + 2))
        sd = float(np.std(logs))  # exposure = log2(K + 1) - log2(rank): the spread of log2(rank), 1.27 bits at K = 50
        return cls(chance_exposure(k), sd / math.sqrt(max(count, 1)), 1.0 / (k + 1), count, sd)

    def below(self, values: Sequence[float], k: int, band: float) -> bool:
        """Forget ``values`` whose mean exposure is more than ``band`` standard errors *below* the never-seen mean
        (the one-sided test of :meth:`admits`, turned round): values made less likely than a stranger's, which a
        membership attack reads as well as values made likelier."""
        if not len(values):
            return False
        return float(np.mean(values)) < self.mean - band * self._mean_se(values) - 1e-9

    def _mean_se(self, values: Sequence[float]) -> float:
        """The standard error of the difference between ``values``' mean and the reference mean: against chance
        (exact) the uniform rank's own spread over ``len(values)``, against holdout people the two samples' errors
        combined."""
        if self.sd is not None:
            return self.sd / math.sqrt(len(values))
        return math.sqrt(self.se**2 + _standard_error(values) ** 2)

    def admits(self, values: Sequence[float], k: int, band: float) -> bool:
        """Forget ``values`` that cannot be told from never-seen ones at ``band`` standard errors (one-sided tests):
        their mean exposure, and their share ranked first. Against holdout people, two-sample tests (two means, two
        proportions); against chance, whose mean and share are exact, one-sample tests with the uniform rank's own
        spread (before the tenth session the chance band took log2(e) for that spread and added the forget sample's
        error to it as if chance were a second sample: about 1.5 times too wide)."""
        if not len(values):  # nothing measured: nothing outside
            return True
        mean, top, n = float(np.mean(values)), _top_share(values, k), len(values)
        if self.sd is not None:
            top_variance = self.top_share * (1 - self.top_share) / n
        else:
            top_variance = self.top_share * (1 - self.top_share) / max(self.count, 1) + top * (1 - top) / max(n, 1)
        if mean > self.mean + band * self._mean_se(values) + 1e-9:  # a tie is inside, round-off too
            return False
        return top <= self.top_share + band * math.sqrt(top_variance) + 1e-12


@dataclass(frozen=True)
class NllBand:
    """A field's never-seen true values' mean NLL and its standard error (fields whose rank cannot tell)."""

    mean: float
    se: float

    @classmethod
    def of(cls, values: Sequence[float]) -> NllBand:
        return cls(float(np.mean(values)), _standard_error(values))

    def admits(self, values: Sequence[float], band: float) -> bool:
        """Forget true-value NLLs no lower than never-seen ones at ``band`` standard errors of the difference of the
        means (one-sided)."""
        return float(np.mean(values)) >= self.mean - band * math.sqrt(self.se**2 + _standard_error(values) ** 2)


@dataclass
class ExposureStopRule:
    """Decides, from the model alone, when the forget set is forgotten enough (see the module docstring).

    Args:
        forget: the forget records; their people's PII values are checked.
        people: every known person (all splits), so that fakes are never a real value.
        retain: a retain sample whose answer NLL is watched.
        holdout: records of never-seen people (the reference band), or empty for the chance level.
        every: optimizer steps between checks.
        k: fakes per value.
        band: standard errors above the reference mean that still count as never seen.
        retain_bound: nats the retain NLL may rise above its start.
        retain_exact: share of its starting retain exact match (teacher-forced, :class:`RetainCheck`) the retain
            sample must keep; 0: not watched.
        retain_guard: share of its starting retain exact match the run defends by raising the retain term: below
            it a check doubles :attr:`retain_scale` (up to ``guard_max``), at or above it halves it back toward 1
            (a multiplicative dual step on the retain constraint, after PDU, arXiv:2506.05314); 0: off.
        guard_max: the largest :attr:`retain_scale`.
        words: also stop once the forget completions' words are as unlikely as the holdout's (needs a holdout with
            completion rows; otherwise left out, and :meth:`describe` says so).
        lower: the exposure stop also asks each deciding field's mean to be no more than ``band`` standard errors
            below its never-seen mean (:meth:`Band.below`); a field below it holds the stop back and, being in
            :attr:`inside`, is left alone by ``--field_stop`` (``--stop_lower``; ``docs/METHODS.md``, *A lower edge*).
        pooled: the exposure stop also asks the pooled forget mean of the fields that decide it to be inside the
            pooled band (:meth:`_overall_threshold`). Where every field is inside its own band and the pooled mean is
            not, the run goes on, and :attr:`inside` keeps only the fields whose mean is at most their never-seen
            mean, so that ``--field_stop`` pushes the others again.
        confirm: forget records of other people than ``forget``'s (empty: none). When ``forget``'s values say stop,
            their values must pass the same tests before the rule stops (:meth:`_confirm`); the fields they fail
            leave :attr:`inside` and the run goes on.
        reread: where the rule would stop, read the holdout's exposure under the current weights too, and hold both
            forget samples to those bands as well (:meth:`_reread`; ``--stop_reread``, off by default).
    """

    forget: Sequence[Record]
    people: Sequence[PersonPII]
    retain: Sequence[Record]
    holdout: Sequence[Record] = ()
    every: int = 5
    k: int = 50
    band: float = 2.0
    retain_bound: float = 0.1
    retain_exact: float = 0.0
    retain_guard: float = 0.0
    guard_max: float = 16.0
    words: bool = False
    pooled: bool = False
    retain_scale: float = 1.0  # the factor on the method's retain weights the training loop applies (retain_guard)
    seed: int = 0
    confirm: Sequence[Record] = ()
    reread: bool = False
    lower: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    inside: frozenset[str] = frozenset()  # the PII fields inside their never-seen band at the last check
    skipped: list[str] = field(default_factory=list)  # fields left unchecked: guessable, and no holdout to show it
    _reference: dict[str, Band] | None = None  # per PII field: the never-seen band
    _saturated: dict[str, NllBand] = field(default_factory=dict)  # ranked first by strangers too: their values' NLL
    _planned: dict[str, int] = field(default_factory=dict)  # per PII field: the forget values each check ranks
    # per PII field: the never-seen people's mean NLL(true value) - mean NLL(its fakes) under the starting model
    holdout_gaps: dict[str, float] = field(default_factory=dict)
    _holdout: list[tuple[str, str, float]] = field(default_factory=list)  # (field, person, exposure) at the start
    _retain_start: RetainCheck | None = None
    _words: dict[str, list[Record]] | None = None  # forget and holdout completion rows, PII spans marked

    def __post_init__(self) -> None:
        self.sampler = CandidateSampler(self.people, seed=self.seed)

    def _outside(self, band: Band, values: Sequence[float]) -> bool:
        """Whether forget ``values`` are outside ``band``: above it, or, with ``lower``, below it (the second sample
        and the re-read; the check itself tells the two apart)."""
        return not band.admits(values, self.k, self.band) or (self.lower and band.below(values, self.k, self.band))

    def start(self, model, tokenizer) -> None:
        """The reference band of every PII field and the retain NLL, measured on the starting model."""
        pairs = self._exposures(model, tokenizer, self.holdout, "holdout") if self.holdout else []
        self._holdout = [(str(p["field"]), str(p["person_id"]), float(p["exposure"])) for p in pairs]
        gaps: dict[str, list[float]] = {}
        for pair in pairs:
            if pair.get("nll_gap") is not None and math.isfinite(float(pair["nll_gap"])):
                gaps.setdefault(str(pair["field"]), []).append(float(pair["nll_gap"]))
        self.holdout_gaps = {name: float(np.mean(values)) for name, values in gaps.items()}
        planned = self._exposures(model, tokenizer, self.forget, "forget", dry=True)
        self._reference, self.skipped, self._saturated = {}, [], {}
        self._planned = {name: sum(p["field"] == name for p in planned) for name in {p["field"] for p in planned}}
        for name in sorted({p["field"] for p in planned}):
            values = [p["exposure"] for p in pairs if p["field"] == name]
            # never-seen values as many as the field's forget values: the band a test of that field needs
            chance = Band.chance(self.k, self._planned[name])
            if len(values) >= 2:
                self._reference[name] = Band.of(values, self.k)
                if self._reference[name].top_share >= SATURATED:  # the rank cannot tell: read the values' NLL
                    self._saturated[name] = NllBand.of([p["nll"] for p in pairs if p["field"] == name])
            elif self._mostly_guessable(name):  # no never-seen people to show how guessable it is: leave it out
                self.skipped.append(name)
            else:
                self._reference[name] = chance
        self._retain_start = retain_check(model, tokenizer, self.retain)
        self._words = self._word_rows() if self.words and self.holdout else None

    @property
    def saturated_fields(self) -> frozenset[str]:
        """The fields whose never-seen values mostly rank first among their fakes: they do not decide the stop."""
        return frozenset(self._saturated)

    def describe(self) -> dict[str, float]:
        """What :meth:`start` measured: the never-seen band (overall mean and standard error, and per field), and
        the retain NLL."""
        bands = self._reference or {}
        pooled_mean, pooled_se = self._pooled_reference(self._planned)
        out = {
            "skipped_fields": len(self.skipped),
            "reference_exposure": pooled_mean,
            "reference_se": pooled_se,
            "band": self.band,
            "retain_nll": self._retain_start.nll if self._retain_start else math.nan,
            "retain_exact": self._retain_start.exact if self._retain_start else math.nan,
            "words_checked": float(self._words is not None),
            "saturated_fields": len(self._saturated),
            "confirm_people": len({owner_id(record) for record in self.confirm}),
        }
        for name, band in bands.items():
            out[f"{name}/reference_exposure"] = band.mean
            out[f"{name}/reference_top_share"] = band.top_share
        for name, band in self._saturated.items():
            out[f"{name}/reference_nll"] = band.mean
        return out

    def __call__(self, model, tokenizer, step: int, due: bool | None = None) -> str | None:
        """The reason to stop at ``step``, or None to go on. It checks every :attr:`every` steps, or where ``due``
        says (the training loop's choice when its cycles differ in length)."""
        if self._reference is None or not (step % self.every == 0 if due is None else due):
            return None
        pairs = self._exposures(model, tokenizer, self.forget, "forget")
        retain = retain_check(model, tokenizer, self.retain)
        outside, under, saturated_inside = [], [], set()
        check: dict[str, float] = {"step": step, "retain_nll": retain.nll, "retain_exact": retain.exact}
        if self.retain_guard:
            below = retain.exact < self.retain_guard * self._retain_start.exact
            scale = self.retain_scale * 2 if below else self.retain_scale / 2
            self.retain_scale = min(max(scale, 1.0), self.guard_max)
            check["retain_scale"] = self.retain_scale
        for name, band in self._reference.items():
            values = [p["exposure"] for p in pairs if p["field"] == name]
            if not values:
                continue
            mean, top = float(np.mean(values)), _top_share(values, self.k)
            check[f"{name}/forget_exposure"], check[f"{name}/forget_top_share"] = mean, top
            if name in self._saturated:  # not part of the stop; inside for --field_stop once its NLL is a stranger's
                nll = [p["nll"] for p in pairs if p["field"] == name]
                check[f"{name}/forget_nll"] = float(np.mean(nll))
                if self._saturated[name].admits(nll, self.band):
                    saturated_inside.add(name)
            elif not band.admits(values, self.k, self.band):
                outside.append(name)
            elif self.lower and band.below(values, self.k, self.band):
                under.append(name)
        words = None
        if self._words is not None:
            words = {split: words_nll(model, tokenizer, rows) for split, rows in self._words.items()}
            check["forget_words_nll"], check["holdout_words_nll"] = words["forget"], words["holdout"]
        checked = self._deciding
        pooled = [p["exposure"] for p in pairs if p["field"] in checked]
        owners = [str(p["person_id"]) for p in pairs if p["field"] in checked]
        check_counts = Counter(p["field"] for p in pairs)
        check["forget_exposure"] = float(np.mean(pooled)) if pooled else math.nan
        check["threshold"] = self._overall_threshold(pooled, {name: check_counts[name] for name in checked}, owners)
        check["fields_outside"] = len(outside)
        if self.lower:
            check["fields_below"] = len(under)
        self.inside = frozenset(
            name for name in checked if name not in outside and f"{name}/forget_exposure" in check
        ) | frozenset(saturated_inside)
        # a pooled mean or band that cannot be read (NaN) counts as above: the option only ever makes the stop stricter
        pooled_above = self.pooled and bool(pooled) and not check["forget_exposure"] <= check["threshold"]
        if self.pooled:
            check["pooled_outside"] = float(pooled_above)
        if pooled_above and not outside:  # every field inside its own band, the pooled mean not: push those above
            self.inside = frozenset(
                name
                for name in self.inside
                if name in saturated_inside or check[f"{name}/forget_exposure"] <= self._reference[name].mean
            )
        self.history.append(check)
        start = self._retain_start
        if retain.nll - start.nll > self.retain_bound:
            return (
                f"retain NLL {retain.nll:.3f} rose more than {self.retain_bound} above its start "
                f"({start.nll:.3f}) at step {step}"
            )
        if self.retain_exact and retain.exact < self.retain_exact * start.exact:
            return (
                f"retain exact match {retain.exact:.3f} fell below {self.retain_exact:g} of its start "
                f"({start.exact:.3f}) at step {step}"
            )
        in_band = not outside and bool(checked) and not pooled_above and not under
        unconfirmed, second = self._confirm(model, tokenizer, check) if in_band else ([], [])
        held_by = "on the second sample of forget people"
        if in_band and not unconfirmed and self.reread and self.holdout:
            unconfirmed = self._reread(model, tokenizer, check, (pairs, second))
            held_by = "against the holdout's band read under the current weights"
        if unconfirmed:  # the second sample disagrees: push its fields again (--field_stop) and go on
            self.inside = self.inside - frozenset(unconfirmed)
        elif in_band:
            unchecked = f"; not checked, guessable from the name: {', '.join(self.skipped)}" if self.skipped else ""
            saturated = "".join(
                f"; not checked, ranked first for never-seen people too: {name} (its values' NLL "
                f"{check[f'{name}/forget_nll']:.2f}, never-seen {band.mean:.2f})"
                for name, band in self._saturated.items()
                if f"{name}/forget_nll" in check
            )
            lower_text = f" and ≥ reference − {self.band}" if self.lower else ""
            pooled_text = (
                f", and so is their pooled mean ({check['forget_exposure']:.3f} ≤ {check['threshold']:.3f})"
                if self.pooled
                else ""
            )
            confirmed = (
                f", on {int(check['confirm_people'])} other forget people too (pooled exposure "
                f"{check['confirm_exposure']:.3f})"
                if check.get("confirm_people", 0) > 0
                else ""
            ) + (
                ", and inside the holdout's band read under the current weights"
                if "reread_fields_outside" in check
                else ""
            )
            return (
                f"forget exposure of every PII field ({', '.join(checked)}) is inside its never-seen band "
                f"(mean ≤ reference + {self.band} standard errors{lower_text}, share ranked first likewise)"
                f"{pooled_text}"
                f"{confirmed} at step {step}{saturated}{unchecked}"
            )
        if words is not None and words["forget"] >= words["holdout"]:
            return (
                f"the forget answers' words (outside PII values) are as unlikely as the holdout people's (NLL "
                f"{words['forget']:.3f} ≥ {words['holdout']:.3f} nats per token) at step {step}; fields still above "
                f"their never-seen band: {', '.join(outside) or 'none'}"
                + (f"; below it: {', '.join(under)}" if under else "")
                + (f" ({held_by}: {', '.join(unconfirmed)})" if unconfirmed else "")
                + (
                    f"; the pooled mean ({check['forget_exposure']:.3f}) is above its band ({check['threshold']:.3f})"
                    if pooled_above
                    else ""
                )
            )
        return None

    @property
    def _deciding(self) -> list[str]:
        """The fields whose exposure decides the stop: every field read, less those ranked first for never-seen
        people too (:attr:`_saturated`)."""
        return [name for name in self._reference or {} if name not in self._saturated]

    @property
    def tracked(self) -> frozenset[str]:
        """The PII fields the rule reads (after :meth:`start`): those it checks and those it leaves to the name."""
        return frozenset(self._reference or ())

    def _confirm(self, model, tokenizer, check: dict[str, float]) -> tuple[list[str], list[dict]]:
        """The fields whose values on the :attr:`confirm` people fail the tests the checked sample just passed
        (each field's band; with :attr:`pooled`, the pooled band too, which then fails the fields above their
        never-seen mean), and the values of the fields read; both empty where there are no such people. Writes
        their means into ``check``.

        Why: the check ranks a sample of the forget people (:data:`EXPOSURE_SAMPLE` rows) and the rule stops at the
        first check whose sample mean crosses into the band. Of the noisy means a run passes through, the first
        inside is more often one that reads low than one that reads true, so another sample of the same forget set
        read at that step sits above it: on LUME Task2 (contrast, seed 1) the rule stopped with its pooled mean at
        1.918 against a threshold of 1.948, the next 40 forget people read 2.311, and the evaluation's 40 read
        z = 3.55 (``docs/METHODS.md``, *A second sample*). The second sample's first reading played no part in
        choosing the step; once it has held a stop back it is read again at later checks, and the run stops at the
        first where both read inside, so its own reading is then chosen too: two samples lessen the pull, they do
        not remove it."""
        if not self.confirm:
            return [], []
        pairs = self._exposures(model, tokenizer, self.confirm, "forget")
        outside, means = [], {}
        for name in self._deciding:
            values = [p["exposure"] for p in pairs if p["field"] == name]
            if len(values) < 2:  # one value has no spread of its own: its test would be far stricter than the band's
                continue
            means[name] = check[f"{name}/confirm_exposure"] = float(np.mean(values))
            if self._outside(self._reference[name], values):
                outside.append(name)
        kept = [p for p in pairs if p["field"] in means]
        if not kept:  # nothing of theirs decides: no second reading to hold the stop to
            return [], []
        pooled = [p["exposure"] for p in kept]
        owners = [str(p["person_id"]) for p in kept]
        check["confirm_people"] = float(len(set(owners)))
        check["confirm_exposure"] = float(np.mean(pooled))
        check["confirm_threshold"] = self._overall_threshold(pooled, Counter(p["field"] for p in kept), owners)
        if self.pooled and not outside and not check["confirm_exposure"] <= check["confirm_threshold"]:
            outside = [name for name, mean in means.items() if mean > self._reference[name].mean]
        check["confirm_fields_outside"] = float(len(outside))
        return outside, kept

    def _reread(self, model, tokenizer, check: dict[str, float], samples: Sequence[list[dict]]) -> list[str]:
        """The deciding fields whose forget values (each of ``samples``: the checked sample's, and the second
        sample's as :meth:`_confirm` just read them) are outside the band of the holdout's exposure read under the
        current weights; writes that reference's per-field means into ``check``.

        Why: the rule's reference is the holdout under the starting weights, the evaluation's the holdout under the
        unlearned ones. Where unlearning lowers the never-seen people's exposure too, a run stops inside the first
        and outside the second: LUME Task2, contrast, seed 2 of the twenty-third session (``docs/METHODS.md``, *A
        second sample*): z = 3.28 by the evaluation, the holdout 1.842 under the unlearned weights against the
        target's 1.998."""
        now = self._exposures(model, tokenizer, self.holdout, "holdout")
        outside = []
        for name in self._deciding:
            values = [p["exposure"] for p in now if p["field"] == name]
            if len(values) < 2:  # no band of its own under these weights: the starting one stands
                continue
            band = Band.of(values, self.k)
            check[f"{name}/reference_now"] = band.mean
            for sample in samples:
                forget = [p["exposure"] for p in sample if p["field"] == name]
                if len(forget) >= 2 and self._outside(band, forget):
                    outside.append(name)
                    break
        check["reread_fields_outside"] = float(len(outside))
        return outside

    def _word_rows(self) -> dict[str, list[Record]] | None:
        """The completion rows of the forget and holdout samples with their PII spans marked, or None where either
        split has none (the words guard is then left out)."""
        from obliviate.data.pii import mark_pii_spans

        rows = {
            split: mark_pii_spans([r for r in records if r.kind == "completion"], self.people)[0]
            for split, records in (("forget", self.forget), ("holdout", self.holdout))
        }
        return rows if all(rows.values()) else None

    def _mostly_guessable(self, name: str) -> bool:
        """Without a holdout the reference is chance, which a value given by the name (an e-mail built from it)
        never reaches, seen or not: such a field, guessable for most forget people, is not checked."""
        ids = {record.id for record in self.forget}
        with_field = [p for p in self.people if name in p.fields and ids.intersection(p.records)]
        guessable = [self.sampler.guessable(person, name, self.k) for person in with_field]
        return bool(guessable) and sum(guessable) > len(guessable) / 2

    def _pooled_reference(self, counts: dict[str, int]) -> tuple[float, float]:
        """The never-seen mean and its standard error pooled over the fields that decide the stop (not saturated),
        each weighed by its number of forget values ``counts``, as the pooled forget mean weighs them; NaN where no
        field decides. The holdout fields' part of the error counts a person's values, one per field, as one draw
        (``docs/METRICS.md``, *Standard errors*: the CR1 error of the weighted mean, from each person's weighted
        deviations from the field means); a chance field's part is its exact spread, independent of the rest. With
        every person in one field only, each field's part is ``C / (C − 1) · Σ (x − m)² / n²`` over all C people,
        a little below the field's own ``s² / n`` where a field has few of them."""
        weights = {name: counts.get(name, 0) for name in self._deciding}
        total = sum(weights.values())
        if not total:
            return math.nan, math.nan
        bands = self._reference
        mean = sum(w * bands[name].mean for name, w in weights.items()) / total
        measured = {name for name in weights if bands[name].sd is None and weights[name]}
        variance = sum(  # chance: the exact spread of the mean of the field's ``w`` forget values
            (w / total) ** 2 * (bands[name].sd / math.sqrt(w)) ** 2
            for name, w in weights.items()
            if w and bands[name].sd is not None
        )
        rows = [(name, person, value) for name, person, value in self._holdout if name in measured]
        if rows:
            sizes = Counter(name for name, _, _ in rows)
            deviations: dict[str, float] = {}
            for name, person, value in rows:  # person j: Σ_f (w_f / total) (x_jf − mean_f) / n_f
                share = weights[name] / total / sizes[name]
                deviations[person] = deviations.get(person, 0.0) + share * (value - bands[name].mean)
            people = len(deviations)
            if people >= 2:
                variance += people / (people - 1) * sum(d * d for d in deviations.values())
            else:  # one never-seen person cannot show a spread: each field's own error, as independent ones
                variance += sum((weights[name] / total) ** 2 * bands[name].se ** 2 for name in measured)
        return mean, math.sqrt(variance)

    def _overall_threshold(
        self, values: Sequence[float], counts: dict[str, int], owners: Sequence[str] | None = None
    ) -> float:
        """The band of the fields that decide the stop, pooled, for the plot of exposure per check (the decision is
        per field): their forget ``values`` (of people ``owners``) against the never-seen mean weighed by the
        fields' ``counts`` of them, each side's error counting a person as one draw. Before the tenth session the
        plot's forget mean took every field (saturated ones too) and its threshold the plain mean of the field
        means, unlike quantities, with a reference error sqrt(F) too large; until the twenty-second, each value was
        its own draw. With :attr:`pooled` the decision reads it too."""
        mean, reference_se = self._pooled_reference(counts)
        if not values or not math.isfinite(mean):
            return math.nan
        exact = all(self._reference[name].sd is not None for name in counts)  # chance: one-sample, as admits tests
        forget_se = 0.0 if exact else (clustered_se(values, owners) or 0.0)
        return mean + self.band * math.sqrt(reference_se**2 + forget_se**2)

    def _exposures(self, model, tokenizer, records, split: str, dry: bool = False) -> list[dict]:
        if dry:
            from obliviate.evaluate.exposure import exposure_targets

            targets = exposure_targets(records, self.people, split, self.sampler, self.k, ("question",))
            return [{"field": t.field, "exposure": 0.0} for t in targets]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                report = measure_exposure(
                    model, tokenizer, records, self.people, split, self.sampler, k=self.k, attacks=("question",)
                )
        finally:
            model.train(was_training)
        return list(report.pairs) if report is not None else []


@dataclass(frozen=True)
class RetainCheck:
    """What a check measures on the retain sample: the mean answer-token NLL (token-weighted), and the share of rows
    whose every answer token, eos included, is the model's most likely next token. Under teacher forcing that share
    is exactly the share of rows greedy decoding reproduces word for word: the retain exact match, from one forward
    pass and no generation."""

    nll: float
    exact: float


@torch.no_grad()
def retain_check(
    model, tokenizer, records: Sequence[Record], max_length: int = 512, batch_size: int = 32
) -> RetainCheck:
    """:class:`RetainCheck` of ``records``, in eval mode."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.losses.common import answer_exact, token_logprobs

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, exact = 0.0, 0.0, 0
    try:
        for start in range(0, len(records), batch_size):
            batch = collate(
                [encode_record(tokenizer, r, max_length) for r in records[start : start + batch_size]],
                tokenizer.pad_token_id,
            ).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logp, mask = token_logprobs(logits, batch.labels)
            total, count = total - float(logp.sum()), count + float(mask.sum())
            exact += int(answer_exact(logits, batch.labels).sum())
    finally:
        model.train(was_training)
    return RetainCheck(total / max(count, 1.0), exact / max(len(records), 1))


@torch.no_grad()
def words_nll(model, tokenizer, records: Sequence[Record], max_length: int = 512, batch_size: int = 32) -> float:
    """Mean NLL per token (nats) of the answer tokens outside PII values, eos left out, of ``records`` whose PII
    spans are marked (:func:`~obliviate.data.pii.mark_pii_spans`), teacher-forced in eval mode."""
    from obliviate.data.batching import collate, encode_record

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(records), batch_size):
            encoded = [encode_record(tokenizer, r, max_length) for r in records[start : start + batch_size]]
            batch = collate(encoded, tokenizer.pad_token_id).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
            nll = -torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
            mask = torch.zeros_like(nll, dtype=torch.bool)
            for row, e in enumerate(encoded):
                scored = e.scored or (0,) * len(e.ids)
                words = [t - 1 for t in range(e.prompt_len, len(e.ids) - 1) if not scored[t]]  # eos left out
                mask[row, words] = True
            total, count = total + float(nll[mask].sum()), count + int(mask.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


RETAIN_SAMPLE = 64
"""Retain rows whose NLL the stop rule watches (a seeded sample that keeps people whole)."""

EXPOSURE_SAMPLE = 240
"""Forget (and holdout) rows whose people's PII values a check ranks: a seeded sample that keeps people whole (40
synthetic people, about 200 values). LUME Task2's forget set alone holds 1,250 values; ranking each among 51
continuations at every check would cost more than the training it checks."""


def forget_samples(forget: list[Record], size: int, seed: int) -> tuple[list[Record], list[Record]]:
    """The forget rows a check ranks (a seeded sample of about ``size`` rows, people whole) and the second sample
    :meth:`ExposureStopRule._confirm` holds the stop to: the next people of the same seeded order, up to as many
    rows again. The second is empty where the first holds the whole forget set, and where it would hold less than
    half as many rows as the first: a few people's values would hold the stop to a far stricter test."""
    from obliviate.evaluate.data import sample_records

    checked = sample_records(forget, size, seed)
    seen = {owner_id(record) for record in checked}
    confirm = [r for r in sample_records(forget, 2 * size, seed) if owner_id(r) not in seen]
    return checked, confirm if len(confirm) >= len(checked) // 2 else []


def stop_rule_for(config) -> ExposureStopRule:
    """The rule behind ``obliviate unlearn --stop_check_steps N`` (an :class:`~obliviate.config.UnlearnConfig`)."""
    from obliviate.data.load import load_split
    from obliviate.evaluate.data import sample_records
    from obliviate.train.relabel import known_people

    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain") if config.retain_dir else []
    holdout = load_split(config.holdout_dir, split="holdout") if config.holdout_dir else []
    people = known_people(config.forget_dir, {"forget": forget, "retain": retain, "holdout": holdout})
    checked, confirm = forget_samples(forget, EXPOSURE_SAMPLE, config.seed)
    return ExposureStopRule(
        forget=checked,
        confirm=confirm,
        people=people,
        retain=sample_records(retain, RETAIN_SAMPLE, config.seed) if retain else [],
        holdout=sample_records(holdout, EXPOSURE_SAMPLE, config.seed) if holdout else [],
        every=config.stop_check_steps,
        band=config.stop_band,
        retain_bound=config.stop_retain_bound,
        retain_exact=config.stop_retain_exact,
        retain_guard=config.retain_guard,
        guard_max=config.retain_guard_max,
        words=config.stop_words,
        pooled=config.stop_pooled,
        reread=config.stop_reread,
        lower=config.stop_lower,
        seed=config.seed,
    )


def read_stop_checks(metrics: Path) -> list[dict[str, float]]:
    """The stop rule's checks of one run (``metrics.jsonl`` lines with ``stop_check``), for the exposure plot."""
    if not metrics.is_file():
        return []
    lines = (json.loads(line) for line in metrics.read_text().splitlines() if '"stop_' in line)
    checks = []
    for line in lines:
        if "stop_check" in line:
            checks.append(line["stop_check"])
        elif "stop_reference" in line:
            checks.insert(0, {"step": 0, **line["stop_reference"]})
    return checks
