"""Per-epoch evaluation: `unlearn --eval_every_epoch`, `evaluate --checkpoints`, best-checkpoint selection."""

from __future__ import annotations

import json

import pytest

from helpers import unlearn_argv
from obliviate.cli.main import main
from obliviate.errors import ConfigError
from obliviate.evaluate.results import EpochEval
from obliviate.evaluate.selection import select_best


def _epoch(n: int, forget: float, retain: float, agg: float, holdout: float = 0.2, leak: float = 0.0) -> EpochEval:
    summary = {
        "forget/rougeL_recall": forget,
        "retain/rougeL_recall": retain,
        "all/task_aggregate": agg,
        "holdout/rougeL_recall": holdout,
        "forget/leak_rate": leak,
        "holdout/leak_rate": 0.0,
    }
    return EpochEval(n, f"epoch-{n}", summary)


def test_select_best_keeps_retain_floor_and_applies_each_rule():
    epochs = [_epoch(0, 0.9, 0.9, 0.1), _epoch(1, 0.5, 0.85, 0.5), _epoch(2, 0.2, 0.82, 0.6), _epoch(3, 0.0, 0.5, 0.9)]
    # epoch 3 has the highest aggregate but lost retain ROUGE-L (0.5 < 0.9 * 0.9): not eligible
    assert select_best(epochs, "task_aggregate")["epoch"] == 2
    # gap to holdout people: |0.5-0.2| = 0.3 for epoch 1, |0.2-0.2| = 0 for epoch 2
    assert select_best(epochs, "holdout_gap")["epoch"] == 2
    epochs[2].summary["forget/leak_rate"] = 0.5  # epoch 2's gap is now 0 + |0.5 - 0| = 0.5 > 0.3
    assert select_best(epochs, "holdout_gap")["epoch"] == 1
    collapsed = [_epoch(0, 0.9, 0.9, 0.1), _epoch(1, 0.0, 0.1, 0.9)]
    assert select_best(collapsed)["epoch"] == 0
    with pytest.raises(ConfigError):
        select_best(epochs, "nonsense")


@pytest.mark.parametrize(
    ("retains", "rule", "expected"),
    [
        # retain ROUGE-L at epoch 0 is 1.0, so the floor is 0.9; it is inclusive
        ((1.0, 0.9, 0.95), "task_aggregate", 2),  # both eligible: epoch 2 has the higher aggregate
        ((1.0, 0.95, 0.9), "task_aggregate", 2),  # exactly at the floor is kept
        ((1.0, 0.95, 0.89), "task_aggregate", 1),  # just under the floor is dropped, however high its aggregate
        ((1.0, 0.89, 0.89), "task_aggregate", 0),  # nothing kept: the starting model
        ((1.0, 0.9, 0.95), "holdout_gap", 2),  # gaps: epoch 1 |0.6-0.2| = 0.4, epoch 2 |0.3-0.2| = 0.1
        ((1.0, 0.95, 0.89), "holdout_gap", 1),
        ((1.0, 0.89, 0.89), "holdout_gap", 0),
    ],
)
def test_select_best_picks_the_exact_epoch_at_the_retain_floor(retains, rule, expected):
    # epoch 0 has the best aggregate (0.95) and no gap at all, yet is never chosen while a later epoch is eligible
    epochs = [
        _epoch(0, 0.2, retains[0], 0.95),
        _epoch(1, 0.6, retains[1], 0.4),
        _epoch(2, 0.3, retains[2], 0.7),
    ]
    best = select_best(epochs, rule)
    assert best["epoch"] == expected
    assert "retain ROUGE-L >= 0.900" in best["reason"]
    if expected == 0:
        assert best["reason"].startswith("no epoch kept") and "path" not in best
    else:
        assert best["path"] == f"epoch-{expected}"


def test_select_best_reason_states_the_winning_score():
    epochs = [_epoch(0, 0.9, 0.9, 0.1), _epoch(1, 0.5, 0.85, 0.5), _epoch(2, 0.25, 0.82, 0.6)]
    assert (
        select_best(epochs, "task_aggregate")["reason"]
        == "highest task aggregate (0.600) with retain ROUGE-L >= 0.810"
    )
    assert select_best(epochs, "holdout_gap")["reason"] == (
        "smallest gap to holdout people (0.050) with retain ROUGE-L >= 0.810"
    )


def test_select_best_under_holdout_gap_needs_a_holdout_set():
    epochs = [_epoch(0, 0.9, 0.9, 0.1), _epoch(1, 0.5, 0.85, 0.5)]
    for epoch in epochs:
        del epoch.summary["holdout/rougeL_recall"]
    assert select_best(epochs, "task_aggregate")["epoch"] == 1
    with pytest.raises(ConfigError, match="needs a holdout set"):
        select_best(epochs, "holdout_gap")


def _expected_holdout_gap_epoch(epochs: list[dict]) -> int:
    """The holdout_gap rule worked out by hand from the written summaries (the docstring of select_best)."""
    start = epochs[0]["summary"]
    kept = [
        e
        for e in epochs[1:]
        if e["summary"]["retain/rougeL_recall"] >= 0.9 * start["retain/rougeL_recall"]
        and e["summary"]["retain/exact_match"] >= 0.9 * start["retain/exact_match"]
    ]
    if not kept:
        return 0

    def gap(e: dict) -> float:
        s = e["summary"]
        return abs(s["forget/rougeL_recall"] - s["holdout/rougeL_recall"]) + abs(
            s["forget/leak_rate"] - s["holdout/leak_rate"]
        )

    return min(kept, key=gap)["epoch"]


