"""Atomic checkpoints and bit-exact resume: an interrupted run ends where an uninterrupted one does."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import (
    metrics,
    unlearn_argv,
    unlearn_config,
    weights,
)
from obliviate.cli.main import main
from obliviate.errors import TrainingError
from obliviate.losses import LOSSES
from obliviate.train import checkpoint as ckpt
from obliviate.train.run import run_unlearn

pytest_plugins = ["helpers"]  # the micro model and data fixtures


def interrupt_at_epoch(stop_epoch: int):
    def hook(epoch, path):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return None

    return hook


def assert_same_run(first, second, weight_file: str) -> None:
    a, b = weights(first, weight_file), weights(second, weight_file)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert metrics(first) == metrics(second)


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_resume_after_an_epoch_is_bit_identical(method, assets, tmp_path):
    """Full fine-tuning with a frozen reference (npo) or hidden states (rmu): optimizer, schedule, data order."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    config = unlearn_config(assets, whole, method=method, epochs=2, scheduler="cosine", warmup_ratio=0.2)
    run_unlearn(config)
    with pytest.raises(KeyboardInterrupt):
        run_unlearn(dataclasses.replace(config, output_dir=str(parts)), epoch_hook=interrupt_at_epoch(1))
    assert [epoch for epoch, _ in ckpt.list_checkpoints(parts)] == [1]

    result = run_unlearn(dataclasses.replace(config, output_dir=str(parts), resume=True))
    assert (result.epochs_completed, result.global_step) == (2, 10)
    assert_same_run(whole, parts, "model.safetensors")


def test_resume_mid_epoch_under_lora_restores_rng_and_truncates_the_log(assets, tmp_path, monkeypatch, capsys):
    """LoRA dropout draws from the RNG; an interrupt in epoch 2 leaves log lines the resumed run must replace."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_unlearn(unlearn_config(assets, whole, method="ga_gd", epochs=2, lora_r=4, lora_dropout=0.5))

    calls = {"n": 0}
    ga_gd = LOSSES["ga_gd"]

    def interrupted(inputs, params):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return ga_gd.loss(inputs, params)

    monkeypatch.setitem(LOSSES, "ga_gd", dataclasses.replace(ga_gd, loss=interrupted))
    argv = unlearn_argv(assets, parts, "--method", "ga_gd", "--epochs", "2", "--lora_r", "4", "--lora_dropout", "0.5")
    assert main(argv) == 130
    assert "--resume continues" in capsys.readouterr().err
    assert [line["step"] for line in metrics(parts)] == [1, 2, 3, 4, 5, 6, 7]
    monkeypatch.setitem(LOSSES, "ga_gd", ga_gd)

    assert main([*argv, "--resume"]) == 0
    assert_same_run(whole, parts, "adapter_model.safetensors")


def test_checkpoint_holds_everything_resume_needs(assets, tmp_path):
    out = tmp_path / "out"
    run_unlearn(unlearn_config(assets, out, method="ga"))
    path = out / "checkpoints" / "epoch-1"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.safetensors",
        "rng_state_0.json",
        "trainer_state.json",
    ):
        assert (path / name).is_file(), name
    state = json.loads((path / "trainer_state.json").read_text())
    assert state == {
        "epoch": 1,
        "global_step": 5,
        "stopped": None,
        "tokens_seen": state["tokens_seen"],
        "lr_probe_tokens": 0,  # --lr given: no range test
        "forward_tokens": 0,  # ga: no reference, and no stop rule
    }
    assert torch.load(path / "optimizer.pt", weights_only=True)["state"]
    assert not list((out / "checkpoints").glob(".*"))


def test_half_written_checkpoints_are_invisible(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("epoch-1", "epoch-3", ".epoch-2.tmp", "epoch-4", "epoch-x"):
        (root / name).mkdir(parents=True)
    for name in ("epoch-1", "epoch-3", ".epoch-2.tmp", "epoch-x"):  # epoch-4 died before its state was written
        (root / name / ckpt.STATE_FILE).write_text("{}")
    assert [(epoch, path.name) for epoch, path in ckpt.list_checkpoints(tmp_path)] == [(1, "epoch-1"), (3, "epoch-3")]
    assert ckpt.list_checkpoints(tmp_path / "missing") == []


def test_resume_refuses_finished_or_stopped_runs(assets, tmp_path):
    finished = tmp_path / "finished"
    run_unlearn(unlearn_config(assets, finished, method="ga", save_checkpoints=False))
    with pytest.raises(TrainingError, match="nothing to resume"):
        run_unlearn(unlearn_config(assets, finished, method="ga", save_checkpoints=False, resume=True))

    stopped = tmp_path / "stopped"
    run_unlearn(unlearn_config(assets, stopped, method="ga", stop_forget_nll=0.5, epochs=2))
    with pytest.raises(TrainingError, match="already finished"):
        run_unlearn(unlearn_config(assets, stopped, method="ga", stop_forget_nll=0.5, epochs=2, resume=True))
