"""The one training loop, on accelerate: setup → train → save → cleanup.

Fine-tuning and every unlearning method run through it; only the objective (a :class:`~obliviate.losses.Method`)
changes. The loop builds what the method declares it needs and nothing else: a retain batch, a reference (a frozen
copy, or under LoRA the same model with its adapters disabled), hidden states.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from obliviate.config import TrainConfig
from obliviate.data.batching import (
    TokenBatch,
    collate,
    encode_record,
    forget_order,
    micro_batches_for_rank,
    retain_draws,
)
from obliviate.data.records import Record
from obliviate.errors import ConfigError, TrainingError
from obliviate.losses import Method
from obliviate.losses.common import Forward, LossInputs, LossParams
from obliviate.train import checkpoint as ckpt

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


@dataclass
class _Run:
    """Everything setup builds; train and save only read it."""

    accelerator: Accelerator
    model: torch.nn.Module
    reference: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    forget: list
    retain: list
    steps_per_epoch: int
    accumulation: int
    control: torch.Tensor | None
    is_peft: bool
    state: dict[str, Any]


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def setup(model, tokenizer, method: Method, params: LossParams, forget: list[Record], retain: list[Record] | None,
          config: TrainConfig) -> _Run:
    """Prepare model, reference, optimizer, schedule and tokenised data; restore a checkpoint on ``--resume``."""
    accelerator = Accelerator(mixed_precision=_mixed_precision(config.mixed_precision))
    world = accelerator.num_processes
    if config.batch_size % (config.micro_batch_size * world):
        raise ConfigError(f"--batch_size {config.batch_size} must be a multiple of --micro_batch_size "
                          f"{config.micro_batch_size} x {world} process(es)")
    set_seed(config.seed)
    needs = method.needs
    if needs.retain and not retain:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    is_peft = config.lora_r > 0
    reference = None
    if needs.reference and not is_peft:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if is_peft:
            model.enable_input_require_grads()
    control = None
    if needs.hidden:
        from obliviate.losses.rmu import make_control_vector

        control = make_control_vector(model.config.hidden_size, params.rmu_c, config.seed).to(accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("no parameter is trainable: check --trainable_layers / --trainable_modules / --lora_r")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    step_size = config.batch_size
    steps_per_epoch = math.ceil(len(forget) / step_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_scheduler(
        "constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = reference.to(accelerator.device)
    encode = [encode_record(tokenizer, r, config.max_length) for r in forget]
    encode_retain = [encode_record(tokenizer, r, config.max_length) for r in (retain or [])] if needs.retain else []
    state = {"epoch": 0, "global_step": 0, "tokens_seen": 0, "stopped": None}
    run = _Run(accelerator, model, reference, optimizer, scheduler, encode, encode_retain, steps_per_epoch,
               config.batch_size // (config.micro_batch_size * world), control, is_peft, state)
    if config.resume:
        _restore(run, config, tokenizer)
    return run


def _restore(run: _Run, config: TrainConfig, tokenizer) -> None:
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


def _forward(model, batch: TokenBatch, layer: int | None) -> Forward:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                output_hidden_states=layer is not None, use_cache=False)
    hidden = out.hidden_states[layer + 1] if layer is not None else None
    return Forward(out.logits, batch.labels, batch.attention_mask, hidden)


@contextlib.contextmanager
def _reference(run: _Run):
    """The frozen reference: a copy, or (under LoRA) the same model with its adapters switched off."""
    if run.reference is not None:
        yield run.reference
        return
    unwrapped = run.accelerator.unwrap_model(run.model)
    with unwrapped.disable_adapter():
        yield unwrapped


def _loss_inputs(run: _Run, method: Method, forget: TokenBatch, retain: TokenBatch | None,
                 layer: int | None) -> LossInputs:
    needs = method.needs
    inputs = LossInputs(forget=_forward(run.model, forget, layer), control=run.control)
    if retain is not None:
        inputs.retain = _forward(run.model, retain, layer)
    if needs.reference:
        with torch.no_grad(), _reference(run) as reference:
            if "forget" in needs.reference_on:
                inputs.forget_ref = _forward(reference, forget, layer)
            if "retain" in needs.reference_on and retain is not None:
                inputs.retain_ref = _forward(reference, retain, layer)
    return inputs


def _checksum(indices: list[int]) -> int:
    value = 0
    for index in indices:
        value = (value * 1_000_003 + index + 1) % 2_147_483_647
    return value


def train_epoch(run: _Run, method: Method, params: LossParams, config: TrainConfig, tokenizer, epoch: int,
                layer: int | None, log: Callable[[dict[str, Any]], None], stop_forget_nll: float | None) -> str | None:
    """One pass over the forget set; returns a reason when the run must stop early."""
    acc = run.accelerator
    pad_id = tokenizer.pad_token_id
    order = forget_order(len(run.forget), run.steps_per_epoch, config.batch_size, config.seed, epoch)
    micro = micro_batches_for_rank(order, acc.num_processes, acc.process_index, config.micro_batch_size)
    draws = retain_draws(len(run.retain), [len(m) for m in micro], config.seed, epoch, acc.process_index) \
        if run.retain else [None] * len(micro)
    run.model.train()
    progress = tqdm(total=run.steps_per_epoch, desc=f"{method.name} epoch {epoch}", disable=not acc.is_main_process,
                    leave=False, dynamic_ncols=True)
    started, tokens_at_start = time.perf_counter(), run.state["tokens_seen"]
    for step_start in range(0, len(micro), run.accumulation):
        sums: dict[str, float] = {}
        tokens = torch.zeros((), device=acc.device)
        draw_ids: list[int] = []
        chunk = range(step_start, step_start + run.accumulation)
        for position, index in enumerate(chunk):
            forget = collate([run.forget[i] for i in micro[index]], pad_id).to(acc.device)
            retain = collate([run.retain[i] for i in draws[index]], pad_id).to(acc.device) if draws[index] else None
            draw_ids.extend(draws[index] or [])
            sync = position == len(chunk) - 1
            with contextlib.nullcontext() if sync or acc.num_processes == 1 else acc.no_sync(run.model):
                with acc.autocast():
                    out = method.loss(_loss_inputs(run, method, forget, retain, layer), params)
                acc.backward(out.loss / run.accumulation)
            for key, value in {"loss": out.loss.item(), **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + value / run.accumulation
            tokens += forget.num_tokens + (retain.num_tokens if retain is not None else 0)
        step_metrics = {k: v.item() for k, v in acc.reduce(
            {k: torch.tensor(v, device=acc.device) for k, v in sums.items()}, reduction="mean").items()}
        if not all(math.isfinite(v) for v in step_metrics.values()):
            run.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite loss at epoch {epoch} step {run.state['global_step'] + 1} "
                                f"({_fmt(step_metrics)}); the last good checkpoint is kept in "
                                f"{Path(config.output_dir) / 'checkpoints'}; lower --lr or add a stop bound")
        if config.max_grad_norm > 0:
            acc.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.state["global_step"] += 1
        run.state["tokens_seen"] += int(acc.reduce(tokens, reduction="sum").item())
        checksums = acc.gather(torch.tensor([_checksum(draw_ids)], device=acc.device)).tolist()
        record = {"step": run.state["global_step"], "epoch": epoch, "lr": run.scheduler.get_last_lr()[0],
                  **step_metrics, "tokens_seen": run.state["tokens_seen"]}
        if draw_ids:
            record["retain_draw_checksums"] = checksums
        log(record)
        elapsed = max(time.perf_counter() - started, 1e-9)
        progress.set_postfix_str(_fmt({**step_metrics, "tok/s": (run.state["tokens_seen"] - tokens_at_start) / elapsed}))
        progress.update(1)
        forget_nll = step_metrics.get("forget_nll")
        if stop_forget_nll is not None and forget_nll is not None and forget_nll > stop_forget_nll:
            progress.close()
            return f"forget NLL {forget_nll:.3f} passed --stop_forget_nll {stop_forget_nll} at epoch {epoch}"
    progress.close()
    return None


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def train(model, tokenizer, *, method: Method, params: LossParams, forget: list[Record], retain: list[Record] | None,
          config: TrainConfig, rmu_layer: int | None = None, stop_forget_nll: float | None = None,
          epoch_hook: EpochHook | None = None, resolved_config: str | None = None) -> RunResult:
    """Run the loop: setup → train → save → cleanup. The caller has validated inputs and prepared ``output_dir``."""
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    run = setup(model, tokenizer, method, params, forget, retain, config)
    acc = run.accelerator
    layer = rmu_layer if method.needs.hidden else None
    metrics_path = output_dir / "metrics.jsonl"
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(metrics_path, run.state["global_step"])
        if resolved_config is not None:
            ckpt.write_text_atomic(output_dir / "config.yaml", resolved_config)
    log_file = open(metrics_path, "a") if acc.is_main_process else None  # noqa: SIM115 (closed in finally)

    def log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    result = RunResult(output_dir, run.state["epoch"], run.state["global_step"], run.state["tokens_seen"])
    try:
        epochs = tqdm(range(run.state["epoch"] + 1, config.epochs + 1), desc=method.name,
                      disable=not acc.is_main_process, dynamic_ncols=True)
        for epoch in epochs:
            stopped = train_epoch(run, method, params, config, tokenizer, epoch, layer, log, stop_forget_nll)
            run.state.update(epoch=epoch, stopped=stopped)
            if config.save_checkpoints or stopped:
                path = ckpt.save_checkpoint(acc, run.model, tokenizer, run.optimizer, run.scheduler, output_dir,
                                            epoch, dict(run.state))
                if epoch_hook is not None:
                    result.epoch_results.append(epoch_hook(epoch, path) or {})
            if stopped:
                acc.print(stopped)
                break
        save_final(run, tokenizer, output_dir, config)
    finally:
        if log_file is not None:
            log_file.close()
        acc.free_memory()
    result.epochs_completed = run.state["epoch"]
    result.global_step, result.tokens_seen = run.state["global_step"], run.state["tokens_seen"]
    result.stopped, result.wall_seconds = run.state["stopped"], time.perf_counter() - started
    return result


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint, so that the log matches the weights."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    ckpt.write_text_atomic(path, "".join(line + "\n" for line in kept))


def save_final(run: _Run, tokenizer, output_dir: Path, config: TrainConfig) -> None:
    """The final model (or adapter) into ``output_dir``; under LoRA with ``--merge`` also ``output_dir/merged``."""
    acc = run.accelerator
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(run.model)
    weights = acc.get_state_dict(run.model)
    if acc.is_main_process:
        unwrapped.save_pretrained(output_dir, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        (output_dir / "trainer_state.json").write_text(json.dumps(run.state, indent=1, sort_keys=True))
        if run.is_peft and config.merge:
            from obliviate.models.load import save_pretrained_atomic

            merged = copy.deepcopy(unwrapped).merge_and_unload()
            save_pretrained_atomic(merged, tokenizer, output_dir / "merged")
    acc.wait_for_everyone()
