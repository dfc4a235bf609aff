"""``obliviate unlearn``: remove the forget set from a fine-tuned model."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import UnlearnConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn",
        help="unlearn a forget set (auto, ga, ga_kl, ga_gd, npo, simnpo, rmu, relabel, contrast)",
        description="Unlearn --forget_dir from --model_dir while keeping --retain_dir. Writes the model (or LoRA "
        "adapter) to --output_dir with checkpoints/epoch-N, metrics.jsonl and the resolved config.yaml. With no "
        "hyperparameter flags it measures its own learning rate (a short range test), runs at most 120 optimizer "
        "steps, and stops once the forget set's PII is as unexposed as a never-seen person's (docs/METHODS.md).",
    )
    add_arguments(parser, UnlearnConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.distributed import process_state
    from obliviate.train.run import run_unlearn

    config = build_config(UnlearnConfig, args)
    hook = None
    if config.eval_every_epoch:
        from obliviate.evaluate.epochs import epoch_evaluator

        hook = epoch_evaluator(config)
    from obliviate.evaluate.stop_rule import stop_rule_for

    result = run_unlearn(
        config, epoch_hook=hook, stop_rule=stop_rule_for, extra_inputs=[args.config] if args.config else None
    )
    note = f" (stopped: {result.stopped})" if result.stopped else ""
    if process_state().is_main_process:  # one line per launch, not per process
        print(
            f"unlearned with {result.method} at lr {result.lr:.3g}: {result.epochs_completed} epochs, "
            f"{result.global_step} steps, "
            f"{result.tokens_seen} tokens in {result.wall_seconds:.0f}s → {result.output_dir}{note}"
        )
    return 0
