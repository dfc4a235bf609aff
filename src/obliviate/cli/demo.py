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
    from pathlib import Path

    from obliviate.pipeline import StampedLog, run_pipeline
    from obliviate.report.demo import write_demo_report

    config = demo_config(args)
    log = StampedLog()
    outcome = run_pipeline(config, log=log)
    report = write_demo_report(outcome, Path(config.output_dir))
    log(f"report → {report}")
    return 0
