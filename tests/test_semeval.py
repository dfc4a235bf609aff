"""The SemEval-2025 Task 4 aggregate, final score and MMLU file on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from obliviate.errors import DataError
from obliviate.evaluate.semeval import final_score, load_mmlu_metrics, task_aggregate


def _row(split: str, task: str, kind: str, score: float) -> dict[str, object]:
    return {"split": split, "task": task, "kind": kind, "score": score}


def test_aggregate_two_tasks_with_missing_term() -> None:
    """Terms (forget inverted): F/T1/regurg 1-0.3=0.7, F/T1/know 1-0.5=0.5, F/T2/regurg 1-0.8=0.2,
    F/T2/know 1-0=1.0, R/T1/regurg 0.9, R/T1/know 1.0, R/T2/regurg 0.6; R/T2/know has no rows.
    Harmonic mean of the 7 = 7 / (1/0.7 + 1/0.5 + 1/0.2 + 1 + 1/0.9 + 1 + 1/0.6).
    """
    rows = [
        _row("forget", "Task1", "completion", 0.2),
        _row("forget", "Task1", "completion", 0.4),
        _row("forget", "Task1", "qa", 0),
        _row("forget", "Task1", "qa", 1),
        _row("forget", "Task2", "completion", 0.8),
        SimpleNamespace(split="forget", task="Task2", kind="qa", score=0),  # objects work as well as dicts
        _row("retain", "Task1", "completion", 0.9),
        _row("retain", "Task1", "qa", 1),
        _row("retain", "Task2", "completion", 0.6),
        _row("holdout", "Task2", "completion", 0.1),  # not part of the aggregate
    ]
    result = task_aggregate(rows)
    assert result.terms == pytest.approx(
        {
            "forget/Task1/regurgitation": 0.7,
            "forget/Task1/knowledge": 0.5,
            "forget/Task2/regurgitation": 0.2,
            "forget/Task2/knowledge": 1.0,
            "retain/Task1/regurgitation": 0.9,
            "retain/Task1/knowledge": 1.0,
            "retain/Task2/regurgitation": 0.6,
        }
    )
    expected = 7 / (1 / 0.7 + 1 / 0.5 + 1 / 0.2 + 1 + 1 / 0.9 + 1 + 1 / 0.6)
    assert result.aggregate == pytest.approx(expected)
    notes = " | ".join(result.notes)
    assert "missing retain/Task2/knowledge" in notes
    assert "tasks present: Task1, Task2" in notes
    assert "ignored 1 rows" in notes


def test_aggregate_zero_term_gives_zero() -> None:
    # The forget QA is answered perfectly: 1 - 1 = 0 → aggregate 0 however good the rest is.
    rows = [_row("forget", "Task2", "qa", 1), _row("forget", "Task2", "completion", 0.0)]
    rows += [_row("retain", "Task2", "qa", 1), _row("retain", "Task2", "completion", 1.0)]
    result = task_aggregate(rows)
    assert result.terms["forget/Task2/knowledge"] == 0.0
    assert result.aggregate == 0.0


def test_aggregate_full_official_layout_has_no_missing_notes() -> None:
    rows = [
        _row(split, task, kind, 0.5)
        for split in ("forget", "retain")
        for task in ("Task1", "Task2", "Task3")
        for kind in ("completion", "qa")
    ]
    result = task_aggregate(rows)
    assert len(result.terms) == 12 and result.notes == []
    assert result.aggregate == pytest.approx(0.5)


def test_aggregate_refuses_bad_rows() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        task_aggregate([_row("forget", "Task1", "qa", 2.0)])
    with pytest.raises(DataError):
        task_aggregate([_row("holdout", "Task1", "qa", 1.0)])


def test_final_score() -> None:
    assert final_score(0.8, 0.6, 0.4) == pytest.approx(0.6)
    assert final_score(0.8, 0.6, None) is None


def test_load_mmlu_metrics(tmp_path: Path) -> None:
    good = tmp_path / "mmlu.json"
    good.write_text(json.dumps({"average_acc": 0.443, "other": 1}))
    assert load_mmlu_metrics(good) == pytest.approx(0.443)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not a readable JSON"),
        (json.dumps({"acc": 0.4}), "average_acc"),
        (json.dumps([0.4]), "average_acc"),
        (json.dumps({"average_acc": 1.5}), "in \\[0, 1\\]"),
        (json.dumps({"average_acc": "0.4"}), "in \\[0, 1\\]"),
        (json.dumps({"average_acc": True}), "in \\[0, 1\\]"),
    ],
)
def test_load_mmlu_metrics_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "mmlu.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_mmlu_metrics(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
