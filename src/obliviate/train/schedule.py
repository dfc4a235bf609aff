"""How long a run is and how its rate moves: the planned epochs and steps, which epochs write a checkpoint, AdamW
over the trainable parameters and its warm-up schedule (restarted per chunk under ``--schedule interleaved``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from transformers import get_scheduler

from obliviate.config import TrainConfig
from obliviate.errors import ConfigError

if TYPE_CHECKING:
    from obliviate.train.state import Run


def planned_length(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """``(epochs, optimizer steps)`` the run plans: ``--epochs`` passes, cut at ``--max_steps`` where that is set."""
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    return math.ceil(total / steps_per_epoch), total


def checkpoint_due(config: TrainConfig, epoch: int, last_epoch: int) -> bool:
    """Whether epoch ``epoch`` writes ``checkpoints/epoch-N``: every k-th epoch, k chosen so that a run writes at
    most ``--max_checkpoints`` of them, and always the last epoch."""
    if not config.save_checkpoints:
        return False
    every = math.ceil(last_epoch / config.max_checkpoints)
    return epoch % every == 0 or epoch >= last_epoch


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int, lr: float | None = None):
    """AdamW over the trainable parameters and its warm-up + constant / linear / cosine schedule.

    ``lr`` (default ``config.lr``) is the peak rate; an unlearning run whose rate is left to the range test builds
    with a placeholder and calls :func:`reset_schedule` once the test has chosen.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("no parameter is trainable: check --trainable_layers / --trainable_modules / --lora_r")
    lr = lr if lr is not None else config.lr
    optimizer = torch.optim.AdamW(trainable, lr=lr if lr is not None else 1e-5, weight_decay=config.weight_decay)
    return optimizer, make_schedule(optimizer, config, total_steps)


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    return get_scheduler(
        "constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def reset_schedule(run: Run, config: TrainConfig, lr: float) -> None:
    """Start the optimizer afresh at peak rate ``lr``: no moments, and a new schedule from step 0."""
    inner = getattr(run.optimizer, "optimizer", run.optimizer)  # accelerate wraps it
    inner.state.clear()
    for group in inner.param_groups:
        group["lr"] = group["initial_lr"] = lr
    run.scheduler = make_schedule(inner, config, run.total_steps)
