"""One epoch of a run: its steps in order (joint, or interleaved forget and retain steps), each step's log line and
progress, and after each step the reasons to stop (the forget-NLL bound, the stop rule)."""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm

from obliviate.data.batching import fields_left_alone
from obliviate.train.sampling import (
    epoch_batches,
    interleaved_plan,
    repair_exact,
    retain_only_batches,
    retain_steps_per_forget,
)
from obliviate.train.schedule import make_schedule
from obliviate.train.state import Run, bars_off
from obliviate.train.step import accumulate, fmt_metrics, optimizer_step, repaired, retain_step


def train_epoch(run: Run, epoch: int) -> str | None:
    """One pass over the forget set (or what is left of ``--max_steps``); returns a reason to stop early.

    Under ``--schedule interleaved`` each forget step (forget term only) is followed by ``--retain_steps`` retain-only
    steps (fewer with ``--repair_exact``, once a retain batch is found repaired before its step), and the schedule
    restarts at every chunk of ``--chunk_size`` forget rows."""
    config = run.config
    micro, draws = epoch_batches(run, config, epoch)
    run.model.train()
    forget_groups = [
        ([micro[i] for i in range(s, min(s + run.accumulation, len(micro)))], draws[s : s + run.accumulation])
        for s in range(0, len(micro), run.accumulation)
    ]
    retain_steps = retain_steps_per_forget(config)
    interleaved, share = retain_steps > 0, repair_exact(config)
    plan = interleaved_plan(run, config, epoch) if interleaved else [("joint", i) for i in range(len(forget_groups))]
    retain_groups = retain_only_batches(run, config, epoch) if interleaved else []
    chunk_steps = math.ceil(config.chunk_size / config.batch_size) * (1 + retain_steps) if interleaved else 0
    progress, done, taken = _Progress(run, epoch), False, 0
    continued, run.continued = run.continued[: len(plan)], run.continued[len(plan) :]  # a trial may span epochs
    for position, (phase, index) in enumerate(plan):
        if chunk_steps and position % chunk_steps == 0:  # a new chunk of the forget set: the schedule restarts
            run.scheduler = make_schedule(getattr(run.optimizer, "optimizer", run.optimizer), config, chunk_steps)
        if position < len(continued):  # the range test's kept trial took this step already: count and log it
            _count_continued(run, epoch, phase if interleaved else None, continued[position])
            progress.step(continued[position].metrics)
            if config.max_steps and run.state["global_step"] >= config.max_steps:
                break  # the trial took the whole budget
            continue
        if phase == "retain" and share and not done:  # --repair_exact: is this cycle's repair done already?
            done, kept, tokens = repaired(run, retain_groups[index], share)
            run.state["tokens_seen"] += tokens  # the check's forward is work too
            if done:
                run.log(
                    {
                        "step": run.state["global_step"],
                        "epoch": epoch,
                        "repaired": {"retain_steps": taken, "kept": kept},
                    }
                )
        if phase == "retain" and done:  # the rest of this cycle's retain steps are left out
            progress.skip()
            if position + 1 == len(plan) or plan[position + 1][0] == "forget":
                reason = _stop_reason(run, epoch, {}, _check_due(run, epoch, plan, position, index))
                if reason is not None:
                    progress.close()
                    return reason
            continue
        clock = time.perf_counter()
        params = run.params  # the retain guard may have rescaled the retain weights at the last check
        if phase == "retain":
            step_metrics, tokens, checksums = retain_step(run, params, epoch, retain_groups[index])
            taken += 1
        else:
            forget_ids, retain_ids = forget_groups[index]
            forget_params = run.method.forget_only(params) if interleaved else params
            step_metrics, tokens, checksums = accumulate(run, run.method, forget_params, epoch, forget_ids, retain_ids)
            done, taken = False, 0
        lr = run.scheduler.get_last_lr()[0]  # the rate this step uses; after scheduler.step() it is the next one's
        optimizer_step(run, config)
        seconds = time.perf_counter() - clock
        _record_step(run, epoch, phase if interleaved else None, lr, step_metrics, (tokens, seconds), checksums)
        progress.step(step_metrics)
        due = _check_due(run, epoch, plan, position, index) if share else None
        reason = _stop_reason(run, epoch, step_metrics, due)
        if reason is not None:
            progress.close()
            return reason
        if config.max_steps and run.state["global_step"] >= config.max_steps:
            break  # the step budget is spent: the run ends here, as planned (not a stop)
    progress.close()
    return None


def _count_continued(run: Run, epoch: int, phase: str | None, taken) -> None:
    """A step the range test's kept trial took (:class:`~obliviate.train.lr_probe.TrialStep`) counted and logged as
    the run's own, at the rate it was taken at; the schedule moves on as after any step. The loop keeps a trial only
    where no check falls among its steps (``loop._trial_is_the_start``), so none is asked here."""
    if taken.phase != phase:
        raise RuntimeError(f"the range test's kept step is a {taken.phase} step where the plan has a {phase} step")
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    _record_step(run, epoch, phase, lr, taken.metrics, (taken.tokens, taken.seconds), taken.checksums)


