"""The one training loop, on accelerate: setup → train → save → cleanup.

Fine-tuning and every unlearning method run through it; only the objective (a :class:`~obliviate.losses.Method`)
changes. The loop builds what the method declares it needs and nothing else: a retain batch, a reference (a frozen
copy, or under LoRA the same model with its adapters disabled, or for NPO one cached log-probability per forget row),
hidden states. Its rooms: :mod:`~obliviate.train.parallel` (accelerate, FSDP, DeepSpeed, the reference's placement),
:mod:`~obliviate.train.sampling` (which rows each step reads), :mod:`~obliviate.train.step` (one optimizer step's
forwards, accumulation and gather); this module holds the run's state (:class:`Run`), the epoch and the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from obliviate.config import TrainConfig
from obliviate.data.batching import (
    encode_record,
)
from obliviate.data.records import Record
from obliviate.errors import ConfigError, TrainingError
from obliviate.io import append_line, kill_point, write_text_atomic
from obliviate.losses import Method
from obliviate.losses.common import LossParams
from obliviate.models.load import write_tokenizer_fingerprint
from obliviate.train import checkpoint as ckpt
from obliviate.train.parallel import (
    enable_checkpointing,
    make_accelerator,
    prepare_reference,
    uniform_dtype_for_fsdp,
)
from obliviate.train.sampling import epoch_batches, interleaved_plan, retain_only_batches, retain_steps_per_forget
from obliviate.train.step import (
    accumulate,
    fmt_metrics,
    optimizer_step,
    reference_logprobs,
    retain_step,
)

EpochHook = Callable[[int, Path], dict[str, Any] | None]
"""Called on every rank after ``checkpoints/epoch-N`` is complete, with ``(N, checkpoint_dir)``."""


@dataclass
class RunResult:
    output_dir: Path
    epochs_completed: int
    global_step: int
    tokens_seen: int
    stopped: str | None = None
    wall_seconds: float = 0.0
    epoch_results: list[dict[str, Any]] = field(default_factory=list)
    lr: float | None = None  # the peak rate trained with (the range test's choice where --lr was unset)
    method: str | None = None  # the objective trained with (what --method auto chose)


@dataclass
class Run:
    """Everything setup builds; train and save only read it."""

    accelerator: Accelerator
    model: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    forget: list
    retain: list
    steps_per_epoch: int  # optimizer steps per epoch (interleaved: forget steps and their retain steps)
    forget_steps: int  # forget-batch steps per epoch
    accumulation: int
    control: torch.Tensor | None
    is_peft: bool
    state: dict[str, Any]
    forget_draws: list[list] = field(default_factory=list)  # relabelled forget sets, one per epoch in turn
    paired_draws: list[list] = field(default_factory=list)  # fake-value copies of the forget set, one per epoch
    paired: list = field(default_factory=list)  # this epoch's draw
    step_check: Any = None  # a stop rule asked after optimizer steps (obliviate.evaluate.stop_rule)
    joint_forward: bool = False  # forget and retain in one pass (sharded weights: one all-gather instead of two)
    forget_ref_logprob: torch.Tensor | None = None  # [forget rows]: log π_ref(y|x) cached in place of a frozen copy
    epochs: int = 0  # epochs the run plans: --epochs, or as many as --max_steps takes
    total_steps: int = 0  # optimizer steps the run plans (the schedule's length)


def _bars_off(acc: Accelerator) -> bool:
    """Progress bars only on the main process, and not where ``TQDM_DISABLE`` is set (e.g. pipeline workers): an
    explicit ``disable=False`` would override tqdm's own reading of that variable."""
    return not acc.is_main_process or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def setup(
    model,
    tokenizer,
    method: Method,
    params: LossParams,
    forget: list[Record],
    retain: list[Record] | None,
    config: TrainConfig,
) -> Run:
    """Prepare model, reference, optimizer, schedule and tokenised data; restore a checkpoint on ``--resume``."""
    accelerator, accumulation = make_accelerator(config)
    set_seed(config.seed)
    needs = method.needs
    if needs.retain and not retain:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    is_peft = config.lora_r > 0
    cache_reference = needs.reference_logprob and not is_peft  # one number per forget row instead of a copy
    reference = None
    if needs.reference and not is_peft and not cache_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        uniform_dtype_for_fsdp(model)
    control = None
    if needs.hidden:
        from obliviate.losses.rmu import make_control_vector

        control = make_control_vector(model.config.hidden_size, params.rmu_c, config.seed).to(accelerator.device)
    forget_steps = math.ceil(len(forget) / config.batch_size)
    steps_per_epoch = forget_steps * (1 + retain_steps_per_forget(config))
    epochs, total_steps = planned_length(config, steps_per_epoch)
    optimizer, scheduler = _optimizer(model, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = prepare_reference(accelerator, reference)
    run = Run(
        accelerator=accelerator,
        model=model,
        reference=reference,
        optimizer=optimizer,
        scheduler=scheduler,
        forget=[encode_record(tokenizer, r, config.max_length) for r in forget],
        retain=[encode_record(tokenizer, r, config.max_length) for r in retain or []] if needs.retain else [],
        steps_per_epoch=steps_per_epoch,
        forget_steps=forget_steps,
        accumulation=accumulation,
        control=control,
        is_peft=is_peft,
        state={"epoch": 0, "global_step": 0, "tokens_seen": 0, "stopped": None},
        epochs=epochs,
        total_steps=total_steps,
        joint_forward=accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP),
    )
    if cache_reference:  # before a resume restores trained weights: the reference is the starting model
        run.forget_ref_logprob = reference_logprobs(run, config, tokenizer)
    if config.resume:
        _restore(run, config, tokenizer)
    return run


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


