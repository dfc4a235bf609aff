"""``obliviate run``: the whole experiment on the user's data (target, oracle, every method evaluated each epoch,
the report), the code path ``obliviate demo`` and ``benchmarks/bench_quality.py`` share (:func:`run_experiment`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import RunConfig
from obliviate.errors import DataError

if TYPE_CHECKING:
    from obliviate.pipeline import PipelineConfig, PipelineOutcome


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the whole experiment on your data: every method against the target and the oracle, with a report",
        description="Unlearn the forget set from a fine-tuned target with each method, as `obliviate unlearn` runs "
        "it with no hyperparameter flags, evaluating every checkpoint; compare against the target and an oracle "
        "(--oracle, or --train_oracle to fine-tune one on the retain set with the target's recipe); write "
        "OUTPUT_DIR/report.md, results.json and the plots. --model tiny --finetune_target builds the target from "
        "forget + retain, fine-tuned until it has memorised them (--until_memorised, --finetune_epochs the budget).",
    )
    add_arguments(parser, RunConfig)
    parser.set_defaults(func=run)


def pipeline_config(run: RunConfig) -> PipelineConfig:
    """The pipeline's config for ``run``; every path checked first, so a typo fails before anything is written."""
    from obliviate.losses import get_method
    from obliviate.pipeline import DEMO_METHODS, PipelineConfig

    paths = {"forget_dir": run.forget_dir, "retain_dir": run.retain_dir, "holdout_dir": run.holdout_dir}
    paths.update(oracle=run.oracle, model=None if run.finetune_target else run.model)
    for flag, path in paths.items():
        if path is not None and not Path(path).exists():
            raise DataError(f"--{flag} {path}: nothing at this path")
    methods = tuple(run.methods or DEMO_METHODS)
    for name in methods:
        get_method(name)  # a clear error for an unknown method before any work
    dirs = {"forget": run.forget_dir, "retain": run.retain_dir}
    if run.holdout_dir:
        dirs["holdout"] = run.holdout_dir
    return PipelineConfig(
        output_dir=run.output_dir,
        cache_dir=run.cache_dir,
        methods=methods,
        seed=run.seed,
        size=run.model if run.finetune_target else "tiny",
        finetune_epochs=run.finetune_epochs,
        finetune_until_memorised=run.until_memorised,
        memorised_sample=run.memorised_sample,
        unlearn_epochs=run.unlearn_epochs,
        unlearn_max_steps=run.unlearn_max_steps,
        eval_max_examples=run.eval_max_examples,
        eval_batch_size=run.eval_batch_size,
        max_new_tokens=run.max_new_tokens,
        select=run.select,
        workers=run.workers,
        fresh=run.fresh,
        data_dirs=dirs,
        target_dir=None if run.finetune_target else run.model,
        oracle_dir=run.oracle,
        train_oracle=run.train_oracle,
        attacks=run.attacks,
        report_to=run.report_to,
    )


def run_experiment(config: PipelineConfig, title: str = "obliviate run", log=None) -> PipelineOutcome:
    """The pipeline, then ``report.md``, ``results.json`` and the plots in ``config.output_dir``: what ``run``,
    ``demo``, ``obliviate.run(...)`` and the LUME benchmark all do. An earlier report there is replaced only once the
    new one is written; a run that fails or is interrupted leaves it as it was."""
    from obliviate.pipeline import StampedLog, replacing_report, run_pipeline
    from obliviate.report.demo import write_demo_report

    log = log or StampedLog()
    with replacing_report(config):  # the earlier report stays until the new one is written
        outcome = run_pipeline(config, log=log, replace=False)
        report = write_demo_report(outcome, Path(config.output_dir), title=title)
    log(f"report → {report}")
    return outcome


def run(args: argparse.Namespace) -> int:
    config = pipeline_config(build_config(RunConfig, args))
    run_experiment(config)
    return 0
