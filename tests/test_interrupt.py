"""Real interruptions: ``obliviate unlearn`` as a subprocess, killed with SIGKILL at several points, then resumed.

The kill points are named by ``OBLIVIATE_KILL_AT`` (see :func:`obliviate.io.kill_point`): between optimizer steps,
inside a checkpoint write (weights written, RNG state and trainer state not yet), and after the final model's files
but before its ``trainer_state.json``. After each kill only complete checkpoints are visible, and ``--resume`` ends
bit-identical to an uninterrupted run: weights and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import Assets, metrics, unlearn_argv, weights
from obliviate.train import checkpoint as ckpt

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.safetensors", "rng_state_0.json")


def cli(argv: list[str], kill_at: str | None = None, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OBLIVIATE_KILL_AT", None)
    if kill_at:
        env["OBLIVIATE_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "obliviate.cli.main", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, **popen)


def run_argv(assets: Assets, out: Path, *extra: str) -> list[str]:
    return unlearn_argv(
        assets, out, "--epochs", "3", "--method", "ga_gd", "--lora_r", "4", "--lora_dropout", "0.5", *extra
    )


@pytest.fixture(scope="module")
def reference(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (LoRA dropout draws from the RNG, so a wrongly restored RNG shows in the weights)."""
    out = tmp_path_factory.mktemp("interrupt") / "whole"
    done = cli(run_argv(assets, out))
    assert done.returncode == 0, done.stderr
    return out


def assert_only_complete_checkpoints(run: Path) -> None:
    for _, path in ckpt.list_checkpoints(run):
        for name in (*CHECKPOINT_FILES, ckpt.STATE_FILE):
            name = "adapter_model.safetensors" if name == "model.safetensors" else name
            assert (path / name).is_file(), f"{path.name} is listed but lacks {name}"


