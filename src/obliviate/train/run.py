"""The library entry points behind ``obliviate finetune`` and ``obliviate unlearn``.

Each validates every input before anything is written, prepares the output directory, and calls the one loop.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from accelerate.utils import set_seed

from obliviate.config import FinetuneConfig, TrainConfig, UnlearnConfig, to_yaml
from obliviate.data.load import check_overlap, load_split, load_training_records
from obliviate.errors import ConfigError, TrainingError
from obliviate.losses import FINETUNE, get_method
from obliviate.losses.common import LossParams
from obliviate.models.load import load_model
from obliviate.models.tiny import SIZES, init_model
from obliviate.models.trainable import apply_lora, decoder_layers, select_trainable
from obliviate.train import checkpoint as ckpt
from obliviate.train.loop import EpochHook, RunResult, accumulation_steps, process_state, train

_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(LossParams))


def check_output_dir(output_dir: str | Path, inputs: list[str | Path], *, overwrite: bool, resume: bool) -> Path:
    """Refuse an output directory that is, holds or lies inside an input, or is non-empty without --overwrite.

    Only checks: nothing is written or removed, so a later error leaves the directory as it was.
    """
    out = Path(output_dir).resolve()
    for source in inputs:
        if not str(source):
            continue
        src = Path(str(source)).expanduser()
        if src.exists() and (out == src.resolve() or src.resolve() in out.parents):
            raise ConfigError(
                f"--output_dir {output_dir} is the input {source} or inside it: inputs are never written"
            )
        if src.exists() and out in src.resolve().parents:  # --overwrite would delete the input with it
            raise ConfigError(f"--output_dir {output_dir} contains the input {source}: inputs are never written")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {output_dir} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not resume and not overwrite:
        raise ConfigError(f"--output_dir {output_dir} is not empty: pass --overwrite to replace it or --resume")
    return out


def prepare_output_dir(output_dir: str | Path, inputs: list[str | Path], *, overwrite: bool, resume: bool) -> Path:
    """:func:`check_output_dir`, then empty the directory when --overwrite (and not --resume) allows it."""
    out = check_output_dir(output_dir, inputs, overwrite=overwrite, resume=resume)
    if out.is_dir() and any(out.iterdir()) and not resume:
        shutil.rmtree(out)
    return out


def resolve_params(config: UnlearnConfig) -> LossParams:
    """Method defaults (e.g. simnpo β = 4.5) for every weight the user left unset."""
    method = get_method(config.method)
    values = {name: getattr(config, name) for name in _PARAM_NAMES if getattr(config, name, None) is not None}
    return LossParams(**{**method.defaults, **values})


def weights_dtype(config: TrainConfig) -> torch.dtype | None:
    """fp32 for weights that are trained, the device default (bf16 on recent GPUs) for a frozen LoRA base.

    AdamW on bf16 weights loses the update: at lr 1e-5 a step is below half the bf16 spacing of a weight of 0.02
    (1.2e-4), so it rounds away. Mixed precision keeps the compute in bf16 (autocast; DeepSpeed keeps fp32 master
    weights of its own).
    """
    return torch.float32 if config.lora_r == 0 else None


def default_rmu_layer(num_layers: int) -> int:
    """A quarter of the depth (WMDP uses layer 7 of 32), at least 2 so that layers ℓ-2..ℓ exist when possible."""
    return min(num_layers - 1, max(2, num_layers // 4))


def _select(model, config, method_name: str, rmu_layer: int | None):
    layers, modules = config.trainable_layers, config.trainable_modules
    if layers == "auto":
        if method_name == "rmu" and rmu_layer is not None:
            layers, modules = f"{max(0, rmu_layer - 2)}-{rmu_layer}", "mlp"
        else:
            layers = "all"
    set_seed(config.seed)  # LoRA initialisation draws from the global RNG: the seed must fix it too
    if config.lora_r > 0:
        for param in model.parameters():
            param.requires_grad_(False)
        return apply_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target=config.lora_target,
            layers=layers,
            modules=modules,
        )
    select_trainable(model, layers, modules)
    return model


def run_unlearn(config: UnlearnConfig, epoch_hook: EpochHook | None = None) -> RunResult:
    """Unlearn ``config.forget_dir`` from ``config.model_dir``; see :class:`~obliviate.config.UnlearnConfig`."""
    method = get_method(config.method)
    params = resolve_params(config)
    accumulation_steps(config)
    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain") if config.retain_dir else None
    if method.needs.retain and retain is None:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    if retain is not None:
        check_overlap(forget, retain, allow_overlap=config.allow_overlap)
    inputs = [config.model_dir, config.forget_dir, config.retain_dir or ""]
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite, resume=config.resume)
    if config.resume and (out / "trainer_state.json").is_file() and not ckpt.list_checkpoints(out):
        raise TrainingError(f"{out} holds a finished run and no checkpoint: nothing to resume")
    model, tokenizer = load_model(
        config.model_dir, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
    )
    num_layers = len(decoder_layers(model))
    rmu_layer = None
    if method.needs.hidden:
        rmu_layer = config.rmu_layer if config.rmu_layer is not None else default_rmu_layer(num_layers)
        if not 0 <= rmu_layer < num_layers:
            raise ConfigError(f"--rmu_layer {rmu_layer} is out of range: the model has {num_layers} layers")
    model = _select(model, config, method.name, rmu_layer)
    _clear_output_dir(out, inputs, config)  # every input is valid: only now may an old output be replaced
    resolved = dataclasses.replace(
        config, **{k: getattr(params, k) for k in _PARAM_NAMES if hasattr(config, k)}, rmu_layer=rmu_layer
    )
    return train(
        model,
        tokenizer,
        method=method,
        params=params,
        forget=forget,
        retain=retain if method.needs.retain else None,
        config=config,
        rmu_layer=rmu_layer,
        stop_forget_nll=config.stop_forget_nll,
        epoch_hook=epoch_hook,
        resolved_config=to_yaml(resolved),
    )


def run_finetune(config: FinetuneConfig) -> RunResult:
    """Train a causal LM on ``config.data`` (answers only; documents on every token).

    With ``--model tiny`` (or ``small``) a tokenizer is trained on the data and a fresh OLMo model is built first.
    """
    accumulation_steps(config)
    records = load_training_records(config.data)
    inputs = list(config.data) + ([config.model] if config.model not in SIZES else [])
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite, resume=config.resume)
    if config.model in SIZES:
        _clear_output_dir(out, inputs, config)
        source = out / ".init"
        if process_state().is_main_process and not source.is_dir():
            init_model(records, source, size=config.model, arch=config.arch, seed=config.seed)
        process_state().wait_for_everyone()
        model, tokenizer = load_model(source, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code)
        model = _select(model, config, "finetune", None)
    else:
        model, tokenizer = load_model(
            config.model, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
        )
        model = _select(model, config, "finetune", None)
        _clear_output_dir(out, inputs, config)
    return train(
        model,
        tokenizer,
        method=FINETUNE,
        params=LossParams(),
        forget=records,
        retain=None,
        config=config,
        resolved_config=to_yaml(config),
    )


def _clear_output_dir(out: Path, inputs: list, config) -> None:
    """--overwrite: empty ``out`` once (on the main process; the others wait), after every input was validated."""
    state = process_state()
    if state.is_main_process:
        prepare_output_dir(out, inputs, overwrite=config.overwrite, resume=config.resume)
    state.wait_for_everyone()
