"""Two CPU processes under torchrun (gloo): one run, different retain draws per rank, steps set by the batch."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (
    FORGET_RECORDS,
    metrics,
    unlearn_argv,
    weights,
)
from obliviate.data.batching import encode_record, forget_order, micro_batches_for_rank, retain_draws
from obliviate.data.load import load_split
from obliviate.models.load import load_tokenizer
from obliviate.train import checkpoint as ckpt

pytest_plugins = ["helpers"]  # the micro model and data fixtures


WORLD, MICRO, ACCUMULATION, SEED = 2, 2, 2, 42
BATCH = MICRO * ACCUMULATION * WORLD


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expected_tokens(assets, steps: int, batch: int = BATCH, micro: int = MICRO, forget_rows: bool = True) -> int:
    """Tokens of the epoch when each rank takes its own share of the forget order and draws its own retain rows
    (the retain rows alone without ``forget_rows``)."""
    tokenizer = load_tokenizer(assets.model)
    forget = [len(encode_record(tokenizer, r, 64).ids) for r in load_split(assets.forget, split="forget")]
    retain = [len(encode_record(tokenizer, r, 64).ids) for r in load_split(assets.retain, split="retain")]
    order = forget_order(len(forget), steps, batch, SEED, 1)
    total = sum(forget[i] for i in order) if forget_rows else 0
    for rank in range(WORLD):
        shares = micro_batches_for_rank(order, WORLD, rank, micro)
        draws = retain_draws(len(retain), [len(m) for m in shares], SEED, 1, rank)
        total += sum(retain[i] for draw in draws for i in draw)
    return total


def torchrun(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    return launch(command, argv, cwd)


def launch(launcher: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``obliviate argv`` under a multi-process ``launcher`` command on CPU (one torch thread per process, no
    GPU), with a timeout; the launch must succeed."""
    command = [*launcher, "-m", "obliviate.cli.main", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def ga_gd_argv(assets, out: Path, *extra: str) -> list[str]:
    """A fast two-process ``ga_gd`` run: micro-batch and batch as above."""
    sizes = ("--micro_batch_size", str(MICRO), "--batch_size", str(BATCH))
    return unlearn_argv(assets, out, "--method", "ga_gd", *sizes, *extra)


def test_two_processes_share_the_epoch_and_draw_different_retain_rows(assets, tmp_path):
    out = tmp_path / "out"
    done = torchrun(ga_gd_argv(assets, out, "--seed", str(SEED)), tmp_path)
    assert done.stdout.count("unlearned with ga_gd") == 1  # one summary per launch

    lines = metrics(out)
    steps = math.ceil(FORGET_RECORDS / BATCH)
    assert [line["step"] for line in lines] == list(range(1, steps + 1))
    for line in lines:
        first, second = line["retain_draw_checksums"]
        assert first != second
    assert lines[-1]["tokens_seen"] == expected_tokens(assets, steps)
    ((epoch, path),) = ckpt.list_checkpoints(out)
    assert epoch == 1 and {p.name for p in path.glob("rng_state_*")} == {
        f"rng_state_{rank}.{kind}" for rank in (0, 1) for kind in ("safetensors", "json")
    }
    assert weights(out).keys() == weights(assets.model).keys()


@pytest.mark.slow  # about 20 s; `make test-slow` runs it (the default suite aims at 10 minutes)
def test_length_pieces_under_two_processes_give_the_same_update(target, tmp_path):
    """GA splits each rank's micro-batch into its own number of pieces; the synced update must not change."""
    from obliviate.data.batching import length_pieces

    # micro-batches of 4, two per step on each rank: some run as several pieces, and the ranks cut differently
    tokenizer = load_tokenizer(target.model)
    lengths = [len(encode_record(tokenizer, r, 64).ids) for r in load_split(target.forget, split="forget")]
    order = forget_order(len(lengths), math.ceil(len(lengths) / 16), 16, 42, 1)
    counts = [
        [len(length_pieces([lengths[i] for i in m])) for m in micro_batches_for_rank(order, WORLD, rank, 4)]
        for rank in range(WORLD)
    ]
    assert max(max(c) for c in counts) > 1 and counts[0] != counts[1], counts
    runs = {}
    for name, extra in (("pieces", ()), ("whole", ("--no-length_pieces",))):
        out = tmp_path / name
        argv = unlearn_argv(target, out, "--method", "ga", "--micro_batch_size", "4", "--batch_size", "16", *extra)
        torchrun([*argv, "--lr", "1e-3"], tmp_path)
        runs[name] = out
    pieces, whole = weights(runs["pieces"]), weights(runs["whole"])
    for key in pieces:
        torch.testing.assert_close(pieces[key], whole[key], atol=1e-5, rtol=1e-4)
    logged = list(zip(metrics(runs["pieces"]), metrics(runs["whole"])))
    assert logged and all(a["loss"] == pytest.approx(b["loss"], rel=1e-5) for a, b in logged)


def test_under_two_processes_the_run_goes_on_from_the_range_tests_chosen_trial(assets, tmp_path):
    """--lr unset under torchrun: the chosen trial's steps are the run's first on both processes, and the run ends
    with the weights and step log of a two-process run given that rate."""
    import yaml

    def argv(out, *extra):
        args = ga_gd_argv(assets, out, "--epochs", "2", "--lr_probe_steps", "2", *extra)
        at = args.index("--lr")
        return args[:at] + args[at + 2 :]  # the fast preset's rate left out: the range test measures it

    torchrun(argv(tmp_path / "measured"), tmp_path)
    trials = [line["lr_probe"] for line in metrics(tmp_path / "measured") if "lr_probe" in line]
    assert trials[-1].get("continued") is True
    lr = yaml.safe_load((tmp_path / "measured" / "config.yaml").read_text())["lr"]
    torchrun(argv(tmp_path / "given", "--lr", repr(lr)), tmp_path)
    measured, given = weights(tmp_path / "measured"), weights(tmp_path / "given")
    for key in measured:
        torch.testing.assert_close(measured[key], given[key], atol=1e-6, rtol=0)
    steps = [line for line in metrics(tmp_path / "measured") if "tokens_seen" in line]
    assert steps == [line for line in metrics(tmp_path / "given") if "tokens_seen" in line]


@pytest.mark.slow  # about 80 s on two shared cores
def test_eval_every_epoch_finishes_under_two_processes(assets, tmp_path):
    """Every process evaluates its share of the rows and joins the gathers; only the main one writes.

    The hook used to return early on every rank but the main one, which then waited in ``gather_object`` until the
    timeout: with the epoch-1 checkpoint written and no final model.
    """
    out = tmp_path / "out"
    extra = ("--method", "ga_kl", "--micro_batch_size", "2", "--batch_size", "4", "--eval_every_epoch", "--seed", "42")
    extra += ("--trainable_modules", "mlp")  # the reference shares the frozen parameters with the DDP-wrapped model
    torchrun([*unlearn_argv(assets, out, *extra), "--eval_max_examples", "4"], tmp_path)
    for epoch in (0, 1):
        result = json.loads((out / "eval" / f"epoch-{epoch}" / "results.json").read_text())
        assert result["epoch"] == epoch and result["summary"]
    assert weights(out).keys() == weights(assets.model).keys()
    kl = [line["kl"] for line in metrics(out) if "kl" in line]
    assert abs(kl[0]) < 1e-5 and max(kl) > 1e-4  # the reference starts as the model and stays where it started
    # what the reference read on both ranks: each rank's own retain rows, and nothing of the evaluation
    state = json.loads((out / "trainer_state.json").read_text())
    steps = math.ceil(FORGET_RECORDS / 4)
    assert state["forward_tokens"] == expected_tokens(assets, steps, batch=4, micro=2, forget_rows=False) > 0
