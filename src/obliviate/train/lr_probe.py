"""The learning-rate range test behind an unlearning run whose ``--lr`` is unset.

A rate that works for a 1.6 M-parameter model does nothing to a 7B one, and one that works for a 5-step epoch
overshoots on a 94-step one. So the run measures instead of guessing: from the starting weights it takes
``steps`` optimizer steps of the method's own objective, the run's first ones (its first forget batches, in its
order, into its second epoch where the first is shorter; under ``--schedule interleaved``, ``steps`` whole cycles:
each forget step with its retain steps), at each candidate rate from the largest down, and measures two things on
fixed rows (eval mode, no gradient):

- the forget NLL (of the tokens the forget term scores) must rise by at least :data:`MIN_FORGET_RISE` nats:
  the rate moves the forget set;
- the retain NLL must rise by at most ``retain_bound`` nats (:data:`RETAIN_BOUND`), and the retain rows' exact match
  (teacher-forced: every answer token the most likely one, which is what greedy decoding reproduces word for word)
  must keep :data:`RETAIN_EXACT` of its start: it leaves everyone else alone. The NLL alone is too lax: on LUME
  Task2 (tiny), contrast's chosen rate kept the retain NLL within 0.1 nats while its exact match fell from 1.0 to
  0.77 within 6 steps and to 0.42 by step 12.

A trial is measured after its first step (cycle) too, and ends there, failed, where the retain rows are already
outside the bound (:data:`SCREEN_AFTER`): a rate that breaks them at once is not trained on for the rest.

With ``settle`` above 1 (``--lr_probe_settle``) the retain rows are judged by their mean over the trial's last
``settle`` steps (cycles) instead of after its last alone: under the interleaved schedule they swing by a row or two
from cycle to cycle, as each forget step pushes and its retain steps repair, and one reading judges a rate by where
in that swing the trial happens to end. The screen after the first step then ends a trial only outside a bound
:data:`SCREEN_WIDTH` times as wide (a dip the later cycles may repair is what the settled judgement is for).

The largest rate that does both is taken. If none moves the forget set within the bound, the largest rate
within the bound is taken; if none is within it, the smallest candidate. After every candidate the weights and the
optimizer go back to where they started, so the run itself starts from the model it was given; except that with
``keep`` the chosen trial (always the last one tried) is kept: its steps are the run's first steps, the very ones
the run would take at that rate (the loop decides when that holds: a constant rate, no check or checkpoint among
them), and the run goes on from them instead of taking them again. Every trial is logged (``metrics.jsonl``, a line
``{"lr_probe": ...}``) and the choice is printed. ``docs/METHODS.md`` describes the rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from obliviate.data.batching import collate
from obliviate.errors import ConfigError, TrainingError
from obliviate.losses.common import answer_exact, token_logprobs
from obliviate.train.checkpoint import rng_state, set_rng_state
from obliviate.train.parallel import SHARDED

CANDIDATES: tuple[float, ...] = tuple(round(10 ** (-k / 4), 12) for k in range(8, 25))
"""Candidate peak rates, a quarter of a decade apart (x 1.78): 1e-2, 5.62e-3, 3.16e-3, ..., 1e-6."""

MIN_FORGET_RISE = 0.1
"""Nats the forget NLL must rise over the probe for a rate to count as moving the forget set."""

RETAIN_BOUND = 0.1
"""Nats the retain NLL may rise over the probe's few steps (the run itself may drift further: ``--stop_retain_bound``
bounds that)."""

RETAIN_EXACT = 0.95
"""Share of the retain rows' starting exact match a rate must keep over the probe."""

SCREEN_AFTER = 1
"""A trial is also measured after this many of its steps (cycles), and ends there, failed, where the retain rows
are already outside the bound (``settle`` above 1: a bound :data:`SCREEN_WIDTH` times as wide): the rest of its steps
are not taken. In the eighth session's traces (``docs/METHODS.md``, the range test) every trial outside the bound
after its first cycle was outside it after its last too; in the sixteenth's, on the targets of today's tables, two
were back inside after their fifth (a dip and its repair), which is what ``settle`` is for."""

SCREEN_WIDTH = 3.0
"""With ``settle`` above 1, the screen's bound is this many times the test's: retain NLL up by at most 3 ×
``retain_bound`` and exact match down by at most 3 × (1 − :data:`RETAIN_EXACT`) after the first step."""

MEASURE_ROWS = 32
"""Forget and retain rows (the first ones of the first batches) the NLLs are measured on, by default
(``--lr_probe_rows``)."""


@dataclass
class TrialStep:
    """One optimizer step of a trial, as the run would log it: its phase (``forget``/``retain`` under the
    interleaved schedule, else None), its metrics, the tokens it processed on all processes, its seconds and the
    retain-draw checksums (None where it drew none)."""

    phase: str | None
    metrics: dict[str, float]
    tokens: int
    seconds: float
    checksums: list[int] | None = None


@dataclass
class ProbeResult:
    """The chosen rate, why, every trial ``{lr, forget_rise, retain_rise, retain_exact_kept, passed, tokens}`` (and
    ``continued: true`` on a kept one, ``screened_after`` on one the screen ended), and the tokens the discarded
    trials' optimizer steps processed on all processes (their forward and backward passes, counted as the run counts
    its own steps': they are part of what the run costs). ``continued``: the kept trial's steps, which the run goes
    on from and counts as its own; empty where every trial was put back."""

    lr: float
    reason: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    continued: list[TrialStep] = field(default_factory=list)


def keeps_retain(trial: dict[str, float], retain_bound: float, width: float = 1.0) -> bool:
    """Whether a trial left the retain rows alone: NLL within the bound and exact match kept (see module docstring).
    ``retain_exact_kept`` is the share of the starting exact match left (1.0 where nothing was exact to begin with).
    ``width`` widens both sides of the bound (the screen under ``settle``: :data:`SCREEN_WIDTH`)."""
    exact = RETAIN_EXACT if width == 1.0 else 1.0 - width * (1.0 - RETAIN_EXACT)
    return trial["retain_rise"] <= width * retain_bound and trial.get("retain_exact_kept", 1.0) >= exact


def settled(points: Sequence[tuple[float, tuple[float, float]]]) -> tuple[float, tuple[float, float]]:
    """One measurement from a trial's last few ``(forget NLL, (retain NLL, retain exact match))``: the forget NLL
    after the last, the retain NLL and exact match averaged over all of them (where they settle)."""
    forget = points[-1][0]
    retain_nll = sum(p[1][0] for p in points) / len(points)
    exact = sum(p[1][1] for p in points) / len(points)
    return forget, (retain_nll, exact)


def choose(trials: Sequence[dict[str, float]], retain_bound: float) -> tuple[float, str]:
    """The rule, on trials measured from the largest rate down (see the module docstring)."""
    within = [t for t in trials if keeps_retain(t, retain_bound)]
    moving = [t for t in within if t["forget_rise"] >= MIN_FORGET_RISE]
    if moving:
        best = max(moving, key=lambda t: t["lr"])
        return best["lr"], (
            f"largest rate whose forget NLL rose >= {MIN_FORGET_RISE} with retain NLL within {retain_bound} and "
            f"retain exact match kept to {RETAIN_EXACT:g} of its start"
        )
    if within:
        best = max(within, key=lambda t: t["lr"])
        return best[
            "lr"
        ], f"no rate moved the forget set within the retain bound: largest within it ({best['lr']:.3g})"
    return min(t["lr"] for t in trials), "every rate broke the retain bound: the smallest candidate"


def probe_lr(
    run,
    steps: int,
    retain_bound: float = RETAIN_BOUND,
    log=None,
    measure_rows: int = MEASURE_ROWS,
    keep: bool = False,
    trace_cycles: bool = False,
    settle: int = 1,
) -> ProbeResult:
    """Run the range test on a prepared run (:func:`obliviate.train.loop.setup`); the weights are left unchanged,
    unless ``keep``: then the chosen trial's weights, optimizer moments and the steps it took stay
    (:attr:`ProbeResult.continued`) where none of them had a non-finite loss or a forget NLL past the run's
    ``--stop_forget_nll`` (a screened trial is kept only as the smallest candidate: its one cycle).

    Every trial starts from the random state the run started with (dropout masks, where the model has dropout), and
    so does the run where every trial is put back: the kept trial's steps, and the run's, draw what a run given the
    rate would. The grad scaler (``--mixed_precision fp16``) goes back to its start in the same way. Every NLL is
    summed over all processes, so every process makes the same decisions.

    Candidates are tried from the largest down, and the search ends at the first rate that leaves the retain rows
    alone: it is the choice whether or not it moves the forget set, since a smaller rate moves it less. The chosen
    rate is thus always the last one tried (where none leaves them alone, the last is the smallest candidate).

    ``settle``: the retain rows are judged by their mean over each trial's last ``settle`` steps (cycles; at most
    ``steps``), and the screen's bound is :data:`SCREEN_WIDTH` times as wide where it is above 1 (see the module
    docstring). Each trial logs ``settled_over`` then.

    ``trace_cycles`` (a diagnostic; ``benchmarks/probe_lr_pick.py``): every trial also measures its rows after each
    of its steps (cycles), and logs ``cycles``: ``[forget_rise, retain_rise, retain_exact_kept]`` per step. The
    measurement is forwards in eval mode; the training is the same.

    Raises:
        ConfigError: under DeepSpeed or FSDP, whose sharded weights this test cannot put back: pass ``--lr``.
    """
    from obliviate.train.schedule import reset_schedule

    if run.accelerator.distributed_type in SHARDED:
        raise ConfigError("the learning-rate range test (unset --lr) runs without DeepSpeed / FSDP: pass --lr")
    records = run.forget  # the true forget records: a relabelling method trains on stand-ins, measured on these
    epochs = run_order(run, steps)  # whole epochs: the first is the one the rows are measured from
    order = epochs[:steps]
    first = epochs[0].examples, epochs[0].paired
    run.forget, run.paired = first
    micro = [m for step in epochs[: run.forget_steps] for m in step.forget_ids]  # the first epoch's, in order
    rows = (records, [i for batch in micro for i in batch][:measure_rows])
    retain_rows = list(range(min(measure_rows, len(run.retain))))
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    before = _nll(run, *rows)[0], _nll(run, run.retain, retain_rows)
    rewind = _rewinder(run)
    trials: list[dict[str, Any]] = []
    continued: list[TrialStep] = []
    settle = max(1, min(settle, len(order)))
    width = SCREEN_WIDTH if settle > 1 else 1.0  # the screen's bound
    try:
        for lr in CANDIDATES:
            reset_schedule(run, run.config, lr)
            rewind()
            trace: list | None = [] if trace_cycles else None
            screen = (before, retain_bound, width) if retain_rows else None
            after, taken, screened = _train_at(run, lr, order, rows, retain_rows, trace, screen, settle)
            tokens = sum(s.tokens for s in taken)
            trial = {"lr": lr, **_rises(before, after)}
            trial["passed"] = keeps_retain(trial, retain_bound) and trial["forget_rise"] >= MIN_FORGET_RISE
            trial = {k: (round(v, 6) if k != "lr" and isinstance(v, float) else v) for k, v in trial.items()}
            trial["tokens"] = tokens
            if settle > 1 and not screened:
                trial["settled_over"] = settle  # its retain figures: the mean over its last `settle` steps
            if screened:
                trial["screened_after"] = SCREEN_AFTER  # outside the bound already: its other steps not taken
            if trace is not None:
                trial["cycles"] = [[round(value, 6) for value in _rises(before, point).values()] for point in trace]
            last = keeps_retain(trial, retain_bound) or lr == CANDIDATES[-1]  # the choice (see the docstring)
            if keep and last and _can_go_on(run, taken, after):
                trial["continued"], continued = True, taken
            else:
                _put_back(trainable, start)
            trials.append(trial)
            if log is not None:
                log({"step": 0, "lr_probe": trial})
            if last:
                break  # a smaller rate moves the forget set less still: this one is the choice either way
    except BaseException:
        _put_back(trainable, start)
        raise
    finally:  # the run's first epoch points them where it needs them again
        run.forget, run.paired = first
    lr, reason = choose(trials, retain_bound)
    if not continued:  # the run starts from its own weights, with fresh moments and schedule at the chosen rate
        reset_schedule(run, run.config, lr)
        rewind()
    spent = sum(t["tokens"] for t in trials if not t.get("continued"))
    return ProbeResult(lr=lr, reason=reason, trials=trials, tokens=spent, continued=continued)


def _rises(before, after) -> dict[str, float]:
    """``{forget_rise, retain_rise, retain_exact_kept}`` between two measurements ``(forget NLL, (retain NLL,
    exact))``: a non-finite forget rise (the rate diverged) reads infinite; without retain rows (NaN NLLs) nothing
    rose and everything was kept."""
    forget_rise, retain_rise = after[0] - before[0], after[1][0] - before[1][0]
    kept = after[1][1] / before[1][1] if before[1][1] > 0 else 1.0
    return {
        "forget_rise": forget_rise if math.isfinite(forget_rise) else math.inf,
        "retain_rise": 0.0 if math.isnan(before[1][0]) else retain_rise,
        "retain_exact_kept": kept,
    }


def _can_go_on(run, taken: list[TrialStep], after) -> bool:
    """Whether the run may go on from a trial's end: every step of it finite, and none whose forget NLL passed the
    run's ``--stop_forget_nll`` (the run would have stopped there)."""
    bound = getattr(run, "stop_forget_nll", None)
    return math.isfinite(after[0]) and not any(
        bound is not None and s.metrics.get("forget_nll", -math.inf) > bound for s in taken
    )


@dataclass
class OrderStep:
    """One forget step of the run's order: the rows its epoch trains on (``examples``, and ``paired``, its fake-value
    draws), its forget micro-batches and their retain rows, and the retain-only steps that follow it under
    ``--schedule interleaved`` (each a list of micro-batches)."""

    examples: list
    paired: list
    forget_ids: list[list[int]]
    retain_ids: list[list[int] | None]
    retain_groups: list[list[list[int]]]


def run_order(run, steps: int) -> list[OrderStep]:
    """The run's forget steps in the order the run takes them (epoch after epoch, each epoch's own batches, draws and
    retain steps: :mod:`~obliviate.train.sampling`), as many whole epochs as its first ``steps`` take, so that a
    trial is the run's first steps. Points ``run.forget`` and ``run.paired`` at the last epoch's."""
    from obliviate.train.sampling import epoch_batches, retain_only_batches, retain_steps_per_forget

    retain_steps = retain_steps_per_forget(run.config)
    order: list[OrderStep] = []
    for epoch in range(1, math.ceil(steps / run.forget_steps) + 1):
        micro, draws = epoch_batches(run, run.config, epoch)  # points run.forget and run.paired at the epoch's
        retain_groups = retain_only_batches(run, run.config, epoch) if retain_steps else []
        for i in range(0, len(micro), run.accumulation):
            k = i // run.accumulation
            order.append(
                OrderStep(
                    run.forget,
                    run.paired,
                    micro[i : i + run.accumulation],
                    draws[i : i + run.accumulation],
                    retain_groups[k * retain_steps : (k + 1) * retain_steps],
                )
            )
    return order


