"""Accelerate, FSDP and DeepSpeed setup for the training loop, and where a frozen reference model lives.

:mod:`obliviate.distributed` answers where this process stands (rank, device, launch kind) for every subcommand; this
module builds what only training needs from it.
"""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, GradientAccumulationPlugin

from obliviate.config import TrainConfig
from obliviate.distributed import cpu_launch, fsdp_requested, process_state
from obliviate.errors import ConfigError
from obliviate.train.trackers import accelerator_kwargs

PLAIN = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
"""One process or plain data parallelism: every process holds the whole model."""

SHARDED = (DistributedType.DEEPSPEED, DistributedType.FSDP)
"""DeepSpeed and FSDP: each process holds its shard of the model, flattened by the engine."""


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def enable_checkpointing(model: torch.nn.Module) -> None:
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


def retain_micro_batch_size(config: TrainConfig, accumulation: int) -> int:
    """Rows per micro-batch of a retain-only step (``--retain_batch_size``, unset: ``--batch_size``), cut into the
    same number of micro-batches per process as a forget step, so that accelerate syncs and steps at the same
    boundary; the size must divide into them, and be at most ``--batch_size`` (a micro-batch no larger than
    ``--micro_batch_size``: the memory a forget step's micro-batch fits in)."""
    size = getattr(config, "retain_batch_size", None) or config.batch_size
    parts = accumulation * process_state().num_processes
    if size > config.batch_size:
        raise ConfigError(f"--retain_batch_size {size} must be at most --batch_size {config.batch_size}")
    if size % parts:
        raise ConfigError(
            f"--retain_batch_size {size} must be a multiple of {accumulation} micro-batch(es) per step x "
            f"{process_state().num_processes} process(es)"
        )
    return size // parts


def make_accelerator(config: TrainConfig) -> tuple[Accelerator, int]:
    """The accelerator, and the micro-batches per optimizer step that make ``--batch_size`` on this launch."""
    accumulation = accumulation_steps(config)
    # accelerate (and DeepSpeed, which steps inside backward) must know the accumulation to sync at its boundary.
    # Under FSDP, skipping the sync would keep every micro-batch's gradients unsharded: a full-size fp32 copy.
    plugin = GradientAccumulationPlugin(num_steps=accumulation, sync_each_batch=fsdp_requested())
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        gradient_accumulation_plugin=plugin,
        cpu=cpu_launch(),
        **accelerator_kwargs(config),
    )
    if config.resume and accelerator.distributed_type in SHARDED:
        raise ConfigError(
            "--resume is supported for single-process and DDP runs: the checkpoints hold the main "
            "process's optimizer state, not the shards of DeepSpeed / FSDP"
        )
    _configure_deepspeed(accelerator, config)
    _configure_fsdp(accelerator)
    return accelerator, accumulation


def _configure_fsdp(accelerator: Accelerator) -> None:
    """FSDP computes in bf16 but keeps buffers in fp32: accelerate's default policy would round RoPE's ``inv_freq``.

    A rounded ``inv_freq`` shifts every rotary phase (up to 0.6 rad below position 512), so the reference and the
    model would disagree at step 0. FSDP2 never casts buffers; FSDP1 does unless ``buffer_dtype`` says otherwise.
    """
    plugin = accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None
    if plugin is None or accelerator.mixed_precision == "no" or getattr(plugin, "fsdp_version", 1) != 1:
        return
    plugin.set_mixed_precision(accelerator.mixed_precision, buffer_autocast=True, override=True)


def _configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Fill what DeepSpeed would otherwise take from a prepared dataloader (the loop batches by itself)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm


def frozen_copy(model: torch.nn.Module, distributed_type: DistributedType) -> torch.nn.Module:
    """The frozen reference: a copy of ``model`` as it starts, gradients off.

    Outside FSDP and DeepSpeed the parameters the run does not train are not copied: the reference holds the very
    same tensors (``copy.deepcopy``'s memo maps each to itself), since they never change. Only the trained ones take
    memory twice: contrast's preset trains the MLPs alone, and OLMo-7B's reference then costs 4.3 of its 6.9 billion
    parameters (``BENCHMARKS.md``, peak memory). FSDP and DeepSpeed flatten and shard each model's parameters on their
    own, so there everything is copied.
    """
    share = distributed_type not in SHARDED
    memo = {id(p): p for p in model.parameters() if share and not p.requires_grad}
    return copy.deepcopy(model, memo).eval().requires_grad_(False)


def prepare_reference(
    accelerator: Accelerator, reference: torch.nn.Module, shared: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Place the frozen reference copy: sharded like the trained model under ZeRO-3 and FSDP, whole otherwise.

    ``shared``: the trained model, whose frozen parameters the reference may hold (:func:`frozen_copy`); those stay
    as the model keeps them, never cast here.
    """
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
        cast_parameters(reference, torch.bfloat16, linear_only=not fsdp, skip=shared)
    if fsdp:
        return accelerator.prepare_model(reference).eval()
    return reference.to(accelerator.device)


def cast_parameters(
    module: torch.nn.Module, dtype: torch.dtype, linear_only: bool = False, skip: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Cast parameters, never buffers: ``module.to(dtype)`` would also round RoPE's fp32 ``inv_freq``, and a
    reference would then disagree with the model it copies before any step.

    With ``linear_only``, only weights that belong to ``nn.Linear`` layers alone (a tied embedding stays). The
    parameters of ``skip`` stay as they are (a reference's tensors shared with the trained model).
    """
    kept = {id(p) for p in skip.parameters()} if skip is not None else set()
    if linear_only:
        others = (m for m in module.modules() if not isinstance(m, torch.nn.Linear))
        kept |= {id(p) for m in others for p in m.parameters(recurse=False)}
    for param in module.parameters():
        if param.is_floating_point() and id(param) not in kept:
            param.data = param.data.to(dtype)
    return module
