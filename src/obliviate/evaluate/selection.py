"""Which checkpoint a run keeps: the selection rules behind ``--select`` (``evaluate --checkpoints`` and the demo).

Each rule reads the epochs' summaries (:class:`~obliviate.evaluate.results.EpochEval`, epoch 0 the starting model)
and returns the choice with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from obliviate.errors import ConfigError
from obliviate.evaluate.results import EpochEval

SELECT_RULES = ("last", "task_aggregate", "holdout_gap")
RETAIN_FLOOR = 0.9
"""A candidate epoch must keep retain ROUGE-L recall at ≥ 90 % of epoch 0's."""


def select_best(epochs: Sequence[EpochEval], rule: str = "task_aggregate") -> dict[str, Any]:
    """The best epoch under ``rule``, among epochs that keep retain ROUGE-L ≥ 90 % of epoch 0.

    Rules:
        ``last``: the run's last checkpoint, where its stop rule (or step budget) ended it; no evaluation chooses,
            so nothing about the forget set's answers leaks into the choice. The retain floor does not apply.
        ``task_aggregate``: the highest SemEval task aggregate (the default of the issue and of the official score;
            it rewards over-forgetting, since forget regurgitation 0 beats any reference).
        ``holdout_gap``: the smallest gap to never-seen people, ``|forget − holdout|`` of ROUGE-L recall plus that of
            the leak rate: a forget person should look like a person the model never saw. Needs a holdout set, and
            also keeps retain exact match ≥ 90 % of epoch 0.
    """
    if rule not in SELECT_RULES:
        raise ConfigError(f"--select {rule!r}: expected one of {', '.join(SELECT_RULES)}")
    if rule == "last" and len(epochs) > 1:
        last = epochs[-1]
        return {"epoch": last.epoch, "path": last.path, "rule": rule, "reason": "the run's last checkpoint"}
    if rule == "last":
        return {"epoch": 0, "rule": rule, "reason": "the run wrote no checkpoint: the starting model"}
    start = epochs[0].summary
    floor = RETAIN_FLOOR * (start.get("retain/rougeL_recall") or 0.0)
    candidates = [e for e in epochs[1:] if (e.summary.get("retain/rougeL_recall") or 0.0) >= floor]
    kept = f"retain ROUGE-L >= {floor:.3f}"
    if rule == "holdout_gap" and start.get("retain/exact_match") is not None:
        # Forgetting a person must not cost other people's facts: retain knowledge keeps the same floor.
        em_floor = RETAIN_FLOOR * start["retain/exact_match"]
        candidates = [e for e in candidates if (e.summary.get("retain/exact_match") or 0.0) >= em_floor]
        kept += f" and retain EM >= {em_floor:.3f}"
    if not candidates:
        return {
            "epoch": 0,
            "rule": rule,
            "reason": f"no epoch kept {kept} ({RETAIN_FLOOR:.0%} of epoch 0): keeping the starting model",
        }
    if rule == "task_aggregate":
        best = max(candidates, key=lambda e: e.summary.get("all/task_aggregate") or 0.0)
        score = best.summary.get("all/task_aggregate")
        reason = f"highest task aggregate ({score:.3f}) with {kept}"
    else:
        if not any("holdout/rougeL_recall" in e.summary for e in candidates):
            raise ConfigError("--select holdout_gap needs a holdout set (--holdout_dir)")
        best = min(candidates, key=_holdout_gap)
        reason = f"smallest gap to holdout people ({_holdout_gap(best):.3f}) with {kept}"
    return {"epoch": best.epoch, "path": best.path, "rule": rule, "reason": reason}


def _holdout_gap(epoch: EpochEval) -> float:
    s = epoch.summary
    gap = abs(s.get("forget/rougeL_recall", 0.0) - s.get("holdout/rougeL_recall", 0.0))
    return gap + abs(s.get("forget/leak_rate", 0.0) - s.get("holdout/leak_rate", 0.0))
