"""A stop rule that needs no oracle: stop once the forget set's PII is as unexposed as a stranger's.

Every ``every`` optimizer steps the loop asks :class:`ExposureStopRule`. The check is two forward passes, no
generation: the exposure (``docs/METRICS.md``) of every forget PII value against fixed fakes, and the answer NLL
of a fixed retain sample. It stops when

- the forget values' mean exposure has come down into the never-seen band: at most the reference mean plus
  ``band`` standard errors of the difference of the two means (``sqrt(se_ref² + se_forget²)``: a one-sided
  two-sample z test, which cannot tell the forget people from never-seen ones at about 2 standard errors), and the
  share of forget values ranked first among their fakes (the values a greedy answer would most likely reproduce)
  is inside the same kind of band around the reference's share. The mean alone is not enough: a third of the
  values still ranked first and the rest pushed below chance average out inside the band (measured on LUME Task2,
  where the run stopped with a leak rate of 0.36). The reference is the holdout people's exposure under the
  starting model when a holdout set is given (people it never saw), else the chance level of a uniform rank among
  K + 1 (a share of 1 / (K + 1) ranked first); or
- the retain NLL has risen more than ``retain_bound`` nats above its starting value (a PDU-style constraint,
  arXiv:2506.05314): unlearning must not buy forgetting with other people's facts.

Checking in steps, not epochs, keeps one rule for a 5-step and a 94-step epoch. Overshooting is failing too (an
attacker also sees answers made far less likely than a stranger's): stopping at the first check inside the band,
coming from above, is what keeps the run from going past it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from obliviate.data.fakes import CandidateSampler
from obliviate.data.records import PersonPII, Record
from obliviate.evaluate.exposure import chance_exposure, measure_exposure


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
    """

    forget: Sequence[Record]
    people: Sequence[PersonPII]
    retain: Sequence[Record]
    holdout: Sequence[Record] = ()
    every: int = 5
    k: int = 50
    band: float = 2.0
    retain_bound: float = 0.1
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    _reference: tuple[float, float] | None = None
    _reference_top: tuple[float, int] = (0.0, 0)  # the share of reference values ranked first, and their count
    _retain_start: float | None = None

    def __post_init__(self) -> None:
        self.sampler = CandidateSampler(self.people, seed=self.seed)

    def start(self, model, tokenizer) -> None:
        """The reference band and the retain NLL, measured on the starting model."""
        values = self._exposures(model, tokenizer, self.holdout, "holdout") if self.holdout else []
        if len(values) >= 2:
            self._reference = (float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values))))
            self._reference_top = (self._top_share(values), len(values))
        else:  # a uniform rank among K + 1 has a standard deviation of about log2(e) bits per value
            count = max(1, len(self._exposures(model, tokenizer, self.forget, "forget", dry=True)))
            self._reference = (chance_exposure(self.k), math.log2(math.e) / math.sqrt(count))
            self._reference_top = (1.0 / (self.k + 1), count)
        self._retain_start = retain_nll(model, tokenizer, self.retain)

    def describe(self) -> dict[str, float]:
        """What :meth:`start` measured: the never-seen band's mean and standard error, and the retain NLL."""
        mean, se = self._reference if self._reference is not None else (math.nan, math.nan)
        return {
            "reference_exposure": mean,
            "reference_se": se,
            "reference_top_share": self._reference_top[0],
            "band": self.band,
            "retain_nll": self._retain_start,
        }

    def _top_share(self, values: Sequence[float]) -> float:
        """The share of values ranked first among their K fakes (exposure log2(K + 1), the most a value can have)."""
        top = math.log2(self.k + 1) - 1e-9
        return float(np.mean([v >= top for v in values])) if len(values) else 0.0

    def _top_threshold(self, forget_share: float, forget_count: int) -> float:
        """The highest forget share ranked first that the band admits: the reference share plus ``band`` standard
        errors of the difference of two proportions."""
        share, count = self._reference_top
        variance = share * (1 - share) / max(count, 1) + forget_share * (1 - forget_share) / max(forget_count, 1)
        return share + self.band * math.sqrt(variance)

    def __call__(self, model, tokenizer, step: int) -> str | None:
        """The reason to stop at ``step``, or None to go on."""
        if self._reference is None or step % self.every:
            return None
        values = self._exposures(model, tokenizer, self.forget, "forget") or [math.nan]
        exposure = float(np.mean(values))
        forget_se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else 0.0
        retain = retain_nll(model, tokenizer, self.retain)
        mean, reference_se = self._reference
        se = math.sqrt(reference_se**2 + forget_se**2)  # two-sample: both means are estimates
        threshold = mean + self.band * se
        top = self._top_share(values)
        top_threshold = self._top_threshold(top, len(values))
        self.history.append(
            {
                "step": step,
                "forget_exposure": exposure,
                "forget_se": forget_se,
                "threshold": threshold,
                "forget_top_share": top,
                "top_threshold": top_threshold,
                "retain_nll": retain,
            }
        )
        if retain - self._retain_start > self.retain_bound:
            return (
                f"retain NLL {retain:.3f} rose more than {self.retain_bound} above its start "
                f"({self._retain_start:.3f}) at step {step}"
            )
        if exposure <= threshold and top <= top_threshold:
            return (
                f"forget exposure {exposure:.2f} bits is inside the never-seen band "
                f"(≤ {mean:.2f} + {self.band}·{se:.2f}), {top:.2f} of the values ranked first "
                f"(≤ {top_threshold:.2f}) at step {step}"
            )
        return None

    def _exposures(self, model, tokenizer, records, split: str, dry: bool = False) -> list[float]:
        if dry:
            from obliviate.evaluate.exposure import exposure_targets

            return [0.0] * len(exposure_targets(records, self.people, split, self.sampler, self.k, ("question",)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                report = measure_exposure(
                    model, tokenizer, records, self.people, split, self.sampler, k=self.k, attacks=("question",)
                )
        finally:
            model.train(was_training)
        return [pair["exposure"] for pair in report.pairs] if report is not None else []


@torch.no_grad()
def retain_nll(model, tokenizer, records: Sequence[Record], max_length: int = 512, batch_size: int = 32) -> float:
    """Mean answer-token NLL of ``records`` (token-weighted), in eval mode: what the retain bound watches."""
    from obliviate.data.batching import collate, encode_record
    from obliviate.losses.common import token_logprobs

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0.0
    try:
        for start in range(0, len(records), batch_size):
            batch = collate(
                [encode_record(tokenizer, r, max_length) for r in records[start : start + batch_size]],
                tokenizer.pad_token_id,
            ).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logp, mask = token_logprobs(logits, batch.labels)
            total, count = total - float(logp.sum()), count + float(mask.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1.0)


RETAIN_SAMPLE = 64
"""Retain rows whose NLL the stop rule watches (a seeded sample that keeps people whole)."""

EXPOSURE_SAMPLE = 240
"""Forget (and holdout) rows whose people's PII values a check ranks: a seeded sample that keeps people whole (40
synthetic people, about 200 values). LUME Task2's forget set alone holds 1,250 values; ranking each among 51
continuations at every check would cost more than the training it checks."""


def stop_rule_for(config) -> ExposureStopRule:
    """The rule behind ``obliviate unlearn --stop_check_steps N`` (an :class:`~obliviate.config.UnlearnConfig`)."""
    from obliviate.data.load import load_split
    from obliviate.evaluate.data import sample_records
    from obliviate.train.relabel import known_people

    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain") if config.retain_dir else []
    holdout = load_split(config.holdout_dir, split="holdout") if config.holdout_dir else []
    people = known_people(config.forget_dir, [*forget, *retain, *holdout])
    return ExposureStopRule(
        forget=sample_records(forget, EXPOSURE_SAMPLE, config.seed),
        people=people,
        retain=sample_records(retain, RETAIN_SAMPLE, config.seed) if retain else [],
        holdout=sample_records(holdout, EXPOSURE_SAMPLE, config.seed) if holdout else [],
        every=config.stop_check_steps,
        band=config.stop_band,
        retain_bound=config.stop_retain_bound,
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
