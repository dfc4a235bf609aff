"""The library entry points behind ``obliviate finetune`` and ``obliviate unlearn``.

Each validates every input before anything is written, prepares the output directory, and calls the one loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed

from obliviate.config import FinetuneConfig, TrainConfig, UnlearnConfig, to_yaml
from obliviate.data.load import check_overlap, load_split, load_training_records
from obliviate.distributed import process_state
from obliviate.errors import ConfigError, TrainingError
from obliviate.io import check_output_dir, prepare_output_dir
from obliviate.losses import FINETUNE, get_method
from obliviate.losses.common import LossParams
from obliviate.models.load import load_model, model_paths
from obliviate.models.tiny import SIZES, init_model
from obliviate.models.trainable import apply_lora, decoder_layers, select_trainable
from obliviate.train import checkpoint as ckpt
from obliviate.train.loop import EpochHook, RunResult, train
from obliviate.train.parallel import accumulation_steps, resolve_mixed_precision
from obliviate.train.schedule import planned_length

_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(LossParams))


RESUME_MAY_CHANGE = ("epochs", "resume", "overwrite", "eval_every_epoch", "eval_max_examples", "merge")
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


AUTO = "auto"
"""``--method auto`` (the default): :func:`auto_method` chooses."""


def auto_method(config: UnlearnConfig, forget, retain) -> str:
    """``contrast`` where the forget people's PII values are known (``pii.json`` or Task2 QA rows) and a retain set
    is given, else ``ga_gd``: contrast acts on the values alone and needs them; GA+GD needs nothing but the data.
    The choice was measured (BENCHMARKS.md) and is printed."""
    known = retain is not None and _has_pii(config, forget, retain)
    chosen = "contrast" if known else "ga_gd"
    if process_state().is_main_process:
        why = "the forget people's PII values are known" if known else "no known PII values (or no retain set)"
        print(f"method auto: {chosen} ({why})")
    return chosen


DEFAULT_STEPS = 120
"""The step budget of an unlearning run given neither ``--epochs`` nor ``--max_steps``: a maximum, which the stop
rule (on by default where PII values are known) usually ends sooner."""


def with_preset(config: UnlearnConfig) -> UnlearnConfig:
    """The method's preset (:attr:`~obliviate.losses.Method.preset`) for every option the user left unset."""
    method = get_method(config.method)
    unset = {k: v for k, v in method.preset.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **unset) if unset else config


def resolve_params(config: UnlearnConfig) -> LossParams:
    """Method defaults (e.g. simnpo β = 4.5) for every weight the user left unset."""
    method = get_method(config.method)
    values = {name: getattr(config, name) for name in _PARAM_NAMES if getattr(config, name, None) is not None}
    return LossParams(**{**method.defaults, **values})


def resolve_budget(config: UnlearnConfig, forget_rows: int) -> UnlearnConfig:
    """``--epochs`` and ``--max_steps`` as numbers: neither given means :data:`DEFAULT_STEPS` forget steps (as many
    epochs as that takes; under ``--schedule interleaved`` each forget step brings its retain steps along, and the
    budget counts them too); one given decides; both given, whichever ends first."""
    epochs, max_steps = config.epochs, config.max_steps
    per_forget_step = 1 + (config.retain_steps if config.schedule == "interleaved" else 0)
    if epochs is None and max_steps is None:
        max_steps = DEFAULT_STEPS * per_forget_step
    if epochs is None:
        epochs = math.ceil(max_steps / (max(1, math.ceil(forget_rows / config.batch_size)) * per_forget_step))
    return dataclasses.replace(config, epochs=epochs, max_steps=max_steps)


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


