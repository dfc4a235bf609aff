"""``obliviate demo``: the whole story offline on CPU, from synthetic people to a report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthesise PII data, memorise it, unlearn it with each method, report against the oracle",
        description="Offline end to end: synthesise people with Faker, build a tiny OLMo, fine-tune the target "
        "(forget + retain) and the oracle (retain only), unlearn with each method while evaluating every epoch, "
        "and write OUTPUT_DIR/report.md and results.json. Target and oracle are cached under runs/cache.",
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="methods to run (default: ga ga_kl ga_gd npo; also simnpo, rmu)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="50 people, 5 unlearning epochs, 50 rows evaluated per split (under 3 min from scratch on 2 cores)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore cached data, target and oracle")
    parser.add_argument("--people", type=int, default=None, help="synthetic people (default: 200; --fast: 50)")
    parser.add_argument(
        "--finetune_epochs", type=int, default=None, help="epochs to build target and oracle (default: 30)"
    )
    parser.add_argument(
        "--unlearn_epochs", type=int, default=None, help="override every method's preset number of unlearning epochs"
    )
    parser.add_argument(
        "--eval_max_examples",
        type=int,
        default=None,
        help="rows evaluated per split at every epoch (default: 60; --fast: 50)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes for independent jobs (target and oracle, the methods); 0: one per available CPU core up to "
        "the number of jobs, one on a GPU; each worker gets an equal share of the cores as torch threads (default: 0)",
    )
    parser.add_argument(
        "--group_by_length",
        action="store_true",
        help="batch examples of similar length together (faster, but it slowed memorisation in our measurement)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data, model and training seed (default: 0)")
    parser.add_argument("--output_dir", default="runs/demo", help="report directory (default: runs/demo)")
    parser.add_argument("--cache_dir", default="runs/cache", help="cached data and models (default: runs/cache)")
    parser.set_defaults(func=run)


def demo_config(args: argparse.Namespace):
    from obliviate.losses import get_method
    from obliviate.pipeline import DEMO_METHODS, PipelineConfig

    config = PipelineConfig(
        output_dir=args.output_dir,
        cache_dir=args.cache_dir,
        seed=args.seed,
        fresh=args.fresh,
        workers=args.workers,
        group_by_length=args.group_by_length,
    )
    if args.fast:
        config.people, config.unlearn_epochs, config.eval_max_examples = 50, 5, 50
    for name in ("people", "finetune_epochs", "unlearn_epochs", "eval_max_examples"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    methods = tuple(args.methods or DEMO_METHODS)
    for name in methods:
        get_method(name)  # a clear error for an unknown method before any work
    config.methods = methods
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
