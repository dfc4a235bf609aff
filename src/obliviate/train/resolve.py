"""What ``obliviate unlearn`` resolves for every option left unset, before the loop: the method (``--method auto``),
its preset, the loss weights, the step budget, the stop-check interval, and RMU's layer and coefficient. The
resolved values go to the run's ``config.yaml``; the learning rate is resolved inside the loop
(:mod:`obliviate.train.lr_probe`)."""

from __future__ import annotations

import dataclasses
import math

import torch

from obliviate.config import UnlearnConfig
from obliviate.distributed import process_state
from obliviate.errors import ConfigError
from obliviate.losses import Method, get_method
from obliviate.losses.common import LossParams
from obliviate.models.trainable import decoder_layers
from obliviate.train.inputs import has_pii
from obliviate.train.sampling import retain_steps_per_forget
from obliviate.train.schedule import planned_length

AUTO = "auto"
"""``--method auto`` (the default): :func:`auto_method` chooses."""


def auto_method(config: UnlearnConfig, forget, retain) -> str:
    """``contrast`` where the forget people's PII values are known (``pii.json`` or Task2 QA rows) and a retain set
    is given, else ``ga_gd``: contrast acts on the values alone and needs them; GA+GD needs nothing but the data.
    The choice is printed. It rests on the demo and LUME Task2 tables (README.md, "Results", written by the
    benchmark scripts), where contrast meets at least as many of the oracle goals as GA+GD on both."""
    known = retain is not None and has_pii(config, forget, retain)
    chosen = "contrast" if known else "ga_gd"
    if process_state().is_main_process:
        why = "the forget people's PII values are known" if known else "no known PII values (or no retain set)"
        print(f"method auto: {chosen} ({why})")
    return chosen


def with_preset(config: UnlearnConfig) -> UnlearnConfig:
    """The method's preset (:attr:`~obliviate.losses.Method.preset`) for every option the user left unset (None, or
    ``auto`` for the options that take it)."""
    method = get_method(config.method)
    unset = {k: v for k, v in method.preset.items() if getattr(config, k) in (None, AUTO)}
    return dataclasses.replace(config, **unset) if unset else config


def resolve_params(config: UnlearnConfig) -> LossParams:
    """The method's declared default (e.g. simnpo β = 4.5) for every weight the user left unset; a weight the
    method does not read, or a value out of range, is a ConfigError."""
    return get_method(config.method).params(config.loss_params)


def resolve_budget(config: UnlearnConfig, forget_rows: int) -> UnlearnConfig:
    """``--epochs`` and ``--max_steps`` as numbers: neither given means the method's budget of forget steps
    (:attr:`~obliviate.losses.Method.steps`, or :attr:`~obliviate.losses.Method.passes` passes over the forget set
    where that is more; as many epochs as that takes; under ``--schedule interleaved`` each forget step brings its
    retain steps along, and the budget counts them too); one given decides; both given, whichever ends first."""
    epochs, max_steps = config.epochs, config.max_steps
    per_forget_step = 1 + retain_steps_per_forget(config)
    per_pass = max(1, math.ceil(forget_rows / config.batch_size))
    if epochs is None and max_steps is None:
        method = get_method(config.method)
        max_steps = max(method.steps, method.passes * per_pass) * per_forget_step
    if epochs is None:
        epochs = math.ceil(max_steps / (per_pass * per_forget_step))
    return dataclasses.replace(config, epochs=epochs, max_steps=max_steps)


def resolve_stop_check(config: UnlearnConfig, has_pii: bool, planned_steps: int) -> UnlearnConfig:
    """``--stop_check_steps`` unset: about the method's number of checks (:attr:`~obliviate.losses.Method.checks`,
    20 unless it declares otherwise) over the planned steps where PII values are known, else off.

    Under ``--schedule interleaved`` the interval is a whole number of cycles (a forget step and its retain steps),
    so that every check sees the model after its retain steps, never between a forget step and its repair; a given
    interval that is not is a ConfigError."""
    cycle = 1 + retain_steps_per_forget(config)
    if config.stop_check_steps is not None:
        if config.stop_check_steps % cycle:
            raise ConfigError(
                f"--stop_check_steps {config.stop_check_steps} must be a multiple of a cycle's {cycle} optimizer "
                "steps (a forget step and its --retain_steps) under --schedule interleaved: a check inside a cycle "
                "would see a forget step's damage before its repair"
            )
        return config
    checks = get_method(config.method).checks
    every = cycle * max(1, math.ceil(planned_steps / checks / cycle)) if has_pii else 0
    return dataclasses.replace(config, stop_check_steps=every)


def resolve_steps(config: UnlearnConfig, forget, retain) -> UnlearnConfig:
    """The step budget for the forget set as it is trained on, then the stop-check interval over the planned steps:
    with the method's budget (neither ``--epochs`` nor ``--max_steps``), over its
    :attr:`~obliviate.losses.Method.steps` alone, so that the passes a large forget set adds lengthen the run without
    moving its checks."""
    defaulted = config.epochs is None and config.max_steps is None
    config = resolve_budget(config, len(forget))
    cycle = 1 + retain_steps_per_forget(config)
    if defaulted:  # the budget is at least steps × cycle (more with passes): the checks spread over that part alone
        planned_steps = get_method(config.method).steps * cycle
    else:
        planned_steps = planned_length(config, math.ceil(len(forget) / config.batch_size) * cycle)[1]
    return resolve_stop_check(config, has_pii(config, forget, retain), planned_steps)


def default_rmu_layer(num_layers: int) -> int:
    """A quarter of the depth (WMDP uses layer 7 of 32), at least 2 so that layers ℓ-2..ℓ exist when possible."""
    return min(num_layers - 1, max(2, num_layers // 4))


def resolve_rmu(model, tokenizer, config: UnlearnConfig, method: Method, forget) -> tuple[UnlearnConfig, int | None]:
    """RMU's layer (``--rmu_layer``, else :func:`default_rmu_layer`) and, left unset, its coefficient
    (:func:`adaptive_rmu_c`); ``None`` for a method that reads no hidden states."""
    num_layers = len(decoder_layers(model))  # fails, for any method, on a model whose layers cannot be found
    if not method.needs.hidden:
        return config, None
    rmu_layer = config.rmu_layer if config.rmu_layer is not None else default_rmu_layer(num_layers)
    if not 0 <= rmu_layer < num_layers:
        raise ConfigError(f"--rmu_layer {rmu_layer} is out of range: the model has {num_layers} layers")
    if config.loss_params.get("rmu_c") is None:
        config = config.with_options(rmu_c=adaptive_rmu_c(model, tokenizer, forget, rmu_layer, config))
    return config, rmu_layer


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