def _optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int, lr: float | None = None):
    """AdamW over the trainable parameters and its warm-up + constant / linear / cosine schedule.

    ``lr`` (default ``config.lr``) is the peak rate; an unlearning run whose rate is left to the range test builds
    with a placeholder and calls :func:`reset_schedule` once the test has chosen.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("no parameter is trainable: check --trainable_layers / --trainable_modules / --lora_r")
    lr = lr if lr is not None else config.lr
    optimizer = torch.optim.AdamW(trainable, lr=lr if lr is not None else 1e-5, weight_decay=config.weight_decay)
    return optimizer, _schedule(optimizer, config, total_steps)


def _schedule(optimizer, config: TrainConfig, total_steps: int):
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
    run.scheduler = _schedule(inner, config, run.total_steps)


def _restore(run: Run, config: TrainConfig, tokenizer) -> None:
    found = ckpt.list_checkpoints(config.output_dir)
    if not found:
        return
    epoch, path = found[-1]
    unwrapped = run.accelerator.unwrap_model(run.model)
    ckpt.load_weights(unwrapped, path, run.is_peft)
    run.state = ckpt.load_training_state(path, run.optimizer, run.scheduler, run.accelerator.process_index)
    if run.state.get("stopped"):
        raise TrainingError(f"{config.output_dir} already finished ({run.state['stopped']}): nothing to resume")
    run.accelerator.print(f"resuming from {path} (epoch {epoch}, step {run.state['global_step']})")


def train_epoch(
    run: Run,
    method: Method,
    params: LossParams,
    config: TrainConfig,
    tokenizer,
    epoch: int,
    layer: int | None,
    log: Callable[[dict[str, Any]], None],
    stop_forget_nll: float | None,
) -> str | None:
    """One pass over the forget set (or what is left of ``--max_steps``); returns a reason to stop early."""
    acc = run.accelerator
    micro, draws = epoch_batches(run, config, epoch)
    run.model.train()
    progress = tqdm(
        total=run.steps_per_epoch,
        desc=f"{method.name} epoch {epoch}",
        disable=_bars_off(acc),
        leave=False,
        dynamic_ncols=True,
    )
    started, tokens_at_start = time.perf_counter(), run.state["tokens_seen"]
    forget_groups = [
        ([micro[i] for i in range(s, min(s + run.accumulation, len(micro)))], draws[s : s + run.accumulation])
        for s in range(0, len(micro), run.accumulation)
    ]
    interleaved = retain_steps_per_forget(config) > 0
    plan = interleaved_plan(run, config, epoch) if interleaved else [("joint", i) for i in range(len(forget_groups))]
    retain_groups = retain_only_batches(run, config, epoch) if interleaved else []
    forget_params = dataclasses.replace(params, alpha=0.0, kl_weight=0.0) if interleaved else params
    chunk_steps = math.ceil(config.chunk_size / config.batch_size) * (1 + config.retain_steps) if interleaved else 0
    for position, (phase, index) in enumerate(plan):
        if chunk_steps and position % chunk_steps == 0:  # a new chunk of the forget set: the schedule restarts
            run.scheduler = _schedule(getattr(run.optimizer, "optimizer", run.optimizer), config, chunk_steps)
        if phase == "retain":
            step_metrics, tokens, checksums = retain_step(run, params, config, tokenizer, epoch, retain_groups[index])
        else:
            forget_ids, retain_ids = forget_groups[index]
            step_metrics, tokens, checksums = accumulate(
                run, method, forget_params, config, tokenizer, epoch, layer, forget_ids, retain_ids
            )
        lr = run.scheduler.get_last_lr()[0]  # the rate this step uses; after scheduler.step() it is the next one's
        optimizer_step(run, config)
        run.state["global_step"] += 1
        run.state["tokens_seen"] += tokens
        record = {
            "step": run.state["global_step"],
            "epoch": epoch,
            **({"phase": phase} if interleaved else {}),
            "lr": lr,
            **step_metrics,
            "tokens_seen": run.state["tokens_seen"],
        }
        if checksums is not None:
            record["retain_draw_checksums"] = checksums
        log(record)
        elapsed = max(time.perf_counter() - started, 1e-9)
        speed = (run.state["tokens_seen"] - tokens_at_start) / elapsed
        progress.set_postfix_str(fmt_metrics({**step_metrics, "tok/s": speed}))
        progress.update(1)
        forget_nll = step_metrics.get("forget_nll")
        if stop_forget_nll is not None and forget_nll is not None and forget_nll > stop_forget_nll:
            progress.close()
            return f"forget NLL {forget_nll:.3f} passed --stop_forget_nll {stop_forget_nll} at epoch {epoch}"
        reason = _step_check(run, tokenizer, epoch, log)
        if reason is not None:
            progress.close()
            return reason
        if config.max_steps and run.state["global_step"] >= config.max_steps:
            break  # the step budget is spent: the run ends here, as planned (not a stop)
    progress.close()
    return None


def _step_check(run: Run, tokenizer, epoch: int, log) -> str | None:
    """Ask the run's stop rule (every process asks; the model is the same everywhere) and log what it measured."""
    if run.step_check is None:
        return None
    model = run.accelerator.unwrap_model(run.model)
    checks_before = len(run.step_check.history)
    reason = run.step_check(model, tokenizer, run.state["global_step"])
    if len(run.step_check.history) > checks_before:
        log({"step": run.state["global_step"], "epoch": epoch, "stop_check": run.step_check.history[-1]})
    return reason


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
) -> RunResult:
    """Run the loop: setup → train → save → cleanup. The caller has validated inputs and prepared ``output_dir``.

    ``forget_draws``: relabelled copies of ``forget`` (same length and order) that epochs train on in turn.
    ``step_check``: a stop rule with ``start(model, tokenizer)`` and ``(model, tokenizer, step) -> reason | None``.
    ``paired_draws``: copies of ``forget`` with fake PII values, paired row by row (``Needs.paired``), in turn.
    """
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    run = setup(model, tokenizer, method, params, forget, retain, config)
    run.forget_draws = [[encode_record(tokenizer, r, config.max_length) for r in draw] for draw in forget_draws or []]
    run.paired_draws = [[encode_record(tokenizer, r, config.max_length) for r in draw] for draw in paired_draws or []]
    acc = run.accelerator
    layer = rmu_layer if method.needs.hidden else None
    metrics_path = output_dir / "metrics.jsonl"
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(metrics_path, run.state["global_step"])

    def log(record: dict[str, Any]) -> None:
        if acc.is_main_process:
            append_line(metrics_path, json.dumps(record))
        kill_point(f"step-{record['step']}")  # tests: killed between optimizer steps

    if config.lr is None and run.state["global_step"] == 0:  # unlearning with --lr unset: measure it
        from obliviate.train.lr_probe import probe_lr

        probe = probe_lr(
            run, method, params, config, tokenizer, layer, steps=getattr(config, "lr_probe_steps", 5), log=log
        )
        acc.print(f"learning rate {probe.lr:.3g}: {probe.reason} ({len(probe.trials)} rates tried)")
        result_lr = probe.lr
        if resolved_config is not None:
            resolved_config = _with_lr(resolved_config, probe.lr)
    else:
        result_lr = config.lr
    if acc.is_main_process and resolved_config is not None:
        write_text_atomic(output_dir / "config.yaml", resolved_config)
    if step_check is not None:
        step_check.start(acc.unwrap_model(run.model), tokenizer)
        run.step_check = step_check
        if run.state["global_step"] == 0 and hasattr(step_check, "describe"):
            log({"step": 0, "stop_reference": step_check.describe()})

    result = RunResult(
        output_dir,
        run.state["epoch"],
        run.state["global_step"],
        run.state["tokens_seen"],
        lr=result_lr,
        method=method.name,
    )
    try:
        epochs = tqdm(
            range(run.state["epoch"] + 1, run.epochs + 1),
            desc=method.name,
            disable=_bars_off(run.accelerator),
            dynamic_ncols=True,
        )
        for epoch in epochs:
            stopped = train_epoch(run, method, params, config, tokenizer, epoch, layer, log, stop_forget_nll)
            run.state.update(epoch=epoch, stopped=stopped)
            spent = run.state["global_step"] >= run.total_steps
            if checkpoint_due(config, epoch, run.epochs) or stopped or (spent and config.save_checkpoints):
                path = ckpt.save_checkpoint(
                    acc, run.model, tokenizer, run.optimizer, run.scheduler, output_dir, epoch, dict(run.state)
                )
                if epoch_hook is not None:
                    result.epoch_results.append(epoch_hook(epoch, path) or {})
            if stopped:
                acc.print(stopped)
                break
            if spent:
                break
        save_final(run, tokenizer, output_dir, config)
    finally:
        acc.free_memory()
        # accelerate keeps one precision per process; a later run in this process (a notebook, the demo) may
        # ask for another. The process group (PartialState) stays.
        AcceleratorState._reset_state()
    result.epochs_completed = run.state["epoch"]
    result.global_step, result.tokens_seen = run.state["global_step"], run.state["tokens_seen"]
    result.stopped, result.wall_seconds = run.state["stopped"], time.perf_counter() - started
    return result


