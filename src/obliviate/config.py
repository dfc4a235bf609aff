"""Flat run configs with help text: YAML in, command-line flags on top, resolved YAML out."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from obliviate.errors import ConfigError

SCHEDULERS = ("constant", "linear", "cosine")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with the help text its command-line flag shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Options shared by fine-tuning and unlearning: the optimiser, the schedule and the run directory."""

    output_dir: str = option("", "where the model, checkpoints, metrics.jsonl and config.yaml go", required=True)
    epochs: int = option(5, "passes over the forget set (finetune: over the training data)")
    lr: float = option(1e-5, "peak learning rate of AdamW")
    batch_size: int = option(32, "effective batch size: micro_batch_size x accumulation x processes")
    micro_batch_size: int = option(8, "examples per forward pass on each process")
    weight_decay: float = option(0.0, "AdamW weight decay")
    scheduler: str = option("constant", "learning-rate schedule after warm-up: constant, linear or cosine")
    warmup_ratio: float = option(0.0, "share of optimizer steps spent warming up linearly from 0")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 turns clipping off)")
    max_length: int = option(512, "longest tokenised example; longer prompts are cut from the left")
    length_pieces: bool = option(
        True,
        "run a batch of mixed lengths as length-sorted pieces where the loss allows it (finetune, ga): same update",
    )
    group_by_length: bool = option(
        False, "batch examples of similar length together (same examples per epoch, much less padding)"
    )
    seed: int = option(42, "fixes data order, retain pairing, initialisation and dropout")
    mixed_precision: str = option("auto", "auto (bf16 where the hardware supports it), bf16, fp16 or no")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    trainable_layers: str = option("auto", "all, 0,1,5, 0-3 or last:N (auto: all; rmu: the MLPs around its layer)")
    trainable_modules: str = option("all", "within the chosen layers: all, mlp or attn")
    lora_r: int = option(0, "LoRA rank; 0 trains the weights themselves")
    lora_alpha: float = option(16.0, "LoRA scaling numerator")
    lora_dropout: float = option(0.05, "dropout on the LoRA branch")
    lora_target: str = option("all-linear", "LoRA target modules: all-linear, attn, mlp or a comma list")
    merge: bool = option(False, "under LoRA, also write the merged full model to OUTPUT_DIR/merged")
    save_checkpoints: bool = option(True, "write checkpoints/epoch-N at every epoch end")
    resume: bool = option(False, "continue from the last complete checkpoint in OUTPUT_DIR")
    overwrite: bool = option(False, "allow a non-empty OUTPUT_DIR (its contents are replaced)")
    trust_remote_code: bool = option(False, "run model code shipped with a hub model (off: safer)")
    allow_overlap: bool = option(False, "accept records that are in both the forget and the retain set")

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        for name in ("epochs", "batch_size", "micro_batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, found {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, found {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup_ratio must be in [0, 1), found {self.warmup_ratio}")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ConfigError(f"--mixed_precision {self.mixed_precision!r}: expected auto, bf16, fp16 or no")
        if self.lora_r < 0:
            raise ConfigError(f"--lora_r must be >= 0, found {self.lora_r}")


@dataclass
class FinetuneConfig(TrainConfig):
    """``obliviate finetune``: train a causal LM on records (answers only; documents on every token)."""

    model: str = option("tiny", "tiny, small, a local model directory or a hub id", required=True)
    data: list[str] = option([], "one or more data paths to train on", nargs="+", required=True)
    arch: str = option("olmo", "for --model tiny/small: olmo or olmo2")
    epochs: int = option(30, "passes over the training data")
    lr: float = option(3e-3, "peak learning rate of AdamW")
    batch_size: int = option(16, "effective batch size")
    micro_batch_size: int = option(16, "examples per forward pass on each process")
    scheduler: str = option("cosine", "learning-rate schedule after warm-up: constant, linear or cosine")
    warmup_ratio: float = option(0.05, "share of optimizer steps spent warming up")
    save_checkpoints: bool = option(False, "write checkpoints/epoch-N at every epoch end")


@dataclass
class UnlearnConfig(TrainConfig):
    """``obliviate unlearn``: remove the forget set from a fine-tuned model while keeping the retain set."""

    model_dir: str = option("", "the fine-tuned model: local directory or hub id (never written to)", required=True)
    forget_dir: str = option("", "the forget set (file or directory)", required=True)
    retain_dir: str | None = option(None, "the retain set; needed by every method but ga")
    holdout_dir: str | None = option(None, "held-out people for --eval_every_epoch (leak floor, MIA non-members)")
    method: str = option("ga_gd", "ga, ga_kl, ga_gd, npo, simnpo or rmu")
    alpha: float | None = option(None, "weight of the retain term (method default: 1; rmu: 100)")
    gamma: float | None = option(None, "weight of the forget term of ga_gd (default 1)")
    beta: float | None = option(None, "inverse temperature (npo: 0.1, simnpo: 4.5)")
    delta: float | None = option(None, "SimNPO reward margin (default 0)")
    kl_weight: float | None = option(None, "weight of the KL term of ga_kl (default 1)")
    rmu_c: float | None = option(None, "RMU steering coefficient c (default 6.5)")
    rmu_layer: int | None = option(None, "RMU hidden layer (default: a quarter of the depth)")
    stop_forget_nll: float | None = option(None, "stop when the forget NLL rises above this bound")
    eval_every_epoch: bool = option(False, "evaluate each checkpoint inside the run (needs the evaluation suite)")
    eval_max_examples: int | None = option(None, "with --eval_every_epoch: evaluate a seeded sample of this size")


def _base_type(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field, with its help and default; defaults are SUPPRESSed so explicit flags can be told apart."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "required" if meta.get("required") else f"default: {default}"
        kwargs: dict[str, Any] = {"help": f"{meta.get('help', '')} ({shown})", "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kwargs.update(nargs=meta.get("nargs", "+"), type=typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
        parser.add_argument(f"--{f.name}", **kwargs)
    parser.add_argument("--config", type=Path, default=None, help="a YAML file with any of these options; flags win")


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """YAML values (``--config``), overridden by flags given on the command line; required ones checked."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:
        values.update(load_yaml(config_path, cls))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and not values.get(f.name)]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join('--' + m for m in missing)}")
    return cls(**values)


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of options, found {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    return {name: _coerce(value, hints[name], f"{path}: {name}") for name, value in values.items()}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """A YAML value as the field's type: YAML 1.1 reads ``1e-5`` as a string and ``0`` (a layer) as an int."""
    optional = type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: expected a value, found null")
    if typing.get_origin(base) is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(item, typing.get_args(base)[0], where) for item in items]
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and (base is float or number.is_integer()):
            return base(number)
    raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, found {value!r}")


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