def _train_at(
    run,
    lr: float,
    order: list[OrderStep],
    rows,
    retain_rows: list[int],
    trace: list | None = None,
    screen=None,
    settle: int = 1,
):
    """The optimizer steps of ``order`` with the run's objective at peak rate ``lr``, in train mode as the run takes
    them; then ``((forget NLL, (retain NLL, retain exact match)), the steps taken, screened)`` (infinite NLLs and no
    exact match where the loss went non-finite: the rate diverges; each :class:`TrialStep`'s tokens are what it
    processed on all processes, a ``--repair_exact`` check's forward counted with the step after it).

    ``screen``: ``(the starting measurement, the retain bound, its width)``: after :data:`SCREEN_AFTER` steps
    (cycles) of a longer trial the rows are measured, and a trial whose retain rows are outside the bound (widened
    ``width`` times) ends there (``screened`` True, the measurement the one returned).

    ``settle``: the measurement returned is :func:`settled` over the rows as they stand after each of the last
    ``settle`` steps (cycles).

    Under ``--schedule interleaved`` a step is a whole cycle, as the run takes it: the forget step (forget term
    only), then its ``--retain_steps`` retain-only steps (fewer under ``--repair_exact``, as in the run), so the
    retain rows are measured after their repair, not between a forget step and it."""
    from obliviate.train.sampling import repair_exact, retain_steps_per_forget
    from obliviate.train.step import accumulate, optimizer_step, repaired, retain_step

    retain_steps, share = retain_steps_per_forget(run.config), repair_exact(run.config)
    params = run.method.forget_only(run.params) if retain_steps else run.params
    for group in getattr(run.optimizer, "optimizer", run.optimizer).param_groups:
        group["lr"] = lr  # the probe runs at the peak rate, whatever warm-up the run itself will have
    taken: list[TrialStep] = []
    points: list = []  # the rows after each of the last `settle` cycles
    phase = "forget" if retain_steps else None
    run.model.train()
    try:
        for cycle, step in enumerate(order, 1):
            run.forget, run.paired = step.examples, step.paired
            clock = time.perf_counter()
            metrics, tokens, checksums = accumulate(run, run.method, params, 0, step.forget_ids, step.retain_ids)
            optimizer_step(run, run.config, schedule=False)
            taken.append(TrialStep(phase, metrics, tokens, time.perf_counter() - clock, checksums))
            for group in step.retain_groups:
                checked = 0
                if share:
                    done, _, checked = repaired(run, group, share)
                    if done:
                        taken[-1].tokens += checked  # the check's forward is work too, as in the run
                        break
                clock = time.perf_counter()
                metrics, tokens, checksums = retain_step(run, run.params, 0, group)
                optimizer_step(run, run.config, schedule=False)
                taken.append(TrialStep("retain", metrics, tokens + checked, time.perf_counter() - clock, checksums))
            screening = screen is not None and cycle == SCREEN_AFTER < len(order)
            settling = settle > 1 and cycle > len(order) - settle
            if trace is not None or screening or settling:  # the rows as they stand after this cycle
                point = (_nll(run, *rows)[0], _nll(run, run.retain, retain_rows))
                if trace is not None:
                    trace.append(point)
                if settling:
                    points.append(point)
                if screening and not keeps_retain(_rises(screen[0], point), screen[1], screen[2]):
                    return point, taken, True
    except TrainingError:
        run.optimizer.zero_grad(set_to_none=True)
        return (math.inf, (math.inf, 0.0)), taken, False
    if points:
        return settled(points), taken, False
    return (_nll(run, *rows)[0], _nll(run, run.retain, retain_rows)), taken, False


@torch.no_grad()
def _put_back(trainable: list[torch.nn.Parameter], start: list[torch.Tensor]) -> None:
    for param, saved in zip(trainable, start):
        param.copy_(saved)


def _rewinder(run):
    """A function that puts the random state, and the grad scaler where one is in use (``--mixed_precision
    fp16``), back to where they are now."""
    random_start = rng_state()
    scaler = getattr(run.accelerator, "scaler", None)
    scaler_start = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None

    def rewind() -> None:
        set_rng_state(*random_start)
        if scaler_start is not None:
            scaler.load_state_dict(scaler_start)

    return rewind


@torch.no_grad()
def _nll(run, examples, rows: list[int], batch_size: int = 16) -> tuple[float, float]:
    """Token-mean NLL of the scored tokens of ``examples[rows]`` in eval mode, and the share of those rows whose every
    scored token is the most likely next token (teacher-forced exact match), both over every process's rows (the
    same numbers on every process); nan and 0 without rows."""
    acc = run.accelerator
    if not rows and acc.num_processes == 1:
        return math.nan, 0.0
    model = run.model
    was_training = model.training
    model.eval()
    total, count, exact = 0.0, 0.0, 0
    try:
        for begin in range(0, len(rows), batch_size):
            batch = collate([examples[i] for i in rows[begin : begin + batch_size]], run.tokenizer.pad_token_id)
            batch = batch.to(run.accelerator.device)
            with run.accelerator.autocast():
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logp, mask = token_logprobs(logits, batch.labels)
            total, count = total - float(logp.float().sum()), count + float(mask.sum())
            exact += int(answer_exact(logits, batch.labels).sum())
    finally:
        model.train(was_training)
    sums = [total, count, float(exact), float(len(rows))]
    if acc.num_processes > 1:  # a process's forget rows are its own micro-batches': one measurement of them all
        sums = acc.reduce(torch.tensor(sums, dtype=torch.float64, device=acc.device), reduction="sum").tolist()
    total, count, exact, measured = sums
    if not measured:
        return math.nan, 0.0
    return total / max(count, 1.0), exact / measured