def resolve_stop_check(config: UnlearnConfig, has_pii: bool, planned_steps: int) -> UnlearnConfig:
    """``--stop_check_steps`` unset: about 20 checks over the planned steps where PII values are known, else off."""
    if config.stop_check_steps is not None:
        return config
    every = max(1, math.ceil(planned_steps / 20)) if has_pii else 0
    return dataclasses.replace(config, stop_check_steps=every)


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

    Options left unset are resolved here, and the resolved values go to ``config.yaml``: the method's preset, the
    step budget (:data:`DEFAULT_STEPS`), the stop-check interval, the RMU coefficient (adaptive) and, inside the
    loop, the learning rate (:mod:`obliviate.train.lr_probe`).

    ``extra_inputs`` are other paths the caller read (a ``--config`` file): the output may not touch them either.
    ``step_check`` is a stop rule asked every few optimizer steps (see :mod:`obliviate.evaluate.stop_rule`);
    ``stop_rule`` instead builds one from the resolved config, when its ``stop_check_steps`` is not 0.
    """
    if config.method != AUTO:
        get_method(config.method)  # an unknown name fails before any data is read
    accumulation_steps(config)
    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain") if config.retain_dir else None
    if config.method == AUTO:
        config = dataclasses.replace(config, method=auto_method(config, forget, retain))
    config = with_preset(config)
    method = get_method(config.method)
    params = resolve_params(config)
    if method.needs.retain and retain is None:
        raise ConfigError(f"method {method.name} needs a retain set: pass --retain_dir")
    if retain is not None:
        check_overlap(forget, retain, allow_overlap=config.allow_overlap)
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
    if config.resume and config.lr is None:
        config = dataclasses.replace(config, lr=_saved_lr(out))
    model, tokenizer = load_model(
        config.model_dir, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
    )
    num_layers = len(decoder_layers(model))
    rmu_layer = None
    if method.needs.hidden:
        rmu_layer = config.rmu_layer if config.rmu_layer is not None else default_rmu_layer(num_layers)
        if not 0 <= rmu_layer < num_layers:
            raise ConfigError(f"--rmu_layer {rmu_layer} is out of range: the model has {num_layers} layers")
        if config.rmu_c is None:
            config = dataclasses.replace(config, rmu_c=adaptive_rmu_c(model, tokenizer, forget, rmu_layer, config))
            params = resolve_params(config)
    if config.forget_tokens == "pii":
        forget = _pii_tokens_only(config, forget, retain, method.relabels)
    forget_draws = paired_draws = None
    if method.relabels:
        forget, forget_draws = _relabel(model, tokenizer, config, forget, retain)
    if method.needs.paired:
        forget, paired_draws = _fake_pairs(config, forget, retain)
    config = resolve_budget(config, len(forget))
    per_epoch = math.ceil(len(forget) / config.batch_size) * (
        1 + (config.retain_steps if config.schedule == "interleaved" else 0)
    )
    planned_steps = planned_length(config, per_epoch)[1]
    config = resolve_stop_check(config, _has_pii(config, forget, retain), planned_steps)
    resolved = dataclasses.replace(
        config, **{k: getattr(params, k) for k in _PARAM_NAMES if hasattr(config, k)}, rmu_layer=rmu_layer
    )
    if config.resume:
        check_resume(out, resolved)
    if step_check is None and stop_rule is not None and config.stop_check_steps:
        step_check = stop_rule(config)
    model = _select(model, config, method.name, rmu_layer)
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
    )


def _has_pii(config: UnlearnConfig, forget, retain) -> bool:
    """Whether any forget record's person has known PII values (what the stop rule measures)."""
    from obliviate.train.relabel import known_people

    people = known_people(config.forget_dir, [*forget, *(retain or [])])
    forget_ids = {r.id for r in forget}
    return any(p.fields and forget_ids.intersection(p.records) for p in people)


@torch.no_grad()
def adaptive_rmu_c(model, tokenizer, forget, layer: int, config: UnlearnConfig, rows: int = 64) -> float:
    """Adaptive RMU's coefficient (Dang et al. 2024, arXiv:2408.06223): ``rmu_scale`` times the mean L2 norm of the
    starting model's hidden states at ``layer`` over the first ``rows`` forget records' real tokens. A fixed c (6.5
    in WMDP, for Zephyr-7B's layer 7) is small or large depending on the model; scaled to the activations, the
    forget states are pushed the same relative distance at any size."""
    from obliviate.data.batching import collate, encode_record

    block = decoder_layers(model)[layer]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(
        lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, min(rows, len(forget)), 16):
            batch = collate(
                [encode_record(tokenizer, r, config.max_length) for r in forget[start : min(start + 16, rows)]],
                tokenizer.pad_token_id,
            ).to(device)
            captured.clear()
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            norms = captured[0].float().norm(dim=-1)
            mask = batch.attention_mask.bool()
            total, count = total + float(norms[mask].sum()), count + int(mask.sum())
    finally:
        handle.remove()
        model.train(was_training)
    return round(config.rmu_scale * total / max(count, 1), 4)


def _pii_tokens_only(config: UnlearnConfig, forget, retain, relabels: bool):
    """``--forget_tokens pii``: the forget term scores only the tokens of each person's PII values."""
    from obliviate.data.pii import mark_pii_spans
    from obliviate.train.relabel import known_people

    if relabels:
        raise ConfigError(f"--forget_tokens pii does not apply to --method {config.method}, which replaces the values")
    marked, count = mark_pii_spans(forget, known_people(config.forget_dir, [*forget, *(retain or [])]))
    if not count:
        raise ConfigError("--forget_tokens pii: no forget record holds a known PII value (pii.json or Task2 QA rows)")
    if process_state().is_main_process:
        print(f"forget tokens: PII values only, in {count} of {len(forget)} forget records (the rest score nothing)")
    return marked


def _fake_pairs(config: UnlearnConfig, forget, retain):
    """A paired method's forget set (scored on PII values) and its fake-value copies, one per epoch in turn."""
    from obliviate.train.relabel import fake_pairs, known_people

    people = known_people(config.forget_dir, [*forget, *(retain or [])])
    marked, copies = fake_pairs(forget, people, draws=config.relabel_draws, seed=config.seed)
    if not any(r.meta["score_spans"] for r in marked):
        raise ConfigError(
            f"--method {config.method}: no forget record holds a known PII value (pii.json or Task2 QA rows)"
        )
    return marked, copies


def _relabel(model, tokenizer, config: UnlearnConfig, forget, retain):
    """The relabelled forget sets of a relabelling method, made by the starting model before any training."""
    from obliviate.train.relabel import known_people, relabelled_draws

    people = known_people(config.forget_dir, [*forget, *(retain or [])])
    draws, stats = relabelled_draws(model, tokenizer, forget, people, draws=config.relabel_draws, seed=config.seed)
    # a record that could not be relabelled (no known person) would be trained on its true answer: leave it out
    kept = [i for i, record in enumerate(forget) if any(d[i] != record for d in draws)]
    if not kept:
        raise ConfigError(
            f"--method {config.method}: no forget record names a known person (expected a pii.json beside the forget "
            "set or Task2 QA rows), so none can be relabelled"
        )
    if process_state().is_main_process:
        print(
            f"relabel: {stats.name_swapped} of {stats.records} forget records answered as for a stranger, "
            f"{stats.fake_values} with fake PII values, {stats.records - len(kept)} left out (nothing to relabel); "
            f"{config.relabel_draws} draws"
        )
    return [forget[i] for i in kept], [[draw[i] for i in kept] for draw in draws]


def run_finetune(config: FinetuneConfig, extra_inputs: list[str | Path] | None = None) -> RunResult:
    """Train a causal LM on ``config.data`` (answers only; documents on every token).

    With ``--model tiny`` (or ``small``) a tokenizer is trained on the data and a fresh OLMo model is built first.
    """
    accumulation_steps(config)
    records = load_training_records(config.data)
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
        model = _select(model, config, "finetune", None)
    else:
        model, tokenizer = load_model(
            config.model, dtype=weights_dtype(config), trust_remote_code=config.trust_remote_code
        )
        model = _select(model, config, "finetune", None)
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
    )


def _clear_output_dir(out: Path, inputs: list, config, command: str) -> None:
    """--overwrite: empty ``out`` once (on the main process; the others wait), after every input was validated."""
    state = process_state()
    if state.is_main_process:
        prepare_output_dir(out, inputs, overwrite=config.overwrite, resume=config.resume, command=command)
    state.wait_for_everyone()
