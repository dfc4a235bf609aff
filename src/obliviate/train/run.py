"""The library entry points behind ``obliviate finetune`` and ``obliviate unlearn``.

Each validates every input before anything is written, prepares the output directory, and calls the one loop.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed

from obliviate.config import FinetuneConfig, TrainConfig, UnlearnConfig, to_yaml
from obliviate.data.load import check_overlap, load_split, load_training_records
from obliviate.distributed import process_state
from obliviate.errors import ConfigError, TrainingError
from obliviate.io import check_output_dir, prepare_output_dir, sha256_tree
from obliviate.losses import FINETUNE, Method, get_method
from obliviate.losses.common import LossParams
from obliviate.models.load import load_model, model_paths
from obliviate.models.tiny import SIZES, init_model
from obliviate.models.trainable import apply_lora, select_trainable
from obliviate.train import checkpoint as ckpt
from obliviate.train.inputs import prepare_forget
from obliviate.train.loop import train
from obliviate.train.parallel import accumulation_steps, resolve_mixed_precision, retain_micro_batch_size
from obliviate.train.resolve import (
    AUTO,
    auto_method,
    resolve_params,
    resolve_rmu,
    resolve_steps,
    with_preset,
)
from obliviate.train.sampling import retain_steps_per_forget
from obliviate.train.state import EpochHook, RunResult
from obliviate.train.trackers import check_tracker

RESUME_MAY_CHANGE = (
    "epochs",
    "resume",
    "overwrite",
    "eval_every_epoch",
    "eval_max_examples",
    "merge",
    "report_to",
)
"""Options ``--resume`` accepts with another value than the run started with; any other difference is refused.

