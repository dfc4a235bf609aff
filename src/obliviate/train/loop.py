"""The one training loop, on accelerate: setup → train → save → cleanup.

Fine-tuning and every unlearning method run through it; only the objective (a :class:`~obliviate.losses.Method`)
changes. The loop builds what the method declares it needs and nothing else: a retain batch, a reference (a frozen
copy, or under LoRA the same model with its adapters disabled, or for NPO one cached log-probability per forget row),
hidden states. Its rooms: :mod:`~obliviate.train.parallel` (accelerate, FSDP, DeepSpeed, the reference's placement),
:mod:`~obliviate.train.sampling` (which rows each step reads), :mod:`~obliviate.train.step` (one optimizer step's
forwards, accumulation and gather); this module holds the run's state (:class:`Run`), the epoch and the run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from obliviate.config import TrainConfig
from obliviate.data.batching import encode_record, field_margins, retain_match_key
from obliviate.data.records import Record
from obliviate.errors import ConfigError
from obliviate.io import append_line, kill_point, write_text_atomic
from obliviate.losses import Method
from obliviate.losses.common import LossParams
from obliviate.model_card import CARD, write_model_card
from obliviate.models.load import check_positions
from obliviate.train import checkpoint as ckpt
from obliviate.train import trackers
from obliviate.train.epoch import resume_stop_rule, train_epoch
from obliviate.train.finish import restart_log, restore, save_final, truncate_log
from obliviate.train.forward_count import ForwardCounter, uncounted
from obliviate.train.parallel import (
    SHARDED,
    enable_checkpointing,
    frozen_copy,
    make_accelerator,
    prepare_reference,
    uniform_dtype_for_fsdp,
)
from obliviate.train.sampling import repair_exact, retain_steps_per_forget
from obliviate.train.schedule import checkpoint_due, make_optimizer, planned_length
from obliviate.train.state import EpochHook, Run, RunResult, bars_off
from obliviate.train.step import (
    reference_logprobs,
    row_logprobs,
)


def _prepare_model(model: torch.nn.Module, config: TrainConfig, accelerator: Accelerator) -> None:
    """Activation checkpointing where asked; one parameter dtype per FSDP unit."""
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        uniform_dtype_for_fsdp(model)


def _control_vector(model, method: Method, params: LossParams, config: TrainConfig, accelerator: Accelerator):
    """RMU's fixed ``c·u`` (``[hidden]``, seeded), for a hidden-states method; None for every other."""
    if not method.needs.hidden:
        return None
    from obliviate.losses.rmu import make_control_vector

    return make_control_vector(model.config.hidden_size, params.rmu_c, config.seed).to(accelerator.device)


