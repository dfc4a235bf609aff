"""``obliviate demo``: the whole story offline on CPU, from synthetic people to a report."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import DemoConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthesise PII data, memorise it, unlearn it with each method, report against the oracle",
        description="Offline end to end: synthesise people with Faker, build a tiny OLMo, fine-tune the target "
        "(forget + retain) and the oracle (retain only), unlearn with each method as `obliviate unlearn` does with no "
        "hyperparameter flags (measured learning rate, step budget, stop rule) while evaluating its checkpoints, "
        "and write OUTPUT_DIR/report.md and results.json. Target and oracle are cached under runs/cache.",
    )
    add_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)


def demo_config(args: argparse.Namespace):
    """The pipeline's config: its own defaults, then ``--fast``'s, then every number the user set."""
    from obliviate.data.synth import check_split_counts
    from obliviate.losses import get_method
    from obliviate.pipeline import DEMO_METHODS, PipelineConfig

    demo = build_config(DemoConfig, args)
    chosen = {name: getattr(demo, name) for name in ("seed", "fresh", "workers", "group_by_length", "attacks")}
    fast = {"people": 50, "unlearn_max_steps": 40, "eval_max_examples": 50} if demo.fast else {}
    given = {
        name: getattr(demo, name)
        for name in ("people", "finetune_epochs", "unlearn_epochs", "unlearn_max_steps", "eval_max_examples")
        if getattr(demo, name) is not None
    }
    methods = tuple(demo.methods or DEMO_METHODS)
    for name in methods:
        get_method(name)  # a clear error for an unknown method before any work
    config = PipelineConfig(
        output_dir=demo.output_dir, cache_dir=demo.cache_dir, methods=methods, **chosen, **{**fast, **given}
    )
    check_split_counts(config.people, config.forget_fraction, config.holdout_fraction)
    return config


def run(args: argparse.Namespace) -> int:
    """``obliviate run`` on synthetic people: the data is made (or taken from the cache) first, then the experiment
    runs on it exactly as on a user's data (:func:`obliviate.cli.run.run_experiment`)."""
    import dataclasses

    from obliviate.cli.run import run_experiment
    from obliviate.pipeline import StampedLog, check_output_dir, pipeline_inputs
    from obliviate.pipeline_cache import prepare_data

    config = demo_config(args)
    log = StampedLog()
    # before the data is made: a refused directory costs nothing
    check_output_dir(config.output_dir, pipeline_inputs(config), config.cache_dir)
    dirs = prepare_data(config, log)
    config = dataclasses.replace(config, data_dirs={name: str(path) for name, path in dirs.items()})
    run_experiment(config, title="obliviate demo", log=log)
    return 0