``epochs`` may only grow, and only under the constant schedule (a linear or cosine schedule's shape depends on it).
"""

_PATH_OPTIONS = ("model_dir", "forget_dir", "retain_dir", "holdout_dir", "output_dir", "model")


def _normalised(values: dict) -> dict:
    out = dict(values)
    for name in _PATH_OPTIONS:
        if out.get(name):
            out[name] = _real_path(out[name])
    if out.get("data"):
        out["data"] = [_real_path(d) for d in out["data"]]
    return out


def _real_path(value) -> str:
    """An existing path as its resolved form (so ``./m`` and ``m`` compare equal); anything else as given."""
    path = Path(str(value)).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


def check_resume(out: Path, resolved: TrainConfig) -> None:
    """``--resume`` must continue the run in ``out`` as it was configured: one line lists every difference.

    Raises:
        ConfigError: an option other than :data:`RESUME_MAY_CHANGE` differs, or ``--epochs`` shrinks or changes a
            non-constant schedule.
    """
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"{saved_file} is damaged: cannot resume this run") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_file} is damaged: cannot resume this run")
    saved, now = _normalised(saved), _normalised(dataclasses.asdict(resolved))
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    changed += [k for k in now if k not in saved and k not in RESUME_MAY_CHANGE]
    differences = [f"--{k} {saved.get(k)!r} -> {now[k]!r}" for k in changed]
    epochs_before = saved.get("epochs", now["epochs"])
    if now["epochs"] < epochs_before:
        differences.append(f"--epochs {epochs_before} -> {now['epochs']} (may only grow)")
    elif now["epochs"] != epochs_before and now["scheduler"] != "constant":
        differences.append(f"--epochs {epochs_before} -> {now['epochs']} (only under --scheduler constant)")
    if differences:
        raise ConfigError(
            f"--resume would train something else than the run in {out}: {'; '.join(differences)} "
            f"(only {', '.join(RESUME_MAY_CHANGE)} may change)"
        )


def weights_dtype(config: TrainConfig) -> torch.dtype | None:
    """fp32 for weights that are trained, the device default (bf16 on recent GPUs) for a frozen LoRA base.

    AdamW on bf16 weights loses the update: at lr 1e-5 a step is below half the bf16 spacing of a weight of 0.02
    (1.2e-4), so it rounds away. Mixed precision keeps the compute in bf16 (autocast; DeepSpeed keeps fp32 master
    weights of its own).
    """
    if config.lora_r == 0 and _deepspeed_launch() and resolve_mixed_precision(config.mixed_precision) == "bf16":
        return torch.bfloat16  # DeepSpeed keeps its own fp32 master weights: no fp32 host copy per process
    return torch.float32 if config.lora_r == 0 else None


def _deepspeed_launch() -> bool:
    """``accelerate launch`` with a DeepSpeed config says so in the environment before the accelerator exists."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _fsdp_launch() -> bool:
    """``accelerate launch`` with an FSDP config, as :func:`_deepspeed_launch`."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _select(model, config, layer: int | None):
    """The trainable part. ``--trainable_layers auto``: every layer, or, for a method that reads hidden states at
    ``layer`` (``Needs.hidden``: RMU), the MLPs of that layer and the two below it, as RMU's recipe trains."""
    layers, modules = config.trainable_layers, config.trainable_modules
    if layers == "auto":
        if layer is not None:
            layers, modules = f"{max(0, layer - 2)}-{layer}", "mlp"
        else:
            layers = "all"
    if modules == "auto":  # no method preset chose (train.resolve.with_preset): the whole of each chosen layer
        modules = "all"
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


def _saved_lr(out: Path) -> float | None:
    """The rate a run being resumed trained with (its config.yaml), for a resume that leaves ``--lr`` unset."""
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    lr = saved.get("lr") if isinstance(saved, dict) else None
    return float(lr) if isinstance(lr, (int, float)) else None


def run_unlearn(
    config: UnlearnConfig,
    epoch_hook: EpochHook | None = None,
    extra_inputs: list[str | Path] | None = None,
    step_check=None,
    stop_rule=None,
) -> RunResult:
    """Unlearn ``config.forget_dir`` from ``config.model_dir``; see :class:`~obliviate.config.UnlearnConfig`.

    Options left unset are resolved here (:mod:`obliviate.train.resolve`), and the resolved values go to
    ``config.yaml``: the method's preset, the step budget (:attr:`~obliviate.losses.Method.steps`), the
    stop-check interval, the RMU coefficient (adaptive) and, inside the loop, the learning rate
    (:mod:`obliviate.train.lr_probe`).

    ``extra_inputs`` are other paths the caller read (a ``--config`` file): the output may not touch them either.
    ``step_check`` is a stop rule asked every few optimizer steps (see :mod:`obliviate.evaluate.stop_rule`);
    ``stop_rule`` instead builds one from the resolved config, when its ``stop_check_steps`` is not 0.
    """
    config, method, forget, retain, ignored = _read_inputs(config)
    out, inputs = _check_output(config, extra_inputs)
    if config.resume and config.lr is None:
        config = dataclasses.replace(config, lr=_saved_lr(out))
    model, tokenizer = load_model(
        config.model_dir, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
    )
    config, rmu_layer = resolve_rmu(model, tokenizer, config, method, forget)
    params = resolve_params(config)
    forget, forget_draws, paired_draws = prepare_forget(model, tokenizer, config, method, forget, retain)
    config = resolve_steps(config, forget, retain)
    resolved = dataclasses.replace(config, loss_params=params.as_dict(), rmu_layer=rmu_layer)
    if config.resume:
        check_resume(out, resolved)
    if step_check is None and stop_rule is not None and config.stop_check_steps:
        step_check = stop_rule(config)
    model = _select(model, config, rmu_layer)
    if ignored and process_state().is_main_process:  # every input is valid: the run goes ahead
        print(ignored, file=sys.stderr)
    _clear_output_dir(out, inputs, config, "unlearn")  # every input is valid: only now may an old output go
    return train(
        model,
        tokenizer,
        method=method,
        params=params,
        forget=forget,
        retain=retain if method.needs.retain else None,
        config=config,
        rmu_layer=rmu_layer,
        stop_forget_nll=config.stop_forget_nll or None,
        epoch_hook=epoch_hook,
        resolved_config=to_yaml(resolved),
        forget_draws=forget_draws,
        step_check=step_check,
        paired_draws=paired_draws,
        card=_unlearn_card(config),
    )


def _unlearn_card(config: UnlearnConfig) -> dict:
    """What an unlearned model's card says of its inputs: the starting model, and the data as hashes only."""
    retain = sha256_tree(config.retain_dir) if config.retain_dir else None
    return {
        "command": "unlearn",
        "base_model": config.model_dir,
        "forget_sha256": sha256_tree(config.forget_dir),
        "retain_sha256": retain,
    }


def _read_inputs(config: UnlearnConfig) -> tuple[UnlearnConfig, Method, list, list | None, str | None]:
    """The forget and retain sets, and the method (``--method auto`` chosen, its preset applied), checked before
    anything is written: an unknown method fails before any data is read."""
    if config.method != AUTO:  # an unknown name, or a weight it does not read, fails before any data is read
        get_method(config.method).params(config.loss_params)
    check_tracker(config)
    accumulation_steps(config)
    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain") if config.retain_dir else None
    if config.method == AUTO:
        config = dataclasses.replace(config, method=auto_method(config, forget, retain))
    given, config = config, with_preset(config)
    if retain_steps_per_forget(config):  # the preset may set it: a --retain_batch_size that does not divide fails
        retain_micro_batch_size(config, accumulation_steps(config))
    elif config.schedule == "interleaved":
        raise ConfigError("--schedule interleaved with --retain_steps 0 takes no retain step: use --schedule joint")
    method = get_method(config.method)
    if retain_steps_per_forget(config) and not method.needs.retain:
        raise ConfigError(
            f"--schedule interleaved takes retain steps, and method {method.name} reads no retain set: use ga_gd "
            "(its forget steps are GA's) or --schedule joint"
        )
    if method.needs.retain and retain is None:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    if config.lr is None and not config.resume and (_deepspeed_launch() or _fsdp_launch()):
        raise ConfigError("the learning-rate range test (unset --lr) runs without DeepSpeed / FSDP: pass --lr")
    if retain is not None:
        check_overlap(forget, retain, allow_overlap=config.allow_overlap)
    return config, method, forget, retain, _ignored(given, config)


def _ignored(given: UnlearnConfig, config: UnlearnConfig) -> str | None:
    """A note naming the options the user set that this run does not read (``given``: before the method's preset;
    ``config``: after it), so that a misplaced flag is not silently without effect; None where there are none."""
    method = get_method(config.method)
    ignored = []
    if not retain_steps_per_forget(config):
        names = ("retain_steps", "retain_batch_size", "repair_exact")
        ignored += [f"--{name} (the schedule is joint)" for name in names if _set(given, name)]
    if _set(given, "fakes_per_step") and not method.needs.paired:
        ignored.append(f"--fakes_per_step ({method.name} compares with no fake-value copies)")
    if config.stop_check_steps == 0:
        off = "the stop rule is off: --stop_check_steps 0"
        ignored += [f"--{name} ({off})" for name in _STOP_RULE_OPTIONS if _set(given, name)]
    else:
        if given.field_stop and not method.needs.paired:
            ignored.append(f"--field_stop ({method.name} scores no value per field; the stop rule still ends the run)")
        if not config.holdout_dir:
            chance = "no --holdout_dir: the stop rule's reference is chance"
            ignored += [f"--{name} ({chance})" for name in ("stop_words", "stop_reread") if _set(given, name)]
    weights = {**method.params({}).as_dict(), **(config.loss_params or {})}
    if weights.get("calibrate") and (config.stop_check_steps == 0 or not config.holdout_dir):
        ignored.append(
            "--calibrate (its margins are the holdout's gaps the stop rule reads: needs --holdout_dir and the rule)"
        )
    if weights.get("anchor_floor") and not weights.get("fixed"):
        ignored.append("--anchor_floor (its floor is the frozen reference's NLL: needs --fixed 1)")
    if config.lr is not None and not config.resume:
        given_lr = "--lr is given, so no range test runs"
        ignored += [
            f"--{name} ({given_lr})"
            for name in ("lr_probe_steps", "lr_probe_rows", "lr_probe_settle")
            if _set(given, name)
        ]
    return f"obliviate: note: ignored: {'; '.join(ignored)}" if ignored else None


_STOP_RULE_OPTIONS = (
    "stop_band",
    "stop_retain_bound",
    "stop_retain_exact",
    "retain_guard",
    "retain_guard_max",
    "stop_words",
    "stop_pooled",
    "stop_reread",
    "stop_lower",
    "field_stop",
    "field_stop_words",
)
"""The options only the stop rule reads."""


def _set(config: UnlearnConfig, name: str) -> bool:
    """Whether option ``name`` differs from its default (a flag given with its default value cannot be told apart)."""
    value = getattr(config, name)
    return value is not None and value != UnlearnConfig.__dataclass_fields__[name].default


def _check_output(config: UnlearnConfig, extra_inputs: list[str | Path] | None) -> tuple[Path, list]:
    """The output directory, checked against every input (and, under ``--resume``, against a finished run)."""
    inputs = [
        *model_paths(config.model_dir),
        config.forget_dir,
        config.retain_dir,
        config.holdout_dir,
        *(extra_inputs or []),
    ]
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite, resume=config.resume)
    if config.resume and (out / "trainer_state.json").is_file() and not ckpt.list_checkpoints(out):
        raise TrainingError(f"{out} holds a finished run and no checkpoint: nothing to resume")
    return out, inputs


def run_finetune(
    config: FinetuneConfig, extra_inputs: list[str | Path] | None = None, memorisation_check=None
) -> RunResult:
    """Train a causal LM on ``config.data`` (answers only; documents on every token).

    With ``--model tiny`` (or ``small``, ``medium``) a tokenizer is trained on the data and a fresh OLMo model is built
    first.
    With ``--until_memorised`` the run ends at the first epoch whose check passes, ``--epochs`` being the budget;
    ``memorisation_check`` builds that check from the config (training never imports evaluation: the caller passes
    :func:`obliviate.evaluate.memorised.memorisation_check_for`).
    """
    accumulation_steps(config)
    check_tracker(config)
    if config.until_memorised is not None and memorisation_check is None:
        raise ConfigError("--until_memorised needs the evaluation suite: pass memorisation_check to run_finetune")
    records = load_training_records(config.data)
    epoch_check = memorisation_check(config) if config.until_memorised is not None else None
    model_inputs = model_paths(config.model) if config.model not in SIZES else []
    inputs = [*config.data, *model_inputs, *(extra_inputs or [])]
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite, resume=config.resume)
    if config.resume:
        check_resume(out, config)
    if config.model in SIZES:
        _clear_output_dir(out, inputs, config, "finetune")
        source = out / ".init"
        if process_state().is_main_process and not source.is_dir():
            init_model(records, source, size=config.model, arch=config.arch, seed=config.seed)
        process_state().wait_for_everyone()
        model, tokenizer = load_model(source, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code)
        model = _select(model, config, None)
    else:
        model, tokenizer = load_model(
            config.model, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
        )
        model = _select(model, config, None)
        _clear_output_dir(out, inputs, config, "finetune")
    return train(
        model,
        tokenizer,
        method=FINETUNE,
        params=LossParams(),
        forget=records,
        retain=None,
        config=config,
        resolved_config=to_yaml(config),
        card={
            "command": "finetune",
            "base_model": None if config.model in SIZES else config.model,
            "data_sha256": [sha256_tree(path) for path in config.data],
        },
        epoch_check=epoch_check,
    )


def _clear_output_dir(out: Path, inputs: list, config, command: str) -> None:
    """--overwrite: empty ``out`` once (on the main process; the others wait), after every input was validated.

    Every process has checked the output directory by now; the first barrier keeps a slow process from seeing the
    directory the main process is about to create (non-empty, so "pass --overwrite"), a race seen under torchrun."""
    state = process_state()
    state.wait_for_everyone()
    if state.is_main_process:
        prepare_output_dir(out, inputs, overwrite=config.overwrite, resume=config.resume, command=command)
    state.wait_for_everyone()