def kill_then_resume(assets: Assets, reference: Path, tmp_path: Path, kill_at: str) -> None:
    out = tmp_path / "parts"
    killed = cli(run_argv(assets, out), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_only_complete_checkpoints(out)
    assert not (out / "trainer_state.json").exists()  # nothing says "finished" about a killed run
    resumed = cli([*run_argv(assets, out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(reference, "adapter_model.safetensors"), weights(out, "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(out) == metrics(reference)


def test_kill_mid_epoch_then_resume_is_bit_identical(assets, reference, tmp_path):
    kill_then_resume(assets, reference, tmp_path, "step-8")  # epoch 2, after its third step


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step-1", "checkpoint-1", "checkpoint-2", "step-15", "final"])
def test_kill_anywhere_then_resume_is_bit_identical(kill_at, assets, reference, tmp_path):
    kill_then_resume(assets, reference, tmp_path, kill_at)


def test_a_resume_before_the_first_checkpoint_takes_the_kept_trial_again(assets, tmp_path):
    """Killed after the range test's kept trial (3 steps) and before the first checkpoint (epoch 1 ends at step 5):
    the resume has the rate but not those steps, so it takes them again from the starting weights. The log keeps
    the trials, none of them continued now, all their tokens are the range test's cost, and the run ends as one
    given that rate does."""
    out = tmp_path / "probed"
    argv = run_argv(assets, out, "--lr_probe_steps", "3")
    del argv[argv.index("--lr") : argv.index("--lr") + 2]  # the range test measures the rate
    killed = cli(argv, kill_at="step-4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    trials = [line["lr_probe"] for line in metrics(out) if "lr_probe" in line]
    assert trials[-1].get("continued") is True and ckpt.list_checkpoints(out) == []
    resumed = cli([*argv, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    lines = metrics(out)
    after = [line["lr_probe"] for line in lines if "lr_probe" in line]
    assert after == [{k: v for k, v in t.items() if k != "continued"} for t in trials]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["lr_probe_tokens"] == sum(t["tokens"] for t in trials) > 0
    lr = yaml.safe_load((out / "config.yaml").read_text())["lr"]
    given = tmp_path / "given"
    argv[argv.index(str(out))] = str(given)
    assert cli([*argv, "--lr", repr(lr)]).returncode == 0
    a, b = weights(given, "adapter_model.safetensors"), weights(out, "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [line for line in lines if "lr_probe" not in line] == metrics(given)


def test_a_resume_under_the_stop_rule_is_bit_identical(target, tmp_path):
    """contrast with its stop rule and --field_stop on: a resume measures the rule's never-seen bands and retain start
    on the starting weights (not the checkpoint's) and gives the rule back the fields it had found inside, so the
    resumed run checks, skips and stops as the uninterrupted one."""
    flags = ("--method", "contrast", "--retain_steps", "2", "--stop_check_steps", "3", "--lr", "3e-3", "--epochs", "3")
    holdout = ("--holdout_dir", str(target.data / "holdout"))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli(unlearn_argv(target, whole, *flags, *holdout)).returncode == 0
    checks = [line["stop_check"] for line in metrics(whole) if "stop_check" in line]
    assert len(checks) >= 4 and all(0 < c["fields_outside"] < 4 for c in checks)  # some fields inside, not all
    killed = cli(unlearn_argv(target, parts, *flags, *holdout), kill_at="step-7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [epoch for epoch, _ in ckpt.list_checkpoints(parts)] == [1]
    assert cli([*unlearn_argv(target, parts, *flags, *holdout), "--resume"]).returncode == 0
    assert metrics(parts) == metrics(whole)
    a, b = weights(whole), weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_exits_130_with_one_line(assets, tmp_path):
    out = tmp_path / "out"
    # a run far longer than the test, so that only the signal can end it
    argv = unlearn_argv(assets, out, "--epochs", "1000000", "--method", "ga", "--save_checkpoints", "false")
    argv = [a for a in argv if a != "false"]
    argv[argv.index("--save_checkpoints")] = "--no-save_checkpoints"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    # A shell starts background jobs with SIGINT ignored, and a child inherits that: the command would then rightly
    # ignore Ctrl-C. The child gets the default disposition back, as from an interactive terminal.
    process = subprocess.Popen(
        [sys.executable, "-m", "obliviate.cli.main", *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines() == [
        "obliviate: interrupted; complete checkpoints are kept and --resume continues"
    ], err


def test_a_file_size_limit_is_one_error_line_and_leaves_no_finished_model(assets, tmp_path):
    """``ulimit -f``: a write fails mid-file with EFBIG; the run says so in one line and exits 1."""
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # below the micro model's 120 kB weights

    done = cli(unlearn_argv(assets, out, "--method", "ga"), preexec_fn=limit)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("obliviate: error: "), lines
    assert "File too large" in lines[0]
    assert ckpt.list_checkpoints(out) == [] and not (out / "trainer_state.json").exists()


def test_a_tampered_rng_state_is_refused_and_runs_nothing(assets, tmp_path):
    """An old-style pickled RNG file carrying code: resume refuses it and never unpickles it."""
    out = tmp_path / "out"
    argv = unlearn_argv(assets, out, "--method", "ga", "--epochs", "2")
    first = cli(argv, kill_at="step-7")
    assert first.returncode == -signal.SIGKILL
    [(_, path)] = ckpt.list_checkpoints(out)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    for name in ("rng_state_0.safetensors", "rng_state_0.json"):
        (path / name).unlink()
    (path / "rng_state_0.pt").write_bytes(pickle.dumps(Payload()))
    resumed = cli([*argv, "--resume"])
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1].startswith("obliviate: error: checkpoint")
    assert "never loaded" in resumed.stderr
    assert not witness.exists()

    (path / "rng_state_0.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (path / "rng_state_0.json").write_text("{}")
    resumed = cli([*argv, "--resume"])
    assert resumed.returncode == 2 and "damaged RNG state" in resumed.stderr
    (path / "optimizer.pt").write_bytes(pickle.dumps(Payload()))
    assert not witness.exists()
