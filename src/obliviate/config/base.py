"""What every config shares: the ``option`` field, its bounds and their check, comma lists, the YAML dump, and
the named choices of several options."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

import yaml

from obliviate.errors import ConfigError

SCHEDULERS = ("constant", "linear", "cosine")
TRACKERS = ("none", "tensorboard", "wandb")
"""``--report_to``: accelerate's experiment trackers obliviate feeds (:mod:`obliviate.train.trackers`)."""
TINY_SIZES = ("tiny", "small", "medium")
"""The named sizes ``--model`` / ``--size`` build a fresh model at (``models.tiny.SIZES`` less the test suite's
``micro``, kept equal by a test; named here for the same reason as :data:`TINY_ARCHS`)."""
TINY_ARCHS = (
    "olmo", "olmo2", "olmo3", "llama", "qwen2", "qwen3", "mistral", "mixtral", "phi", "phi3", "gemma", "gemma2",
    "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "codegen", "falcon", "bloom", "opt", "stablelm",
    "starcoder2", "granite", "cohere", "smollm3", "mpt",
)  # fmt: skip
"""The Hugging Face model types ``--model tiny|small|medium --arch`` builds from a config (``models.tiny.ARCHS``,
kept equal by a test; config sits below models, so it names them instead of importing them)."""
ATTACKS = ("relearn", "quantize")
"""``evaluate --attacks``: the attacks on copies of the model (:mod:`obliviate.evaluate.attacks`)."""
RELEARN_SOURCES = ("forget_half", "retain", "forget_nonpii")
"""``evaluate --relearn_sources``: what the relearning attack trains on (:mod:`obliviate.evaluate.relearn`)."""
QUANTIZE_BITS = (8, 4)
"""``evaluate --quantize_bits``: bit widths of round-to-nearest quantisation (:mod:`obliviate.evaluate.quantize`)."""
PIPELINE_ATTACKS = "relearn,quantize"
"""``demo --attacks``' default: both attacks, at the pipeline's cheap settings (:mod:`obliviate.pipeline_attacks`)."""


def comma_list(flag: str, value: str, valid: tuple, kind: type = str) -> tuple:
    """``"a,b"`` → ``("a", "b")`` (as ``kind``), each checked against ``valid``; an empty string is no items.

    Raises:
        ConfigError: an item that is not one of ``valid``, in one line that lists the valid ones.
    """
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    try:
        parsed = tuple(kind(item) for item in items)
    except ValueError:
        parsed = ()
    if len(parsed) != len(items) or any(item not in valid for item in parsed):
        wanted = ", ".join(map(str, valid))
        raise ConfigError(f"--{flag} {value!r}: expected a comma list of {wanted}")
    return tuple(dict.fromkeys(parsed))


def pipeline_attack_names(value: str) -> tuple[str, ...]:
    """``demo --attacks``: ``none`` (or empty) turns the attacks off, else a comma list of :data:`ATTACKS`."""
    if str(value).strip().lower() in ("", "none"):
        return ()
    return comma_list("attacks", value, ATTACKS)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with the help text its command-line flag shows.

    Keyword metadata: ``required``, ``nargs``, ``positional``, ``choices``, the bounds ``ge``, ``gt``, ``le``,
    ``lt`` that :func:`validate` enforces, and ``flag=False`` for a field the CLI fills from flags of its own (the
    loss weights).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "le": ("<=", lambda v, b: v <= b)}
BOUNDS["lt"] = ("<", lambda v, b: v < b)
"""Each bound's symbol and test, for :func:`validate` and the flags' help text."""


def validate(config: Any) -> None:
    """Check every field of a config dataclass against its metadata: finite numbers, bounds and choices.

    Raises:
        ConfigError: the first field out of range, as ``--name must be <rule>, found <value>``.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            _check_value(f, item)


def _check_value(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None or isinstance(value, bool):
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"--{f.name} {value!r}: expected one of {', '.join(map(str, meta['choices']))}")
    if not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{f.name} must be a finite number, found {value}")
    rules = [(key, meta[key]) for key in ("ge", "gt", "le", "lt") if key in meta]
    for key, bound in rules:
        symbol, holds = BOUNDS[key]
        if not holds(value, bound):
            wanted = " and ".join(f"{BOUNDS[k][0]} {b}" for k, b in rules)
            raise ConfigError(f"--{f.name} must be {wanted}, found {value}")


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
