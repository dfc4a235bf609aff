"""Flat run configs with help text: YAML in, command-line flags on top (:mod:`obliviate.cli.options`), resolved
YAML out.

Every subcommand's options are one dataclass: ``train.py`` holds the training ones (``TrainConfig``,
``FinetuneConfig``, ``UnlearnConfig``), ``commands.py`` every other subcommand's, ``base.py`` what they share. A
field's metadata carries its help text and its valid range (``ge``/``gt``/``le``/``lt``, ``choices``);
:func:`validate` checks every field of every config the same way, before anything is read or written, whether the
value came from a flag or from ``--config`` YAML. Floats must be finite. Import them from here:
``from obliviate.config import UnlearnConfig``.
"""

from obliviate.config.base import (
    ATTACKS,
    BOUNDS,
    PIPELINE_ATTACKS,
    QUANTIZE_BITS,
    RELEARN_SOURCES,
    SCHEDULERS,
    TINY_ARCHS,
    TINY_SIZES,
    TRACKERS,
    comma_list,
    option,
    pipeline_attack_names,
    to_yaml,
    validate,
)
from obliviate.config.commands import (
    AuditConfig,
    DemoConfig,
    EvaluateConfig,
    InitModelConfig,
    InspectConfig,
    RunConfig,
    SynthConfig,
)
from obliviate.config.train import FinetuneConfig, TrainConfig, UnlearnConfig

__all__ = [
    "ATTACKS",
    "BOUNDS",
    "PIPELINE_ATTACKS",
    "QUANTIZE_BITS",
    "RELEARN_SOURCES",
    "SCHEDULERS",
    "TINY_ARCHS",
    "TINY_SIZES",
    "TRACKERS",
    "AuditConfig",
    "DemoConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "InitModelConfig",
    "InspectConfig",
    "RunConfig",
    "SynthConfig",
    "TrainConfig",
    "UnlearnConfig",
    "comma_list",
    "option",
    "pipeline_attack_names",
    "to_yaml",
    "validate",
]
