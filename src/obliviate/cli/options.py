"""Command-line options from the config dataclasses (:mod:`obliviate.config`): one flag per field, with its help,
default and bounds; a ``--config`` YAML file read as the fields' types; flags given on the command line win."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from obliviate.config import BOUNDS
from obliviate.errors import ConfigError


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
        if meta.get("flag") is False:
            continue
        tp = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "required" if meta.get("required") else f"default: {default}"
        bounds = [f"{BOUNDS[key][0]} {meta[key]}" for key in ("gt", "ge", "lt", "le") if key in meta]
        shown += f"; {', '.join(bounds)}" if bounds else ""
        kwargs: dict[str, Any] = {"help": f"{meta.get('help', '')} ({shown})", "default": argparse.SUPPRESS}
        if meta.get("positional"):
            parser.add_argument(f.name, nargs=meta.get("nargs", "+"), metavar="PATH", help=kwargs["help"])
            continue
        if "choices" in meta:
            kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kwargs.update(nargs=meta.get("nargs", "+"), type=typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
        parser.add_argument(f"--{f.name}", **kwargs)
    parser.add_argument("--config", type=Path, default=None, help="a YAML file with any of these options; flags win")


def build_config(cls: type, args: argparse.Namespace, nested: Mapping[str, Collection[str]] | None = None) -> Any:
    """YAML values (``--config``), overridden by flags given on the command line; required ones checked.

    ``nested`` maps a dict field to the names that fill it, each a flag and a top-level YAML key of its own (the
    loss weights: ``--alpha`` and ``alpha:`` both go to ``loss_params["alpha"]``).
    """
    nested = dict(nested or {})
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:
        values.update(load_yaml(config_path, cls, nested))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    for field_name, keys in nested.items():
        given = {k: v for k, v in vars(args).items() if k in keys}
        values[field_name] = {**values.get(field_name, {}), **given}
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and not values.get(f.name)]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join('--' + m for m in missing)}")
    return cls(**values)


def load_yaml(path: str | Path, cls: type, nested: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
    """A ``--config`` file's options as the fields' types; names in ``nested`` (see :func:`build_config`) are
    gathered into their dict field, as is that field written as a mapping (a run's resolved ``config.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file: expected UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of options, found {type(values).__name__}")
    nested = dict(nested or {})
    gathered: dict[str, dict[str, Any]] = {}
    for field_name, keys in nested.items():
        given = values.pop(field_name, None) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: {field_name}: expected a mapping, found {given!r}")
        given.update({k: values.pop(k) for k in list(values) if k in keys})
        gathered[field_name] = {k: _coerce(v, float | None, f"{path}: {k}") for k, v in given.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    return {**{name: _coerce(value, hints[name], f"{path}: {name}") for name, value in values.items()}, **gathered}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """A YAML value as the field's type: YAML 1.1 reads ``1e-5`` as a string and ``0`` (a layer) as an int."""
    optional = type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: expected a value, found null")
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        value_type = typing.get_args(base)[1]
        return {str(k): _coerce(v, value_type | None, f"{where}.{k}") for k, v in value.items()}
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