def _with_lr(resolved_config: str, lr: float) -> str:
    """The resolved config with the rate the range test chose, so that config.yaml says what was trained."""
    import yaml

    values = yaml.safe_load(resolved_config)
    values["lr"] = lr
    return yaml.safe_dump(values, sort_keys=False)


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint, so that the log matches the weights."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    """The step of one ``metrics.jsonl`` line; a damaged line (a write cut off by a kill) counts as after any."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def save_final(run: Run, tokenizer, output_dir: Path, config: TrainConfig) -> None:
    """The final model (or adapter) into ``output_dir``; under LoRA with ``--merge`` also ``output_dir/merged``."""
    acc = run.accelerator
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(run.model)
    weights = acc.get_state_dict(run.model)
    if acc.is_main_process:
        _save_model_files(unwrapped, weights, tokenizer, output_dir)
        kill_point("final")  # tests: killed with the model written and trainer_state.json not yet
        # trainer_state.json last: its presence says the final model is complete
        write_text_atomic(output_dir / "trainer_state.json", json.dumps(run.state, indent=1, sort_keys=True))
        if run.is_peft and config.merge:
            from obliviate.models.load import load_model, save_pretrained_atomic

            # from the saved adapter onto a fresh base on CPU: no second copy on the accelerator, and it works
            # when the trained weights are sharded (ZeRO-3 / FSDP)
            adapted, _ = load_model(output_dir, dtype=getattr(unwrapped, "dtype", None), device="cpu")
            save_pretrained_atomic(adapted.merge_and_unload(), tokenizer, output_dir / "merged")
    acc.wait_for_everyone()


def _save_model_files(model, weights, tokenizer, output_dir: Path) -> None:
    """Save into a temporary sibling, then rename file by file: a failed write leaves no half-written weights."""
    tmp = Path(tempfile.mkdtemp(prefix=".final.tmp-", dir=output_dir))
    try:
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_tokenizer_fingerprint(tmp, tokenizer)
        for file in sorted(tmp.iterdir()):
            os.replace(file, output_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
