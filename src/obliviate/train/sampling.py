"""Which rows each optimizer step reads: the forget order, the retain rows drawn beside each forget micro-batch, and
the interleaved schedule's plan. Every order is a function of ``(seed, epoch)``, so a resumed run continues it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from obliviate.config import TrainConfig
from obliviate.data.batching import forget_order, matched_retain_draws, micro_batches_for_rank, retain_draws

if TYPE_CHECKING:
    from obliviate.train.state import Run


def epoch_batches(run: Run, config: TrainConfig, epoch: int) -> tuple[list[list[int]], list[list[int] | None]]:
    """This process's forget micro-batches of ``epoch`` and the retain rows paired with each.

    Also points ``run.forget`` at the epoch's relabelled draw and ``run.paired`` at its fake-value draws
    (``--fakes_per_step`` of them), where the method has them. The same ``(seed, epoch)`` gives the same batches
    on every call: a resumed run continues the very order.
    """
    acc = run.accelerator
    if run.forget_draws:  # a relabelling method: epoch e trains on draw e mod n, a fresh stranger each time
        run.forget = run.forget_draws[(epoch - 1) % len(run.forget_draws)]
    if run.paired_draws:  # a paired method: epoch e compares with its own fakes_per_step draws of fresh fakes
        per_step = fakes_per_step(config)
        first = ((epoch - 1) % max(1, len(run.paired_draws) // per_step)) * per_step
        run.paired = [run.paired_draws[(first + k) % len(run.paired_draws)] for k in range(per_step)]
    grouped = config.group_by_length
    lengths = [len(e.ids) for e in run.forget] if grouped else None
    order = forget_order(len(run.forget), run.forget_steps, config.batch_size, config.seed, epoch, lengths)
    micro = micro_batches_for_rank(order, acc.num_processes, acc.process_index, config.micro_batch_size)
    if run.retain and getattr(config, "retain_sampling", "uniform") == "matched":
        return micro, matched_retain_draws(
            run.forget_keys, run.retain_keys, micro, config.seed, epoch, acc.process_index
        )
    draws = (
        retain_draws(
            len(run.retain),
            [len(m) for m in micro],
            config.seed,
            epoch,
            acc.process_index,
            lengths=[len(e.ids) for e in run.retain] if grouped else None,
            forget_widths=[max(len(run.forget[i].ids) for i in m) for m in micro] if grouped else None,
        )
        if run.retain
        else [None] * len(micro)
    )
    return micro, draws


DEFAULT_RETAIN_STEPS = 7
"""Retain-only steps per forget step under ``--schedule interleaved`` when neither ``--retain_steps`` nor the
method's preset sets them: AILS-NTUA's seven (SemEval-2025 Task 4)."""


def retain_steps_per_forget(config: TrainConfig) -> int:
    """Retain-only steps after each forget step: ``--retain_steps`` (unset: :data:`DEFAULT_RETAIN_STEPS`) under
    ``--schedule interleaved``, else 0."""
    if getattr(config, "schedule", "joint") != "interleaved":
        return 0
    steps = getattr(config, "retain_steps", None)
    return DEFAULT_RETAIN_STEPS if steps is None else steps


def repair_exact(config: TrainConfig) -> float:
    """The share of its starting exact rows a retain batch must reproduce for a cycle's repair to end
    (``--repair_exact``); 0 (off) unless the schedule is interleaved and the option is set."""
    value = getattr(config, "repair_exact", None)
    return 0.0 if value is None or not retain_steps_per_forget(config) else float(value)


def fakes_per_step(config: TrainConfig) -> int:
    """Fake-value copies each forget value is compared with per step (``--fakes_per_step``; unset: 1)."""
    value = getattr(config, "fakes_per_step", None)
    return 1 if value is None else value


def interleaved_plan(run: Run, config: TrainConfig, epoch: int) -> list[tuple[str, int]]:
    """The epoch's steps in order under ``--schedule interleaved``: ``("forget", i)`` for forget step ``i``, each
    followed by ``("retain", j)`` for ``--retain_steps`` retain steps ``j``, counted through the epoch."""
    plan: list[tuple[str, int]] = []
    retain_steps = retain_steps_per_forget(config)
    for i in range(run.forget_steps):
        plan.append(("forget", i))
        plan.extend(("retain", i * retain_steps + k) for k in range(retain_steps))
    return plan


def retain_only_batches(run: Run, config: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """This process's retain micro-batches of each retain-only step of ``epoch`` (a seeded order of its own):
    ``--retain_batch_size`` rows a step (unset: ``--batch_size``), in as many micro-batches as a forget step."""
    from obliviate.train.parallel import retain_micro_batch_size

    acc = run.accelerator
    steps = run.forget_steps * retain_steps_per_forget(config)
    micro_size = retain_micro_batch_size(config, run.accumulation)
    step_size = micro_size * run.accumulation * acc.num_processes
    order = forget_order(len(run.retain), steps, step_size, config.seed + 1, epoch)
    micro = micro_batches_for_rank(order, acc.num_processes, acc.process_index, micro_size)
    return [micro[i : i + run.accumulation] for i in range(0, len(micro), run.accumulation)]