def setup(
    model,
    tokenizer,
    method: Method,
    params: LossParams,
    forget: list[Record],
    retain: list[Record] | None,
    config: TrainConfig,
    layer: int | None = None,
    step_check=None,
) -> Run:
    """Prepare model, reference, optimizer, schedule and tokenised data; restore a checkpoint on ``--resume``.

    ``layer``: the decoder block a hidden-states method (RMU) reads; ignored for every other method.
    ``step_check``: the run's stop rule, whose reference is measured here on the starting weights (before a resume
    restores trained ones), and, on a resume, given back what it had decided at the checkpoint."""
    accelerator, accumulation = make_accelerator(config)
    set_seed(config.seed)
    needs = method.needs_for(params)
    if needs.retain and not retain:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    forget_ids = [encode_record(tokenizer, r, config.max_length) for r in forget]
    retain_ids = [encode_record(tokenizer, r, config.max_length) for r in retain or []] if needs.retain else []
    longest = max((len(e.ids) for e in forget_ids + retain_ids), default=0)
    check_positions(model, longest, "training rows (at most --max_length tokens)")
    is_peft = config.lora_r > 0
    cache_reference = needs.reference_logprob and not is_peft  # one number per forget row instead of a copy
    reference = None
    if needs.reference and not is_peft and not cache_reference:
        reference = frozen_copy(model, accelerator.distributed_type)
    _prepare_model(model, config, accelerator)
    control = _control_vector(model, method, params, config, accelerator)
    forget_steps = math.ceil(len(forget) / config.batch_size)
    steps_per_epoch = forget_steps * (1 + retain_steps_per_forget(config))
    epochs, total_steps = planned_length(config, steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = prepare_reference(accelerator, reference, shared=model)
    run = Run(
        accelerator=accelerator,
        model=model,
        reference=reference,
        optimizer=optimizer,
        scheduler=scheduler,
        forget=forget_ids,
        retain=retain_ids,
        steps_per_epoch=steps_per_epoch,
        forget_steps=forget_steps,
        accumulation=accumulation,
        control=control,
        is_peft=is_peft,
        state={
            "epoch": 0,
            "global_step": 0,
            "tokens_seen": 0,
            "lr_probe_tokens": 0,
            "forward_tokens": 0,
            "stopped": None,
        },
        epochs=epochs,
        total_steps=total_steps,
        joint_forward=accelerator.distributed_type in SHARDED,
        method=method,
        params=params,
        base_params=params,
        config=config,
        tokenizer=tokenizer,
        layer=layer if needs.hidden else None,
    )
    # from here on every gradient-free pass is the run's work: the reference's, the starting measurements', the checks'
    run.forward_counter = ForwardCounter(
        [accelerator.unwrap_model(model)] + ([accelerator.unwrap_model(reference)] if reference is not None else [])
    )
    try:
        if getattr(config, "retain_sampling", "uniform") == "matched":
            run.forget_keys = [retain_match_key(r) for r in forget]
            run.retain_keys = [retain_match_key(r) for r in retain or []] if needs.retain else []
        if cache_reference:  # before a resume restores trained weights: the reference is the starting model
            run.forget_ref_logprob = reference_logprobs(run)
        if repair_exact(config) and retain:  # likewise: what a repair restores is the starting model's exact rows
            run.retain_start = row_logprobs(run, run.retain)[2]
        if step_check is not None:  # likewise: the stop rule's never-seen bands and retain start
            step_check.start(accelerator.unwrap_model(run.model), tokenizer)
            run.step_check = step_check
            gaps = getattr(step_check, "holdout_gaps", None)
            if gaps and getattr(params, "calibrate", 0):  # contrast's aim: a stranger's level against the fakes
                run.field_margins = torch.tensor(field_margins(gaps), device=accelerator.device)
        if config.resume:
            restore(run, config, tokenizer)
            resume_stop_rule(run)
    except BaseException:
        run.forward_counter.close()  # the caller's model keeps no hook of a run that never started
        raise
    return run


def train(
    model,
    tokenizer,
    *,
    method: Method,
    params: LossParams,
    forget: list[Record],
    retain: list[Record] | None,
    config: TrainConfig,
    rmu_layer: int | None = None,
    stop_forget_nll: float | None = None,
    epoch_hook: EpochHook | None = None,
    resolved_config: str | None = None,
    forget_draws: list[list[Record]] | None = None,
    step_check=None,
    paired_draws: list[list[Record]] | None = None,
    card: dict[str, Any] | None = None,
    epoch_check=None,
) -> RunResult:
    """Run the loop: setup → train → save → cleanup. The caller has validated inputs and prepared ``output_dir``.

    ``forget_draws``: relabelled copies of ``forget`` (same length and order) that epochs train on in turn.
    ``step_check``: a stop rule with ``start(model, tokenizer)`` and ``(model, tokenizer, step) -> reason | None``.
    ``paired_draws``: copies of ``forget`` with fake PII values, paired row by row (``Needs.paired``), in turn.
    ``card``: what the model cards of the final model and the checkpoints say (:mod:`obliviate.model_card`).
    ``epoch_check``: asked at every epoch end, ``(model, tokenizer, epoch) -> reason | None`` with a ``history`` of
    its measurements (``finetune --until_memorised``, :mod:`obliviate.evaluate.memorised`); a reason ends the run.

    The seconds of each phase go to ``RunResult.timing`` and the final ``trainer_state.json`` (:data:`TIMING`).
    """
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    run = setup(model, tokenizer, method, params, forget, retain, config, layer=rmu_layer, step_check=step_check)
    run.forget_draws = [[encode_record(tokenizer, r, config.max_length) for r in draw] for draw in forget_draws or []]
    run.paired_draws = [[encode_record(tokenizer, r, config.max_length) for r in draw] for draw in paired_draws or []]
    run.stop_forget_nll = stop_forget_nll
    run.timing = dict.fromkeys(TIMING, 0.0)
    run.card = {"method": method.name, **(card or {}), "adapter": run.is_peft}
    run.log = _metrics_log(run, output_dir)
    run.epoch_check = epoch_check
    result = RunResult(
        output_dir, run.state["epoch"], run.state["global_step"], run.state["tokens_seen"], method=method.name
    )
    try:
        result.lr = _start(run, output_dir, resolved_config, step_check)
        run.timing["setup_seconds"] = (
            time.perf_counter() - started - run.timing["lr_probe_seconds"] - run.timing["loop_seconds"]
        )
        _run_epochs(run, output_dir, result, epoch_hook)
        run.card.update(_final_card(run, result))
        save_final(run, tokenizer, output_dir, config, started)
    finally:
        run.forward_counter.close()
        trackers.finish(run.accelerator)
        run.accelerator.free_memory()
        # accelerate keeps one precision per process; a later run in this process (a notebook, the demo) may
        # ask for another. The process group (PartialState) stays.
        AcceleratorState._reset_state()
    result.epochs_completed = run.state["epoch"]
    result.global_step, result.tokens_seen = run.state["global_step"], run.state["tokens_seen"]
    result.lr_probe_tokens = run.state.get("lr_probe_tokens", 0)  # a checkpoint of an older run may lack it
    result.forward_tokens = run.state.get("forward_tokens", 0)  # likewise
    result.stopped, result.wall_seconds = run.state["stopped"], time.perf_counter() - started
    result.step_budget = run.config.max_steps or None
    result.timing = {**run.timing, "total_seconds": result.wall_seconds}
    return result


TIMING = (
    "setup_seconds",
    "lr_probe_seconds",
    "loop_seconds",
    "stop_check_seconds",
    "checkpoint_seconds",
    "epoch_eval_seconds",
    "save_seconds",
)
"""The phases a run's seconds are split into. ``setup``: loading done by the caller excluded, from the accelerator
to the first step (tokenising, the reference, the stop rule's reference measurement); ``lr_probe``: the range test
(its put-back trials: a kept trial's steps are the run's own, ``loop``); ``loop``: the optimizer steps (their
forwards, backwards and log lines) and the stop rule's (and epoch-end) checks, which ``stop_check`` counts separately
as well; ``checkpoint``: writing ``checkpoints/epoch-N``; ``epoch_eval``: the
epoch hook's evaluations; ``save``: the final model. A resumed run counts only its own process's seconds."""


def _metrics_log(run: Run, output_dir: Path) -> Callable[[dict[str, Any]], None]:
    """The run's ``metrics.jsonl`` writer (main process), after cutting lines a resumed run will write again.

    Every line gets ``time``, the wall clock (Unix seconds) when it was written; every line also goes to the
    run's tracker (``--report_to``)."""
    metrics_path = output_dir / "metrics.jsonl"
    if run.accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if run.state["global_step"]:
            truncate_log(metrics_path, run.state["global_step"])
        else:  # a fresh run (nothing there) or a resume before any checkpoint: everything starts again
            run.state["lr_probe_tokens"] = restart_log(metrics_path, keep_trials=run.config.lr is not None)
    probes = iter(range(1_000_000))  # the range test's trials all sit before step 1: the tracker numbers them

    def log(record: dict[str, Any]) -> None:
        record = {**record, "time": round(time.time(), 3)}
        if run.accelerator.is_main_process:
            append_line(metrics_path, json.dumps(record))
        step = next(probes) if "lr_probe" in record else record["step"]
        trackers.log(run.accelerator, trackers.scalars(record), step)
        kill_point(f"step-{record['step']}")  # tests: killed between optimizer steps

    return log


def _final_card(run: Run, result: RunResult) -> dict[str, Any]:
    """The final model's card facts: its epoch and step, how the run ended, and that epoch's metrics if evaluated."""
    epoch = run.state["epoch"]
    evaluated = [e for e in result.epoch_results if getattr(e, "epoch", None) == epoch]
    facts = {"epoch": epoch, "global_step": run.state["global_step"], "stopped": run.state["stopped"]}
    return {**facts, "metrics": trackers.summary_of(evaluated[-1]) if evaluated else None}


def _start(run: Run, output_dir: Path, resolved_config: str | None, step_check) -> float | None:
    """Before the first step: the range test where ``--lr`` is unset (a fresh run only), ``config.yaml`` with the
    rate trained with, the stop rule's reference line (measured in :func:`setup`). Returns that rate."""
    acc, config = run.accelerator, run.config
    lr = config.lr
    if lr is None and run.state["global_step"] == 0:  # unlearning with --lr unset: measure it
        from obliviate.train.lr_probe import MEASURE_ROWS, probe_lr

        probe_started = time.perf_counter()
        # a trial is no longer than the run's budget (in forget steps, each with its retain steps)
        steps = min(
            getattr(config, "lr_probe_steps", 5), math.ceil(run.total_steps / (1 + retain_steps_per_forget(config)))
        )
        probe = probe_lr(
            run,
            steps=steps,
            log=run.log,
            measure_rows=getattr(config, "lr_probe_rows", MEASURE_ROWS),
            settle=getattr(config, "lr_probe_settle", None) or 1,  # unset and no preset: the last step alone
            keep=_trial_is_the_start(run, steps),
        )
        kept_seconds = sum(step.seconds for step in probe.continued)  # the run's own steps: the loop's time
        run.timing["lr_probe_seconds"] = time.perf_counter() - probe_started - kept_seconds
        run.timing["loop_seconds"] += kept_seconds
        run.state["lr_probe_tokens"] = probe.tokens  # the discarded trials' steps are part of the run's cost
        run.continued = probe.continued  # the kept trial's steps: the run's first, logged by its first epoch
        kept = f"; the run goes on from its {len(probe.continued)} steps" if probe.continued else ""
        acc.print(f"learning rate {probe.lr:.3g}: {probe.reason} ({len(probe.trials)} rates tried{kept})")
        lr = probe.lr
        if resolved_config is not None:
            resolved_config = _with_lr(resolved_config, probe.lr)
    if acc.is_main_process and resolved_config is not None:
        write_text_atomic(output_dir / "config.yaml", resolved_config)
    if resolved_config is not None:
        run.card["config"] = yaml.safe_load(resolved_config)
    run.card["lr"] = lr
    trackers.start(acc, config, run.method.name, run.card.get("config"))
    if step_check is not None and run.state["global_step"] == 0 and hasattr(step_check, "describe"):
        run.log({"step": 0, "stop_reference": step_check.describe()})
    return lr


def _trial_is_the_start(run: Run, steps: int) -> bool:
    """Whether the range test's chosen trial can be the run's first ``steps`` forget steps (each with its retain
    steps): the trial takes the run's first batches in the run's order at the peak rate, so its steps are the run's
    own where the rate is constant from step 1 (a constant schedule without warm-up: a per-chunk restart changes
    nothing then), the trial ends inside the step budget, every cycle takes all its retain steps (no
    ``--repair_exact``, whose checks the run counts in cycles), and nothing the run does between steps falls among
    them: the stop rule's first check is after them, and no epoch that ends before the trial does writes a checkpoint
    (or asks an epoch-end check): those would see the trial's last weights, not their own."""
    config = run.config
    taken = steps * (1 + retain_steps_per_forget(config))
    every = getattr(run.step_check, "every", None) if run.step_check is not None else None
    inside = range(1, math.ceil(steps / run.forget_steps))  # epochs that end before the trial's last step
    return (
        config.scheduler == "constant"
        and not config.warmup_ratio
        and not repair_exact(config)
        and taken <= run.total_steps
        and (run.epoch_check is None or not inside)
        and not any(checkpoint_due(config, epoch, run.epochs) for epoch in inside)
        and (run.step_check is None or (isinstance(every, int) and every > taken))
    )


def _run_epochs(run: Run, output_dir: Path, result: RunResult, epoch_hook: EpochHook | None) -> None:
    """Epochs until the plan, the step budget or a stop ends the run; checkpoints (and the hook) where due."""
    acc, config = run.accelerator, run.config
    epochs = tqdm(
        range(run.state["epoch"] + 1, run.epochs + 1),
        desc=run.method.name,
        disable=bars_off(acc),
        dynamic_ncols=True,
    )
    for epoch in epochs:
        clock = time.perf_counter()
        stopped = train_epoch(run, epoch)
        run.timing["loop_seconds"] += time.perf_counter() - clock
        run.state.update(epoch=epoch, stopped=stopped)
        spent = run.state["global_step"] >= run.total_steps
        reached = None if stopped else _epoch_check(run, epoch)
        # the passes since the epoch's last step (its last stop check, the epoch-end check): alike on every process
        run.state["forward_tokens"] = run.state.get("forward_tokens", 0) + run.forward_counter.flush(acc.num_processes)
        if reached:  # an end as planned (the check's goal is met): a checkpoint only where they are kept
            run.state["stopped"] = reached
        if checkpoint_due(config, epoch, run.epochs) or stopped or ((spent or reached) and config.save_checkpoints):
            _checkpoint(run, output_dir, epoch, result, epoch_hook)
        if stopped or reached:
            acc.print(stopped or reached)
            break
        if spent:
            break


def _epoch_check(run: Run, epoch: int) -> str | None:
    """Ask the run's epoch-end check (every process asks; the model is the same everywhere); log and keep what it
    measured: the last measurement goes to ``trainer_state.json`` as ``epoch_check``."""
    if run.epoch_check is None:
        return None
    clock = time.perf_counter()
    reason = run.epoch_check(run.accelerator.unwrap_model(run.model), run.tokenizer, epoch)
    seconds = time.perf_counter() - clock
    run.timing["stop_check_seconds"] += seconds
    run.timing["loop_seconds"] += seconds
    measured = run.epoch_check.history[-1]
    run.state["epoch_check"] = measured
    run.log({"step": run.state["global_step"], "epoch": epoch, "memorised_check": measured})
    return reason


def _checkpoint(run: Run, output_dir: Path, epoch: int, result: RunResult, epoch_hook: EpochHook | None) -> None:
    """``checkpoints/epoch-N`` with its model card; the hook's evaluation, which goes to the tracker and the card."""
    acc, clock = run.accelerator, time.perf_counter()
    card = {**run.card, "epoch": epoch, "global_step": run.state["global_step"], "stopped": run.state["stopped"]}
    state = dict(run.state)
    path = ckpt.save_checkpoint(
        acc, run.model, run.tokenizer, run.optimizer, run.scheduler, output_dir, epoch, state, card=card
    )
    run.timing["checkpoint_seconds"] += time.perf_counter() - clock
    if epoch_hook is None:
        return
    clock = time.perf_counter()
    with uncounted(run.forward_counter):  # the caller's evaluation, not the run's work
        evaluation = epoch_hook(epoch, path)
    run.timing["epoch_eval_seconds"] += time.perf_counter() - clock
    result.epoch_results.append(evaluation)
    metrics = trackers.summary_of(evaluation)
    trackers.log(acc, {f"eval/{k}": v for k, v in trackers.numbers(metrics).items()}, run.state["global_step"])
    if acc.is_main_process and metrics and (path / CARD).is_file():
        write_model_card(path, {**card, "metrics": metrics})


def _with_lr(resolved_config: str, lr: float) -> str:
    """The resolved config with the rate the range test chose, so that config.yaml says what was trained."""
    values = yaml.safe_load(resolved_config)
    values["lr"] = lr
    return yaml.safe_dump(values, sort_keys=False)
