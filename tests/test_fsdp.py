"""FSDP on two CPU processes (gloo) under ``accelerate launch``, end to end, checked against DDP under torchrun.

Why the two runs must agree: FSDP and DDP are the same synchronous data-parallel step. Both launches split the
forget order over the two ranks the same way and draw each rank's retain rows from ``(seed, epoch, rank)``, so
every rank sees the same rows in both runs. DDP all-reduces the gradient mean; FSDP reduce-scatters the same mean
and each rank updates its shard. AdamW is elementwise, so updating shards changes nothing, and gradient clipping
uses the global norm in both (FSDP sums the shards' squared norms). The frozen reference of ``ga_kl`` is the same
starting model, whole under DDP and sharded under FSDP. What differs is only the order of float operations: FSDP
runs forget and retain in one forward padded to a common width (the loop's joint forward), the matmuls have other
shapes, and flat parameters sum gradients in another order. Measured on this project's CPUs over 6 steps at
lr 1e-2 (weights moved up to 0.06): losses agreed to 5e-7, KL to 3e-8, weights to 6e-6. The tolerances below
leave 15-100x of room for other CPUs' kernels while staying far below what one different row, a skipped
gradient reduction or a wrong reference would change (about lr = 1e-2 per weight and step).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import FORGET_RECORDS, metrics, unlearn_argv, weights
from obliviate.cli.main import main
from obliviate.train import checkpoint as ckpt
from test_distributed import free_port, launch, torchrun

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "fsdp_cpu.yaml"
WORLD, MICRO, BATCH, EPOCHS, SEED = 2, 2, 8, 2, 42  # accumulation 2: 3 steps per epoch on 18 forget rows
WEIGHT_ATOL = 1e-4
LOSS_REL, LOSS_ABS = 1e-5, 1e-6
TIED_ALIAS = ("lm_head.weight", "model.embed_tokens.weight")
"""FSDP's gathered state dict clones every name, the tied head included; save_pretrained then keeps both."""


def accelerate_launch(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``obliviate`` under ``accelerate launch`` with the CPU FSDP config (without ``--cpu``: that starts one
    process alone), on a free port, with a timeout."""
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(CPU_CONFIG),
        "--num_processes",
        str(WORLD),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
    ]
    return launch(command, argv, cwd)


@pytest.mark.slow  # two launches and an evaluation of three epochs: about a minute on two shared cores
def test_fsdp_on_cpu_matches_ddp_and_its_checkpoints_evaluate(assets, tmp_path):
    extra = ("--method", "ga_kl", "--epochs", str(EPOCHS), "--micro_batch_size", str(MICRO))
    extra += ("--batch_size", str(BATCH), "--seed", str(SEED))
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    done = accelerate_launch(unlearn_argv(assets, fsdp, *extra), tmp_path)
    assert done.stdout.count("unlearned with ga_kl") == 1  # one summary per launch
    torchrun(unlearn_argv(assets, ddp, *extra), tmp_path)

    # two ranks ran, each with its own retain draw, and the same draws as under DDP
    steps = EPOCHS * math.ceil(FORGET_RECORDS / BATCH)
    logged, expected = metrics(fsdp), metrics(ddp)
    assert [line["step"] for line in logged] == [line["step"] for line in expected] == list(range(1, steps + 1))
    for line, reference in zip(logged, expected):
        first, second = line["retain_draw_checksums"]
        assert first != second
        assert line["retain_draw_checksums"] == reference["retain_draw_checksums"]
        assert (line["epoch"], line["lr"], line["tokens_seen"]) == (
            reference["epoch"],
            reference["lr"],
            reference["tokens_seen"],
        )
        for key in ("loss", "forget_nll", "retain_nll", "kl"):
            assert line[key] == pytest.approx(reference[key], rel=LOSS_REL, abs=LOSS_ABS), (line["step"], key)
    assert logged[-1]["forget_nll"] > logged[0]["forget_nll"] + 0.5  # it did unlearn: the comparison is not idle

    # sharded for real: a checkpoint keeps no optimizer state under FSDP (a shard is no use to --resume), under DDP
    # it does; an FSDP config that silently trained as DDP (what accelerate does on CPU unaided) fails here
    fsdp_checkpoints, ddp_checkpoints = ckpt.list_checkpoints(fsdp), ckpt.list_checkpoints(ddp)
    assert [epoch for epoch, _ in fsdp_checkpoints] == [epoch for epoch, _ in ddp_checkpoints] == [1, 2]
    for (_, sharded), (_, whole) in zip(fsdp_checkpoints, ddp_checkpoints):
        assert not (sharded / "optimizer.pt").exists() and (whole / "optimizer.pt").is_file()
        assert {p.name for p in sharded.glob("rng_state_*")} == {
            f"rng_state_{rank}.{kind}" for rank in range(WORLD) for kind in ("safetensors", "json")
        }

    # the gathered weights: final and per checkpoint, against DDP's
    for name in ("model.safetensors", *(f"checkpoints/epoch-{epoch}/model.safetensors" for epoch in (1, 2))):
        gathered, reference = weights(fsdp, name), weights(ddp, name)
        assert reference.keys() <= gathered.keys() and gathered.keys() - reference.keys() <= {TIED_ALIAS[0]}
        if TIED_ALIAS[0] in gathered:
            assert torch.equal(gathered[TIED_ALIAS[0]], gathered[TIED_ALIAS[1]])
        for key, value in reference.items():
            torch.testing.assert_close(gathered[key], value, atol=WEIGHT_ATOL, rtol=0, msg=f"{name}: {key}")
    final, last = weights(fsdp), weights(fsdp, "checkpoints/epoch-2/model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[key], last[key]) for key in final)

    # the FSDP run's checkpoints load and evaluate (obliviate evaluate --checkpoints)
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoints", str(fsdp), "--forget_dir", str(assets.forget)]
    argv += ["--retain_dir", str(assets.retain), "--holdout_dir", str(assets.data / "holdout")]
    assert main([*argv, "--output_dir", str(out), "--max_new_tokens", "24"]) == 0
    evaluated = json.loads((out / "results.json").read_text())["epochs"]
    assert [(e["epoch"], e["path"]) for e in evaluated] == [(0, str(assets.model))] + [
        (epoch, str(path)) for epoch, path in fsdp_checkpoints
    ]
    assert all("forget/rougeL_recall" in e["summary"] for e in evaluated)
    assert (out / "epoch-2" / "results.json").is_file() and (out / "best.json").is_file()
