"""``--report_to``: TensorBoard event files hold what the run logged; ``metrics.jsonl`` lines carry the clock;
``trainer_state.json`` splits the run's seconds by phase; a missing tracker package is one clear error."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest

from helpers import metrics, unlearn_config
from obliviate.errors import ConfigError
from obliviate.train import trackers
from obliviate.train.loop import TIMING
from obliviate.train.run import run_finetune, run_unlearn

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def test_every_metrics_line_has_the_wall_clock_and_each_step_its_tokens_per_second(assets, tmp_path):
    out = tmp_path / "out"
    run_unlearn(unlearn_config(assets, out, method="ga_gd", epochs=2))
    lines = metrics(out, clock=True)
    steps = [line for line in lines if "loss" in line]
    assert len(steps) == 10
    times = [line["time"] for line in lines]
    assert all(isinstance(t, float) and t > 1.7e9 for t in times) and times == sorted(times)
    for before, line in zip([None, *steps], steps):
        assert line["step_seconds"] > 0
        tokens = line["tokens_seen"] - (before["tokens_seen"] if before else 0)
        assert line["tokens_per_second"] == pytest.approx(tokens / line["step_seconds"], rel=1e-3, abs=0.1)
    assert all(k not in line for line in metrics(out) for k in ("time", "step_seconds", "tokens_per_second"))


def test_trainer_state_splits_loop_time_from_setup_and_save(assets, tmp_path):
    out = tmp_path / "out"
    result = run_unlearn(unlearn_config(assets, out, method="ga_gd", epochs=2))
    state = json.loads((out / "trainer_state.json").read_text())
    timing = state["timing"]
    assert set(timing) == {*TIMING, "total_seconds"}
    assert timing["loop_seconds"] > 0 and timing["setup_seconds"] > 0 and timing["save_seconds"] > 0
    assert timing["checkpoint_seconds"] > 0  # two epoch checkpoints were written
    assert timing["lr_probe_seconds"] == 0  # --lr was given: no range test
    steps = sum(line["step_seconds"] for line in metrics(out, clock=True) if "step_seconds" in line)
    assert steps <= timing["loop_seconds"] + 1e-3  # the loop is its steps (and the stop checks), nothing else
    parts = sum(v for k, v in timing.items() if k not in ("total_seconds", "stop_check_seconds"))
    assert parts <= timing["total_seconds"] + 1e-2
    assert result.timing["loop_seconds"] == pytest.approx(timing["loop_seconds"], abs=1e-3)


def test_report_to_a_missing_package_is_one_clear_error_before_anything_is_written(assets, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--report_to wandb needs the wandb package.*pip install wandb"):
        run_unlearn(unlearn_config(assets, out, method="ga", report_to="wandb"))
    assert not out.exists()


def test_report_to_rejects_an_unknown_tracker(assets, tmp_path):
    with pytest.raises(ConfigError, match="--report_to 'mlflow': expected one of none, tensorboard, wandb"):
        unlearn_config(assets, tmp_path / "out", report_to="mlflow")


def test_scalars_name_steps_checks_and_probes():
    step = {"step": 3, "epoch": 1, "lr": 0.01, "loss": -2.0, "forget_nll": 2.0, "time": 1.8e9, "phase": "retain"}
    assert trackers.scalars(step) == {"train/lr": 0.01, "train/loss": -2.0, "train/forget_nll": 2.0}
    check = {"step": 4, "stop_check": {"step": 4, "forget_exposure": 3.5, "forget_se": float("nan")}}
    assert trackers.scalars(check) == {"stop_check/step": 4.0, "stop_check/forget_exposure": 3.5}
    hparams = trackers.hparams({"a": None, "b": [1, 2], "c": 1.5, "d": True})
    assert hparams == {"a": "none", "b": "1,2", "c": 1.5, "d": True}


def _event_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(directory.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install 'obliviate[trackers]')")
def test_tensorboard_event_files_hold_the_logged_scalars(target, tmp_path):
    """Step losses, rate and tokens/s at every step, the stop rule's checks, and each epoch's evaluation (an epoch
    hook standing in for ``--eval_every_epoch``, whose suite would cost this test half a minute)."""
    from obliviate.evaluate.results import EpochEval
    from obliviate.evaluate.stop_rule import stop_rule_for

    out = tmp_path / "out"
    config = unlearn_config(
        target, out, method="ga_gd", epochs=3, report_to="tensorboard", stop_check_steps=2, stop_band=0.0
    )
    config = dataclasses.replace(config, holdout_dir=str(target.data / "holdout"))
    hooked = []

    def hook(epoch, path):
        hooked.append(json.loads((path / "trainer_state.json").read_text())["global_step"])
        return EpochEval(epoch, str(path), {"forget/rougeL_recall": 0.25 * epoch, "all/task_aggregate": None})

    run_unlearn(config, epoch_hook=hook, stop_rule=stop_rule_for)
    logged = _event_scalars(out / "tensorboard" / "ga_gd")
    steps = [line for line in metrics(out, clock=True) if "loss" in line]
    for key in ("loss", "forget_nll", "retain_nll", "lr", "tokens_per_second"):
        expected = [(line["step"], line[key]) for line in steps]
        assert [(s, pytest.approx(v, rel=1e-5)) for s, v in expected] == logged[f"train/{key}"], key
    checks = [line["stop_check"] for line in metrics(out) if "stop_check" in line]
    assert len(checks) >= 2
    assert [(c["step"], pytest.approx(c["forget_exposure"], rel=1e-5)) for c in checks] == logged[
        "stop_check/forget_exposure"
    ]
    assert hooked and logged["eval/forget/rougeL_recall"] == [
        (step, pytest.approx(0.25 * epoch)) for epoch, step in enumerate(hooked, start=1)
    ]
    assert "eval/all/task_aggregate" not in logged  # a metric the evaluation could not compute is not a zero


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install 'obliviate[trackers]')")
def test_finetune_reports_to_tensorboard(assets, tmp_path):
    from obliviate.config import FinetuneConfig

    out = tmp_path / "ft"
    config = FinetuneConfig(
        output_dir=str(out),
        model=str(assets.model),
        data=[str(assets.forget)],
        epochs=2,
        batch_size=6,
        micro_batch_size=6,
        max_length=64,
        report_to="tensorboard",
    )
    run_finetune(config)
    logged = _event_scalars(out / "tensorboard" / "finetune")
    losses = [line["loss"] for line in metrics(out)]
    assert len(losses) == 6 and [v for _, v in logged["train/loss"]] == [pytest.approx(v, rel=1e-5) for v in losses]
    assert all(math.isfinite(v) for _, v in logged["train/lr"])