def test_unlearn_eval_every_epoch_then_evaluate_checkpoints(target, tmp_path):
    run = tmp_path / "run"
    args = unlearn_argv(
        target, run, "--epochs", "2", "--eval_every_epoch", "--holdout_dir", str(target.data / "holdout")
    )
    assert main(args) == 0
    for epoch in (0, 1, 2):
        results = json.loads((run / "eval" / f"epoch-{epoch}" / "results.json").read_text())
        assert results["epoch"] == epoch and "forget/rougeL_recall" in results["summary"]
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoints",
                str(run),
                "--forget_dir",
                str(target.forget),
                "--retain_dir",
                str(target.retain),
                "--holdout_dir",
                str(target.data / "holdout"),
                "--output_dir",
                str(out),
                "--max_new_tokens",
                "24",
                "--select",
                "holdout_gap",
            ]
        )
        == 0
    )
    epochs = json.loads((out / "results.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    best = json.loads((out / "best.json").read_text())
    assert best["rule"] == "holdout_gap"
    assert best["epoch"] == _expected_holdout_gap_epoch(epochs)
    report = (out / "report.md").read_text()
    assert "rougeL_per_epoch.png" in report and (out / "rougeL_per_epoch.png").is_file()
    assert (out / "loss_per_epoch.png").is_file()


# (forget ROUGE-L, retain ROUGE-L, task aggregate) per epoch; holdout ROUGE-L is 0.2 throughout. Epoch 1 is closest
# to the holdout people but lost retain (0.5 < 0.9 x 0.9); of the rest, epoch 2 has the smaller gap (0.1 against
# 0.4) and epoch 3 the higher aggregate (0.7 against 0.5).
CHECKPOINT_SCORES = {0: (0.9, 0.9, 0.1), 1: (0.2, 0.5, 0.9), 2: (0.3, 0.85, 0.5), 3: (0.6, 0.88, 0.7)}


@pytest.mark.parametrize(("rule", "expected"), [("holdout_gap", 2), ("task_aggregate", 3)])
def test_evaluate_checkpoints_writes_the_epoch_its_rule_picks(assets, tmp_path, monkeypatch, rule, expected):
    """The CLI's choice from known per-epoch scores (evaluation replaced by constructed results)."""
    import obliviate.evaluate.epochs as epochs
    from obliviate.evaluate.results import EvalResult

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model_dir: {assets.model}\n")
    for n in (1, 2, 3):
        (run / "checkpoints" / f"epoch-{n}").mkdir(parents=True)
        (run / "checkpoints" / f"epoch-{n}" / "trainer_state.json").write_text("{}")

    def scored(epoch, path, *args, **kwargs) -> EvalResult:
        forget, retain, aggregate = CHECKPOINT_SCORES[epoch]
        values = [
            ("rougeL_recall", "forget", forget),
            ("rougeL_recall", "retain", retain),
            ("rougeL_recall", "holdout", 0.2),
            ("task_aggregate", "all", aggregate),
        ]
        metrics = [{"name": n, "split": s, "task": "all", "value": v, "higher_is_better": True} for n, s, v in values]
        return EvalResult(metrics, [], {}, {}, [], [], None)

    monkeypatch.setattr(epochs, "evaluate_epoch", scored)
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoints", str(run), "--forget_dir", str(assets.forget), "--retain_dir"]
    argv += [str(assets.retain), "--holdout_dir", str(assets.data / "holdout"), "--output_dir", str(out)]
    assert main([*argv, "--select", rule]) == 0
    best = json.loads((out / "best.json").read_text())
    assert (best["epoch"], best["rule"]) == (expected, rule)
    assert best["path"] == str(run / "checkpoints" / f"epoch-{expected}")
    written = json.loads((out / "results.json").read_text())["epochs"]
    assert [e["summary"]["retain/rougeL_recall"] for e in written] == [0.9, 0.5, 0.85, 0.88]


def test_select_best_under_holdout_gap_also_floors_retain_em_and_says_so():
    epochs = [_epoch(0, 0.9, 0.9, 0.1), _epoch(1, 0.5, 0.85, 0.5), _epoch(2, 0.2, 0.86, 0.6)]
    for epoch, em in zip(epochs, (1.0, 0.95, 0.5)):
        epoch.summary["retain/exact_match"] = em
    best = select_best(epochs, "holdout_gap")
    assert best["epoch"] == 1  # epoch 2 is closer to holdout people but lost retain EM (0.5 < 0.9)
    assert "retain EM >= 0.900" in best["reason"]
    # the EM floor belongs to holdout_gap only: under task_aggregate epoch 2 (aggregate 0.6) wins
    assert select_best(epochs, "task_aggregate")["epoch"] == 2
    epochs[2].summary["retain/exact_match"] = 0.9  # exactly 90 % of epoch 0's 1.0: kept
    assert select_best(epochs, "holdout_gap")["epoch"] == 2


def test_epoch_hook_writes_a_known_starting_result_without_evaluating_it(tmp_path, monkeypatch):
    import obliviate.evaluate.epochs as epochs
    from obliviate.evaluate.results import EvalResult

    start = EvalResult(
        metrics=[
            {"name": "rougeL_recall", "split": "forget", "task": "all", "value": 0.75, "higher_is_better": False}
        ],
        per_example=[],
        semeval={},
        leak={},
        notes=[],
        forget_nll=[],
        mink_auc=None,
    )
    evaluated = []
    monkeypatch.setattr(epochs, "evaluate_epoch", lambda epoch, path, *a, **k: evaluated.append(epoch) or start)
    hook = epochs.make_epoch_hook(None, None, tmp_path / "eval", "model-dir", start=start)
    hook(1, tmp_path / "checkpoint-1")
    assert evaluated == [1]  # the checkpoint only; epoch 0 came from `start`
    written = json.loads((tmp_path / "eval" / "epoch-0" / "results.json").read_text())
    assert written["summary"] == {"forget/rougeL_recall": 0.75}
