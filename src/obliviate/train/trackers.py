"""Experiment trackers for ``--report_to tensorboard|wandb`` through accelerate's tracking API.

Every ``metrics.jsonl`` line the loop writes goes to the tracker as well, as scalars at its optimizer step:
``train/<key>`` for a step's losses, learning rate and tokens/s, ``stop_check/<key>`` for each check of the stop rule
(``stop_reference/<key>`` for the never-seen band it measured before the first step), ``lr_probe/<key>`` for the
range test's trials, ``memorised_check/<key>`` for ``finetune --until_memorised``'s epoch-end checks; and
``eval/<split>/<metric>`` for each epoch's evaluation (``--eval_every_epoch``). The resolved config is the run's
hyperparameters. Files go inside the run directory: ``O/tensorboard/<method>/`` and ``O/wandb/``. W&B runs offline
unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads them later).

A tracker's package is optional (``pip install 'obliviate[trackers]'`` for TensorBoard, ``pip install wandb``);
asking for a missing one fails before anything is written.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from obliviate.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""The package each tracker imports (TensorBoard writes through ``torch.utils.tensorboard``, which needs it)."""

_NOT_SCALARS = {"step", "epoch", "time", "phase", "retain_draw_checksums"}


def check_tracker(config) -> None:
    """Refuse ``--report_to`` naming a tracker whose package is not installed, before anything is written.

    Raises:
        ConfigError: the package is missing; the message names it.
    """
    name = getattr(config, "report_to", "none")
    if name == "none":
        return
    package = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        extra = " (or pip install 'obliviate[trackers]')" if name == "tensorboard" else ""
        raise ConfigError(
            f"--report_to {name} needs the {package} package, which is not installed: "
            f"pip install {package}{extra}, or pass --report_to none"
        )


def accelerator_kwargs(config) -> dict[str, Any]:
    """``log_with`` and the logging directory for :class:`accelerate.Accelerator`; empty without a tracker."""
    name = getattr(config, "report_to", "none")
    if name == "none":
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(config.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / name))
    return {"log_with": name, "project_config": project}


def start(accelerator, config, method: str, resolved: dict[str, Any] | None) -> None:
    """``init_trackers`` with the resolved config as hyperparameters (TensorBoard: the run is named by the method)."""
    name = getattr(config, "report_to", "none")
    if name == "none":
        return
    init_kwargs = {}
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        init_kwargs = {"wandb": {"mode": mode, "dir": str(config.output_dir), "name": Path(config.output_dir).name}}
    project = method if name == "tensorboard" else "obliviate"
    accelerator.init_trackers(project, config=hparams(resolved or {}), init_kwargs=init_kwargs)


def hparams(values: dict[str, Any]) -> dict[str, Any]:
    """The config as tracker hyperparameters: numbers, strings and booleans (TensorBoard refuses None and lists)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = "none" if value is None else str(value)
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """One ``metrics.jsonl`` line as tracker scalars (see the module docstring for the names)."""
    for event in ("stop_check", "stop_reference", "lr_probe", "memorised_check"):
        if isinstance(record.get(event), dict):
            return {f"{event}/{k}": v for k, v in numbers(record[event]).items()}
    return {f"train/{k}": v for k, v in numbers(record).items() if k not in _NOT_SCALARS}


def summary_of(evaluation: Any) -> dict[str, float | None]:
    """An epoch hook's result (an ``EpochEval`` or ``EvalResult``) as its ``"split/metric"`` summary; {} for
    anything else (training never imports evaluation)."""
    summary = getattr(evaluation, "summary", None)
    summary = summary() if callable(summary) else summary
    return dict(summary) if isinstance(summary, dict) else {}


def numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def log(accelerator, values: dict[str, float], step: int) -> None:
    """Send scalars to the trackers (main process only; a no-op without one)."""
    if values and accelerator.trackers:
        accelerator.log(values, step=step)


def finish(accelerator) -> None:
    """Close the trackers (flushes TensorBoard's event file); a no-op without one. Not ``end_training``, which
    would also tear down the process group a later run in this process (the pipeline, a notebook) still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []
