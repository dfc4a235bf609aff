"""The one training loop, on accelerate: setup → train → save → cleanup.

Fine-tuning and every unlearning method run through it; only the objective (a :class:`~obliviate.losses.Method`)
changes. The loop builds what the method declares it needs and nothing else: a retain batch, a reference (a frozen
copy, or under LoRA the same model with its adapters disabled), hidden states.
"""

from __future__ import annotations

import contextlib
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
from accelerate.utils import DistributedType, GradientAccumulationPlugin, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from obliviate.config import TrainConfig
from obliviate.data.batching import (
    TokenBatch,
    collate,
    encode_record,
    forget_order,
    length_pieces,
    micro_batches_for_rank,
    retain_draws,
    scored_tokens,
)
from obliviate.data.records import Record
from obliviate.distributed import cpu_launch, process_state
from obliviate.errors import ConfigError, TrainingError
from obliviate.io import append_line, kill_point, write_text_atomic
from obliviate.losses import Method
from obliviate.losses.common import IGNORE_INDEX, Forward, LossInputs, LossParams, sequence_logprob
from obliviate.models.load import write_tokenizer_fingerprint
from obliviate.models.trainable import decoder_layers
from obliviate.train import checkpoint as ckpt

_PLAIN = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
"""One process or plain data parallelism: every process holds the whole model."""

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
class _Run:
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


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def setup(
    model,
    tokenizer,
    method: Method,
    params: LossParams,
    forget: list[Record],
    retain: list[Record] | None,
    config: TrainConfig,
) -> _Run:
    """Prepare model, reference, optimizer, schedule and tokenised data; restore a checkpoint on ``--resume``."""
    accelerator, accumulation = _accelerator(config)
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
        _enable_checkpointing(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        uniform_dtype_for_fsdp(model)
    control = None
    if needs.hidden:
        from obliviate.losses.rmu import make_control_vector

        control = make_control_vector(model.config.hidden_size, params.rmu_c, config.seed).to(accelerator.device)
    forget_steps = math.ceil(len(forget) / config.batch_size)
    steps_per_epoch = forget_steps * (1 + _retain_steps(config))
    epochs, total_steps = planned_length(config, steps_per_epoch)
    optimizer, scheduler = _optimizer(model, config, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference = _prepare_reference(accelerator, reference)
    run = _Run(
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


@torch.no_grad()
def reference_logprobs(run: _Run, config: TrainConfig, tokenizer) -> torch.Tensor:
    """``log π_ref(y|x)`` of every forget row under the model as it is now (the starting model), ``[rows]`` on the
    device, in micro-batches of rows in order. Every process computes all rows (the same forwards on every rank,
    as sharded weights need); eval mode and autocast, as the frozen copy it replaces would run."""
    model, acc = run.model, run.accelerator
    was_training = model.training
    model.eval()
    values = []
    for start in range(0, len(run.forget), config.micro_batch_size):
        batch = collate(run.forget[start : start + config.micro_batch_size], tokenizer.pad_token_id).to(acc.device)
        with acc.autocast():
            out = _forward(model, batch)
        values.append(sequence_logprob(out.logits, out.labels)[0].float())
    model.train(was_training)
    return torch.cat(values)


def _enable_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpointing, said explicitly: transformers 4.x defaults to the reentrant kind (5.x does not),
    which computes no gradient for a block none of whose inputs requires one. Where the embeddings are frozen (LoRA,
    a ``--trainable_layers`` subset) the embedding output is also made to require grad, which either kind accepts."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns until v6
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if not model.get_input_embeddings().weight.requires_grad:
        model.enable_input_require_grads()


def uniform_dtype_for_fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP flattens each unit's parameters into one tensor of one dtype; a bf16 base with fp32 LoRA adapters in the
    same decoder block fails with "Must flatten tensors with uniform dtype". The parameters go to fp32 (mixed
    precision still computes in bf16); buffers are left as they are."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return cast_parameters(model, torch.float32) if len(dtypes) > 1 else model


def accumulation_steps(config: TrainConfig) -> int:
    """Micro-batches per optimizer step: ``batch_size / (micro_batch_size x processes)``, which must be whole."""
    world = process_state().num_processes
    if config.batch_size % (config.micro_batch_size * world):
        raise ConfigError(
            f"--batch_size {config.batch_size} must be a multiple of --micro_batch_size "
            f"{config.micro_batch_size} x {world} process(es)"
        )
    return config.batch_size // (config.micro_batch_size * world)


def _accelerator(config: TrainConfig) -> tuple[Accelerator, int]:
    """The accelerator, and the micro-batches per optimizer step that make ``--batch_size`` on this launch."""
    accumulation = accumulation_steps(config)
    # accelerate (and DeepSpeed, which steps inside backward) must know the accumulation to sync at its boundary.
    # Under FSDP, skipping the sync would keep every micro-batch's gradients unsharded: a full-size fp32 copy.
    plugin = GradientAccumulationPlugin(num_steps=accumulation, sync_each_batch=_fsdp_launch())
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_plugin=plugin,
        cpu=cpu_launch(),
    )
    if config.resume and accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(
            "--resume is supported for single-process and DDP runs: the checkpoints hold the main "
            "process's optimizer state, not the shards of DeepSpeed / FSDP"
        )
    _configure_deepspeed(accelerator, config)
    _configure_fsdp(accelerator)
    return accelerator, accumulation


def _fsdp_launch() -> bool:
    """Launched with an FSDP config (``accelerate launch`` exports it before the accelerator exists)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def _configure_fsdp(accelerator: Accelerator) -> None:
    """FSDP computes in bf16 but keeps buffers in fp32: accelerate's default policy would round RoPE's ``inv_freq``.

    A rounded ``inv_freq`` shifts every rotary phase (up to 0.6 rad below position 512), so the reference and the
    model would disagree at step 0. FSDP2 never casts buffers; FSDP1 does unless ``buffer_dtype`` says otherwise.
    """
    plugin = accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None
    if plugin is None or accelerator.mixed_precision == "no" or getattr(plugin, "fsdp_version", 1) != 1:
        return
    plugin.set_mixed_precision(accelerator.mixed_precision, buffer_autocast=True, override=True)


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


def reset_schedule(run: _Run, config: TrainConfig, lr: float) -> None:
    """Start the optimizer afresh at peak rate ``lr``: no moments, and a new schedule from step 0."""
    inner = getattr(run.optimizer, "optimizer", run.optimizer)  # accelerate wraps it
    inner.state.clear()
    for group in inner.param_groups:
        group["lr"] = group["initial_lr"] = lr
    run.scheduler = _schedule(inner, config, run.total_steps)


def _configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Fill what DeepSpeed would otherwise take from a prepared dataloader (the loop batches by itself)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm


def _prepare_reference(accelerator: Accelerator, reference: torch.nn.Module) -> torch.nn.Module:
    """Place the frozen reference copy: sharded like the trained model under ZeRO-3 and FSDP, whole otherwise."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        ds_config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        ds_config.pop("optimizer", None)
        ds_config.pop("scheduler", None)
        if ds_config.get("zero_optimization", {}).get("stage") != 3:
            ds_config["zero_optimization"] = {"stage": 0}  # stages 1-2 shard only optimizer state: nothing to shard
        if accelerator.mixed_precision == "bf16":
            cast_parameters(reference, torch.bfloat16)  # DeepSpeed would anyway; the host copy is halved meanwhile
        engine, *_ = deepspeed.initialize(model=reference, config=ds_config)
        engine.eval()  # DeepSpeedEngine.eval() returns None, not the engine
        return engine
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if accelerator.mixed_precision == "bf16":
        # autocast runs the matmuls in bf16 anyway: linear weights stored so take half the memory and give the very
        # same products, and the rest (embeddings, norms) stays as the model has it, so that at step 0 the copy
        # computes exactly what the model does. FSDP flattens one dtype per unit: there every parameter goes
        # (accelerate upcasts only trainable ones, so the frozen copy stays bf16).
        cast_parameters(reference, torch.bfloat16, linear_only=not fsdp)
    if fsdp:
        return accelerator.prepare_model(reference).eval()
    return reference.to(accelerator.device)


def cast_parameters(module: torch.nn.Module, dtype: torch.dtype, linear_only: bool = False) -> torch.nn.Module:
    """Cast parameters, never buffers: ``module.to(dtype)`` would also round RoPE's fp32 ``inv_freq``, and a
    reference would then disagree with the model it copies before any step.

    With ``linear_only``, only weights that belong to ``nn.Linear`` layers alone (a tied embedding stays).
    """
    kept = set()
    if linear_only:
        others = (m for m in module.modules() if not isinstance(m, torch.nn.Linear))
        kept = {id(p) for m in others for p in m.parameters(recurse=False)}
    for param in module.parameters():
        if param.is_floating_point() and id(param) not in kept:
            param.data = param.data.to(dtype)
    return module


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


class _StopForward(Exception):
    """Raised by the layer hook once a pass that needs only ``h^ℓ`` has it: the layers above and the logits are
    never computed."""


def _forward(model, batch: TokenBatch, layer: torch.nn.Module | None = None, stop: bool = False) -> Forward:
    """One pass; with ``layer`` (a decoder block) its output is kept as ``Forward.hidden``, ``[batch, seq, hidden]``.

    The block's own output is taken through a hook rather than from ``output_hidden_states``, whose last entry has
    the final norm applied: ``h^ℓ`` must mean the same thing at every depth. With ``stop`` the pass ends at
    ``layer`` and ``Forward.logits`` is None.
    """
    captured: list[torch.Tensor] = []

    def keep(_module, _args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        if stop:
            raise _StopForward

    handle = layer.register_forward_hook(keep) if layer is not None else None
    logits = None
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    except _StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()
    return Forward(logits, batch.labels, batch.attention_mask, captured[-1] if captured else None)


def _joint_forward(
    model, first: TokenBatch, second: TokenBatch, layer: torch.nn.Module | None
) -> tuple[Forward, Forward]:
    """Both batches in one forward pass, each given back at its own width: under ZeRO-3 / FSDP one all-gather of the
    weights instead of two. Right padding to the common width changes nothing for the real tokens (causal attention,
    padded positions masked and unscored)."""
    width = max(first.input_ids.shape[1], second.input_ids.shape[1])

    def widen(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    joint = TokenBatch(
        torch.cat([widen(first.input_ids, 0), widen(second.input_ids, 0)]),  # any id: masked, unscored
        torch.cat([widen(first.attention_mask, 0), widen(second.attention_mask, 0)]),
        torch.cat([widen(first.labels, IGNORE_INDEX), widen(second.labels, IGNORE_INDEX)]),
    )
    out = _forward(model, joint, layer)
    rows = first.input_ids.shape[0]
    parts = []
    for batch, picked in ((first, slice(0, rows)), (second, slice(rows, None))):
        length = batch.input_ids.shape[1]
        logits = out.logits[picked, :length] if out.logits is not None else None
        hidden = out.hidden[picked, :length] if out.hidden is not None else None
        parts.append(Forward(logits, batch.labels, batch.attention_mask, hidden))
    return parts[0], parts[1]


@contextlib.contextmanager
def _reference(run: _Run):
    """The frozen reference: a copy, or (under LoRA) the same model with its adapters switched off."""
    if run.reference is not None:
        yield run.reference
        return
    # the switch is on the inner PEFT model, the forward goes through the wrapper (DDP / FSDP / DeepSpeed)
    with run.accelerator.unwrap_model(run.model).disable_adapter():
        yield run.model


def _block(accelerator: Accelerator, model, layer: int | None) -> torch.nn.Module | None:
    return None if layer is None else decoder_layers(accelerator.unwrap_model(model))[layer]


def _loss_inputs(
    run: _Run,
    method: Method,
    forget: TokenBatch,
    retain: TokenBatch | None,
    layer: int | None,
    paired: TokenBatch | None = None,
    rows: list[int] | None = None,
) -> LossInputs:
    """What ``method`` reads for one micro-batch; ``rows`` are the forget rows of ``forget`` (for a cached
    reference)."""
    needs = method.needs
    block = _block(run.accelerator, run.model, layer)
    if retain is not None and run.joint_forward:
        forget_out, retain_out = _joint_forward(run.model, forget, retain, block)
        inputs = LossInputs(forget=forget_out, retain=retain_out, control=run.control)
    else:
        inputs = LossInputs(forget=_forward(run.model, forget, block), control=run.control)
        if retain is not None:
            inputs.retain = _forward(run.model, retain, block)
    if paired is not None:
        inputs.paired = _forward(run.model, paired, block)
    if needs.reference_logprob and run.forget_ref_logprob is not None:
        index = torch.as_tensor(rows, device=run.forget_ref_logprob.device)
        inputs.forget_ref_logprob = run.forget_ref_logprob.index_select(0, index)
    elif needs.reference:
        # hidden-states methods read only h^ℓ of the reference; a pass cut short is safe without backward and
        # without sharding (ZeRO-3 and FSDP expect every forward to visit every unit)
        stop = needs.hidden and run.accelerator.distributed_type in _PLAIN
        with torch.no_grad(), _reference(run) as reference:
            reference_block = _block(run.accelerator, reference, layer)
            if "forget" in needs.reference_on:
                inputs.forget_ref = _forward(reference, forget, reference_block, stop)
            if "retain" in needs.reference_on and retain is not None:
                inputs.retain_ref = _forward(reference, retain, reference_block, stop)
    return inputs


def _checksum(indices: list[int]) -> int:
    value = 0
    for index in indices:
        value = (value * 1_000_003 + index + 1) % 2_147_483_647
    return value


def epoch_batches(run: _Run, config: TrainConfig, epoch: int) -> tuple[list[list[int]], list[list[int] | None]]:
    """This process's forget micro-batches of ``epoch`` and the retain rows paired with each.

    Also points ``run.forget`` / ``run.paired`` at the epoch's relabelled or fake-value draw, where the method has
    them. The same ``(seed, epoch)`` gives the same batches on every call: a resumed run continues the very order.
    """
    acc = run.accelerator
    if run.forget_draws:  # a relabelling method: epoch e trains on draw e mod n, a fresh stranger each time
        run.forget = run.forget_draws[(epoch - 1) % len(run.forget_draws)]
    if run.paired_draws:  # a paired method: epoch e compares with draw e mod n of fresh fakes
        run.paired = run.paired_draws[(epoch - 1) % len(run.paired_draws)]
    grouped = config.group_by_length
    lengths = [len(e.ids) for e in run.forget] if grouped else None
    order = forget_order(len(run.forget), run.forget_steps, config.batch_size, config.seed, epoch, lengths)
    micro = micro_batches_for_rank(order, acc.num_processes, acc.process_index, config.micro_batch_size)
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


def _retain_steps(config: TrainConfig) -> int:
    """Retain-only steps after each forget step: ``--retain_steps`` under ``--schedule interleaved``, else 0."""
    return config.retain_steps if getattr(config, "schedule", "joint") == "interleaved" else 0


def interleaved_plan(run: _Run, config: TrainConfig, epoch: int) -> list[tuple[str, int]]:
    """The epoch's steps in order under ``--schedule interleaved``: ``("forget", i)`` for forget step ``i``, each
    followed by ``("retain", j)`` for ``--retain_steps`` retain steps ``j``, counted through the epoch."""
    plan: list[tuple[str, int]] = []
    for i in range(run.forget_steps):
        plan.append(("forget", i))
        plan.extend(("retain", i * config.retain_steps + k) for k in range(config.retain_steps))
    return plan


def _retain_only_batches(run: _Run, config: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """This process's retain micro-batches of each retain-only step of ``epoch`` (a seeded order of its own)."""
    acc = run.accelerator
    steps = run.forget_steps * config.retain_steps
    order = forget_order(len(run.retain), steps, config.batch_size, config.seed + 1, epoch)
    micro = micro_batches_for_rank(order, acc.num_processes, acc.process_index, config.micro_batch_size)
    return [micro[i : i + run.accumulation] for i in range(0, len(micro), run.accumulation)]


def optimizer_step(run: _Run, config: TrainConfig) -> None:
    """Clip, step the optimizer and the schedule, clear the gradients."""
    if config.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def train_epoch(
    run: _Run,
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
    interleaved = _retain_steps(config) > 0
    plan = interleaved_plan(run, config, epoch) if interleaved else [("joint", i) for i in range(len(forget_groups))]
    retain_groups = _retain_only_batches(run, config, epoch) if interleaved else []
    forget_params = dataclasses.replace(params, alpha=0.0, kl_weight=0.0) if interleaved else params
    chunk_steps = math.ceil(config.chunk_size / config.batch_size) * (1 + config.retain_steps) if interleaved else 0
    for position, (phase, index) in enumerate(plan):
        if chunk_steps and position % chunk_steps == 0:  # a new chunk of the forget set: the schedule restarts
            run.scheduler = _schedule(getattr(run.optimizer, "optimizer", run.optimizer), config, chunk_steps)
        if phase == "retain":
            step_metrics, tokens, checksums = _retain_step(run, params, config, tokenizer, epoch, retain_groups[index])
        else:
            forget_ids, retain_ids = forget_groups[index]
            step_metrics, tokens, checksums = _accumulate(
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
        progress.set_postfix_str(_fmt({**step_metrics, "tok/s": speed}))
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


def _retain_step(run: _Run, params: LossParams, config: TrainConfig, tokenizer, epoch: int, micro: list[list[int]]):
    """One retain-only step of the interleaved schedule: plain NLL on retain rows (logged as ``retain_nll``)."""
    from obliviate.losses import FINETUNE

    forget, paired = run.forget, run.paired
    run.forget, run.paired = run.retain, []  # _accumulate reads its rows from run.forget
    try:
        metrics, tokens, _ = _accumulate(
            run, FINETUNE, params, config, tokenizer, epoch, None, micro, [None] * len(micro)
        )
    finally:
        run.forget, run.paired = forget, paired
    return {"retain_nll": metrics["nll"]}, tokens, None


def _step_check(run: _Run, tokenizer, epoch: int, log) -> str | None:
    """Ask the run's stop rule (every process asks; the model is the same everywhere) and log what it measured."""
    if run.step_check is None:
        return None
    model = run.accelerator.unwrap_model(run.model)
    checks_before = len(run.step_check.history)
    reason = run.step_check(model, tokenizer, run.state["global_step"])
    if len(run.step_check.history) > checks_before:
        log({"step": run.state["global_step"], "epoch": epoch, "stop_check": run.step_check.history[-1]})
    return reason


def _accumulate(
    run: _Run,
    method: Method,
    params: LossParams,
    config: TrainConfig,
    tokenizer,
    epoch: int,
    layer: int | None,
    forget_ids: list[list[int]],
    retain_ids: list[list[int] | None],
):
    """Forward and backward over one optimizer step's micro-batches; accelerate syncs gradients on the last one.

    Metrics stay on the device until the step's last forward; then one all-gather and one host copy carry them, the
    token counts (taken on the CPU before the batches move) and the retain-draw checksums. That happens before the
    last backward, because DeepSpeed steps inside it: a non-finite loss on any process stops every process first.

    Returns:
        ``(metrics averaged over micro-batches and processes, tokens this step on all processes, per-process
        retain-draw checksums or None)``.
    """
    acc = run.accelerator
    pad_id = tokenizer.pad_token_id
    sums: dict[str, torch.Tensor] = {}
    tokens, draw_ids, step = 0, [], None
    for position, (forget_rows, retain_rows) in enumerate(zip(forget_ids, retain_ids)):
        draw_ids.extend(retain_rows or [])
        pieces = [forget_rows]
        if _splittable(acc, method, retain_rows, config):
            lengths = [len(run.forget[r].ids) for r in forget_rows]
            pieces = [[forget_rows[i] for i in piece] for piece in length_pieces(lengths)]
        on_cpu = [collate([run.forget[i] for i in piece], pad_id) for piece in pieces]
        retain_cpu = collate([run.retain[i] for i in retain_rows], pad_id) if retain_rows else None
        paired = collate([run.paired[i] for i in forget_rows], pad_id).to(acc.device) if run.paired else None
        tokens += sum(b.num_tokens for b in on_cpu) + (retain_cpu.num_tokens if retain_cpu is not None else 0)
        scored = [scored_tokens(b) for b in on_cpu] if len(on_cpu) > 1 else [1]
        retain = retain_cpu.to(acc.device) if retain_cpu is not None else None
        with acc.accumulate(run.model):
            for index, batch in enumerate(on_cpu):
                share = scored[index] / max(sum(scored), 1)  # token-mean losses: pieces weighted by scored tokens
                last = index == len(on_cpu) - 1
                with contextlib.nullcontext() if last else acc.no_sync(run.model):
                    with acc.autocast():
                        rows = pieces[index]
                        inputs = _loss_inputs(run, method, batch.to(acc.device), retain, layer, paired, rows)
                        out = method.loss(inputs, params)
                    for key, value in {"loss": out.loss.detach(), **out.metrics}.items():
                        value = torch.as_tensor(value, dtype=torch.float32, device=acc.device)
                        sums[key] = sums.get(key, 0.0) + value.detach().float() * (share / run.accumulation)
                    if last and position == len(forget_ids) - 1:
                        step = _gather_step(acc, sums, tokens, draw_ids)
                        if not all(math.isfinite(v) for v in step[0].values()):
                            _non_finite(run, config, epoch, step[0])
                    acc.backward(out.loss * share if share != 1 else out.loss)  # accelerate divides by accumulation
    metrics, tokens_all, checksums = step
    return metrics, tokens_all, checksums if draw_ids else None


def _gather_step(acc: Accelerator, sums: dict[str, torch.Tensor], tokens: int, draw_ids: list[int]):
    """``[metrics..., tokens, checksum]`` of every process in one all-gather and one ``.tolist()``.

    float64 carries the token count and the checksum (< 2^31) exactly.
    """
    extra = torch.tensor([tokens, _checksum(draw_ids)], dtype=torch.float64, device=acc.device)
    local = torch.cat([torch.stack(list(sums.values())).double(), extra]) if sums else extra
    rows = acc.gather(local.unsqueeze(0)).tolist()  # [processes, len(sums) + 2]
    metrics = {key: sum(row[i] for row in rows) / len(rows) for i, key in enumerate(sums)}
    return metrics, int(sum(row[-2] for row in rows)), [int(row[-1]) for row in rows]


def _splittable(acc: Accelerator, method: Method, retain_rows: list[int] | None, config: TrainConfig) -> bool:
    """Whether a micro-batch may run as length-sorted pieces: a token-mean loss alone, ``--length_pieces`` on, and
    one process or plain data parallelism (DeepSpeed steps inside each backward; FSDP gathers parameters in every
    forward, and ranks may cut different numbers of pieces)."""
    return config.length_pieces and method.token_mean and not retain_rows and acc.distributed_type in _PLAIN


def _non_finite(run: _Run, config: TrainConfig, epoch: int, metrics: dict[str, float]) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    raise TrainingError(
        f"non-finite loss at epoch {epoch} step {run.state['global_step'] + 1} ({_fmt(metrics)}); "
        f"the last good checkpoint is kept in {Path(config.output_dir) / 'checkpoints'}; lower --lr "
        "or add a stop bound"
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


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


def save_final(run: _Run, tokenizer, output_dir: Path, config: TrainConfig) -> None:
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
