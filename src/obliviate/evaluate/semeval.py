"""The official SemEval-2025 Task 4 aggregate and final score (``docs/METRICS.md``, SemEval sections).

Per split (forget, retain) and per task, the mean regurgitation (ROUGE-L recall of completion rows) and the mean
knowledge (exact match of QA rows); forget terms are inverted (``1 - v``) so that every term is higher-is-better,
and the task aggregate is their harmonic mean, 0 if any term is 0. Higher is better for every number here.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.errors import DataError
from obliviate.evaluate.scores import harmonic_mean_or_zero

SEMEVAL_SPLITS = ("forget", "retain")
SEMEVAL_TASKS = ("Task1", "Task2", "Task3")
TERM_OF_KIND = {"completion": "regurgitation", "qa": "knowledge"}
"""Completion rows are scored by ROUGE-L recall (regurgitation), QA rows by exact match (knowledge)."""


@dataclass(frozen=True)
class SemEvalResult:
    """The task aggregate and the terms it was computed from.

    Attributes:
        aggregate: harmonic mean of ``terms`` (0 if any term is 0); higher is better.
        terms: ``"forget/Task2/regurgitation"`` → the mean score, already inverted for forget.
        notes: what differs from the official 12-term computation (missing tasks, splits or kinds).
    """

    aggregate: float
    terms: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _get(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def task_aggregate(rows: Iterable[Any]) -> SemEvalResult:
    """SemEval-2025 Task 4 task aggregate from per-example scores.

    Args:
        rows: dicts or objects with ``split`` ("forget" / "retain"), ``task``, ``kind`` ("completion" / "qa") and
            ``score`` (ROUGE-L recall for completion, exact match for QA), each in [0, 1]. Rows of other splits
            or kinds are ignored and noted.

    Raises:
        DataError: when no forget / retain completion or QA row is given.
    """
    scores: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    ignored = 0
    for row in rows:
        split, task, kind, score = (_get(row, key) for key in ("split", "task", "kind", "score"))
        if split not in SEMEVAL_SPLITS or kind not in TERM_OF_KIND:
            ignored += 1
            continue
        if not (isinstance(score, numbers.Real) and 0.0 <= score <= 1.0):
            raise ValueError(f"score of a {split}/{task}/{kind} row must be a number in [0, 1], got {score!r}")
        scores[(split, str(task), TERM_OF_KIND[kind])].append(float(score))
    if not scores:
        raise DataError("SemEval aggregate: no forget/retain rows of kind completion or qa to score")

    tasks = sorted({task for _, task, _ in scores})
    notes = []
    if ignored:
        notes.append(f"ignored {ignored} rows outside forget/retain completion/qa")
    if tuple(tasks) != SEMEVAL_TASKS:
        notes.append(f"tasks present: {', '.join(tasks)} (official: {', '.join(SEMEVAL_TASKS)})")
    terms: dict[str, float] = {}
    for split in SEMEVAL_SPLITS:
        for task in tasks:
            for term in TERM_OF_KIND.values():
                values = scores.get((split, task, term))
                if not values:
                    notes.append(f"missing {split}/{task}/{term}: no rows")
                    continue
                mean = math.fsum(values) / len(values)
                terms[f"{split}/{task}/{term}"] = 1.0 - mean if split == "forget" else mean
    return SemEvalResult(harmonic_mean_or_zero(list(terms.values())), terms, notes)


def final_score(task_aggregate: float, mia_score: float, mmlu_acc: float | None) -> float | None:
    """SemEval final score ``mean(task aggregate, MIA score, MMLU accuracy)``; None without MMLU. Higher is better."""
    if mmlu_acc is None:
        return None
    return (task_aggregate + mia_score + mmlu_acc) / 3.0


def load_mmlu_metrics(path: str | Path) -> float:
    """The MMLU accuracy from a ``{"average_acc": x}`` JSON file (the SemEval harness output).

    Raises:
        DataError: the file is missing, not JSON, has no ``average_acc``, or it is not a number in [0, 1].
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: MMLU metrics file not found (expected JSON with average_acc)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({type(error).__name__}); expected average_acc") from None
    if not isinstance(data, dict) or "average_acc" not in data:
        raise DataError(f"{path}: expected a JSON object with key average_acc, found {type(data).__name__} without")
    value = data["average_acc"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise DataError(f"{path}: average_acc must be a number in [0, 1], found {value!r}")
    return float(value)
