"""The typed results (Metric, EvalResult, EpochEval, MethodRun), the columns derived from METRICS, and the pipeline
reading each run's epochs from RunResult.epoch_results."""

from __future__ import annotations

from pathlib import Path

from obliviate.evaluate import scores
from obliviate.evaluate.results import EpochEval, EvalResult, Metric
from obliviate.report import columns as report_columns
from obliviate.report.render import render_epochs_report


def _result(**values: float) -> EvalResult:
    metrics = [Metric.of(key.split("__")[1], key.split("__")[0], value, n=3) for key, value in values.items()]
    return EvalResult(metrics, [], {}, {}, [], [], None)


def test_metric_json_keeps_the_results_json_layout_and_reads_back():
    metric = Metric.of("exposure", "holdout", 1.5, n=4, k=20, chance=1.4)
    data = metric.to_json()
    assert data == {
        "name": "exposure",
        "split": "holdout",
        "task": "all",
        "value": 1.5,
        "higher_is_better": False,
        "n": 4,
        "k": 20,
        "chance": 1.4,
    }
    assert Metric.from_json(data) == metric and metric.key == "holdout/exposure"
    assert Metric.of("task_aggregate", "all", 0.5).higher_is_better is True


def test_eval_result_reads_dict_metrics_and_serialises_as_before():
    result = EvalResult(
        [{"name": "rougeL_recall", "split": "forget", "task": "all", "value": 0.25, "higher_is_better": False}],
        [],
        {},
        {},
        ["a note"],
        [],
        None,
    )
    assert isinstance(result.metrics[0], Metric) and result.value("rougeL_recall", "forget") == 0.25
    data = result.to_json()
    assert list(data) == ["metrics", "summary", "stderr", "semeval", "leak", "exposure", "notes", "units"]
    assert data["summary"] == {"forget/rougeL_recall": 0.25}
    assert data["stderr"] == {}  # a metric without a standard error has no entry
    assert data["metrics"][0] == {
        "name": "rougeL_recall",
        "split": "forget",
        "task": "all",
        "value": 0.25,
        "higher_is_better": False,
    }


def test_epoch_eval_serialises_as_an_epoch_entry():
    epoch = EpochEval.of(2, Path("eval") / "epoch-2", _result(forget__leak_rate=0.1))
    expected = {"epoch": 2, "path": str(Path("eval/epoch-2")), "summary": {"forget/leak_rate": 0.1}, "stderr": {}}
    assert epoch.to_json() == expected
    assert epoch.result is None
    with_error = EvalResult([Metric.of("leak_rate", "forget", 0.1, stderr=0.05)], [], {}, {}, [], [], None)
    assert EpochEval.of(3, "eval/epoch-3", with_error).to_json()["stderr"] == {"forget/leak_rate": 0.05}


def test_columns_take_label_direction_and_format_from_the_metrics_table():
    column = report_columns.metric_column("retain/perplexity")
    assert (column.header, column.cell(12.34567)) == ("retain PPL ↓", "12.346")
    assert report_columns.metric_column("forget/mia_auc_loss").header == "MIA AUC ↓ (ideal 0.5)"
    assert report_columns.metric_column("forget/privleak").cell(-98.765) == "-98.8"
    assert report_columns.metric_column("epoch", "best epoch").header == "best epoch"
    rows = [{"forget/rougeL_recall": 0.5}, {"all/task_aggregate": None}]
    assert [c.key for c in report_columns.metric_columns("columns", rows)] == ["forget/rougeL_recall"]


def test_a_new_metric_needs_only_its_metrics_entry_to_reach_the_tables(monkeypatch):
    info = scores.MetricInfo("new_score", False, True, "a new metric", label="new", fmt=".1%", columns=("forget",))
    monkeypatch.setitem(scores.METRICS, "new_score", info)
    epochs = [{"epoch": 0, "summary": {"forget/new_score": 0.25}}, {"epoch": 1, "summary": {"forget/new_score": 0.5}}]
    text = render_epochs_report(epochs, None, "run", {})
    assert "| epoch | new ↓ |" in text and "| 1 | 50.0% |" in text


def test_unlearn_method_takes_its_epochs_from_the_run_result_not_the_disk(tmp_path, monkeypatch):
    """The hook's EpochEvals, as the loop collects them, are the run's epochs; nothing is read back from eval/."""
    from obliviate import pipeline
    from obliviate.train.state import RunResult

    start = _result(retain__rougeL_recall=0.9, forget__rougeL_recall=0.9)
    hooked = [EpochEval(n, f"e{n}", {"retain/rougeL_recall": 0.9, "forget/rougeL_recall": 0.1 * n}) for n in (1, 2)]

    def fake_unlearn(config, epoch_hook=None, stop_rule=None):
        return RunResult(
            Path(config.output_dir),
            2,
            10,
            1000,
            epoch_results=list(hooked),
            lr=1e-4,
            lr_probe_tokens=300,
            forward_tokens=600,
        )

    monkeypatch.setattr(pipeline, "run_unlearn", fake_unlearn)
    monkeypatch.setattr(pipeline, "make_epoch_hook", lambda *a, **k: None)
    config = pipeline.PipelineConfig(output_dir=str(tmp_path / "demo"), select="last")
    dirs = {"forget": tmp_path / "f", "retain": tmp_path / "r", "holdout": tmp_path / "h"}
    run = pipeline.unlearn_method("ga_gd", tmp_path / "target", dirs, config, (None, None, None), print, start)
    assert [e.epoch for e in run.epochs] == [0, 1, 2] and run.epochs[1:] == hooked
    assert run.epochs[0].summary == start.summary()
    assert run.best["epoch"] == 2 and run.best_epoch is hooked[1] and run.steps == 10
    assert not (tmp_path / "demo" / "methods" / "ga_gd" / "eval").exists()
    saved = run.to_json()
    assert saved["epochs"][2] == {"epoch": 2, "path": "e2", "summary": hooked[1].summary, "stderr": {}}
    assert list(saved) == [  # the key order of results.json's runs
        "method",
        "best",
        "preset",
        "lr",
        "steps",
        "step_budget",
        "stopped",
        "ended",
        "stop_checks",
        "tokens",
        "lr_probe_tokens",
        "forward_tokens",
        "compute",
        "wall_seconds",
        "epochs",
    ]
    assert (saved["tokens"], saved["lr_probe_tokens"]) == (1300, 300)  # the cost: its steps and its range test
    assert (saved["forward_tokens"], saved["compute"]) == (600, 1500)  # and its untrained passes at a third
    assert saved["step_budget"] is None and saved["ended"] == "epochs"  # no budget set: its epochs ended it