def _check_due(run: Run, epoch: int, plan: list[tuple[str, int]], position: int, index: int) -> bool:
    """Under ``--repair_exact`` cycles differ in length, so the stop rule is asked at the end of every k-th cycle
    instead of every N optimizer steps: k is the number of whole cycles in its interval (``every`` / (1 +
    ``--retain_steps``), at least 1), counted in forget steps since the run began (the same on a resumed run).
    ``position`` is the plan's step just taken or left out, ``index`` its forget or retain step number."""
    if run.step_check is None or (position + 1 < len(plan) and plan[position + 1][0] != "forget"):
        return False
    retain_steps = retain_steps_per_forget(run.config)
    cycles = max(1, getattr(run.step_check, "every", 0) // (1 + retain_steps))
    in_epoch = index if plan[position][0] == "forget" else index // retain_steps  # the cycle's forget step, from 0
    return ((epoch - 1) * run.forget_steps + in_epoch + 1) % cycles == 0


class _Progress:
    """The epoch's progress bar (main process only), with the step's metrics and the epoch's tokens/s."""

    def __init__(self, run: Run, epoch: int) -> None:
        self.run, self.started, self.tokens_at_start = run, time.perf_counter(), run.state["tokens_seen"]
        self.bar = tqdm(
            total=run.steps_per_epoch,
            desc=f"{run.method.name} epoch {epoch}",
            disable=bars_off(run.accelerator),
            leave=False,
            dynamic_ncols=True,
        )

    def skip(self) -> None:
        """A planned step left out (its cycle's repair ended early)."""
        self.bar.update(1)

    def step(self, step_metrics: dict[str, float]) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        speed = (self.run.state["tokens_seen"] - self.tokens_at_start) / elapsed
        self.bar.set_postfix_str(fmt_metrics({**step_metrics, "tok/s": speed}))
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


TIMING_KEYS = ("time", "step_seconds", "tokens_per_second")
"""The keys of a ``metrics.jsonl`` line that measure the clock, not the training: a resumed or repeated run writes
every other key identically."""


def _record_step(run: Run, epoch: int, phase: str | None, lr: float, step_metrics, counted, checksums) -> None:
    """Count the step and write its ``metrics.jsonl`` line, with the step's seconds and tokens/s (tokens of every
    process over the step's wall time, from its first forward to the end of the optimizer step)."""
    tokens, seconds = counted
    run.state["global_step"] += 1
    run.state["tokens_seen"] += tokens
    record = {
        "step": run.state["global_step"],
        "epoch": epoch,
        **({"phase": phase} if phase is not None else {}),
        "lr": lr,
        **step_metrics,
        "tokens_seen": run.state["tokens_seen"],
        "step_seconds": round(seconds, 6),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
    }
    if checksums is not None:
        record["retain_draw_checksums"] = checksums
    run.log(record)


def _stop_reason(run: Run, epoch: int, step_metrics: dict[str, float], due: bool | None = None) -> str | None:
    """Why the run stops after this step: the forget-NLL bound, or the stop rule; None to go on. ``due`` (None: the
    rule's own every-N-steps) says whether the stop rule checks now."""
    forget_nll, bound = step_metrics.get("forget_nll"), run.stop_forget_nll
    if bound is not None and forget_nll is not None and forget_nll > bound:
        return f"forget NLL {forget_nll:.3f} passed --stop_forget_nll {bound} at epoch {epoch}"
    return _step_check(run, epoch, due)


def _step_check(run: Run, epoch: int, due: bool | None = None) -> str | None:
    """Ask the run's stop rule (every process asks; the model is the same everywhere) and log what it measured."""
    if run.step_check is None or due is False:
        return None
    model = run.accelerator.unwrap_model(run.model)
    checks_before, clock = len(run.step_check.history), time.perf_counter()
    step = run.state["global_step"]
    reason = (
        run.step_check(model, run.tokenizer, step)
        if due is None
        else run.step_check(model, run.tokenizer, step, due=True)
    )
    if run.timing:
        run.timing["stop_check_seconds"] += time.perf_counter() - clock
    if len(run.step_check.history) > checks_before:
        run.log({"step": run.state["global_step"], "epoch": epoch, "stop_check": run.step_check.history[-1]})
        # what the rule decided, for a resume (checkpoints save run.state)
        run.state["stop_rule"] = {
            "inside": sorted(getattr(run.step_check, "inside", ())),
            "retain_scale": getattr(run.step_check, "retain_scale", 1.0),
        }
    _follow_stop_rule(run)
    return reason


def _follow_stop_rule(run: Run) -> None:
    """What the stop rule's last check decided for the steps after it: ``--field_stop``'s fields left alone, and
    ``--retain_guard``'s factor on the retain weights."""
    if getattr(run.config, "field_stop", False):
        run.fields_done = fields_left_alone(
            frozenset(getattr(run.step_check, "inside", frozenset())),
            frozenset(getattr(run.step_check, "tracked", frozenset())),
        )
        if getattr(run.config, "field_stop_words", "all") == "checked":
            run.fields_waived = frozenset(getattr(run.step_check, "saturated_fields", frozenset()))
    scale = getattr(run.step_check, "retain_scale", 1.0)
    if run.base_params is not None and scale != run.retain_scale:
        run.params, run.retain_scale = run.method.scale_retain(run.base_params, scale), scale


def resume_stop_rule(run: Run) -> None:
    """On a resume, give the stop rule back what its last check before the checkpoint decided (a checkpoint of an
    older run may lack it: the rule then starts undecided, as before)."""
    decided = run.state.get("stop_rule")
    if run.step_check is None or not isinstance(decided, dict):
        return
    run.step_check.inside = frozenset(decided.get("inside", ()))
    run.step_check.retain_scale = float(decided.get("retain_scale", 1.0))
    _follow_stop_rule(run)
