"""``obliviate unlearn``: remove the forget set from a fine-tuned model."""

from __future__ import annotations

import argparse

from obliviate.config import UnlearnConfig, add_arguments, build_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn",
        help="unlearn a forget set (ga, ga_kl, ga_gd, npo, simnpo, rmu, relabel, contrast)",
        description="Unlearn --forget_dir from --model_dir while keeping --retain_dir. Writes the model (or LoRA "
        "adapter) to --output_dir with checkpoints/epoch-N, metrics.jsonl and the resolved config.yaml. Defaults are "
        "the published 7B ones (lr 1e-5, effective batch 32, AdamW); `obliviate demo` uses presets tuned for the "
        "tiny model.",
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
    step_check = None
    if config.stop_check_steps:
        from obliviate.evaluate.stop_rule import stop_rule_for

        step_check = stop_rule_for(config)
    result = run_unlearn(
        config, epoch_hook=hook, step_check=step_check, extra_inputs=[args.config] if args.config else None
    )
    note = f" (stopped: {result.stopped})" if result.stopped else ""
    if process_state().is_main_process:  # one line per launch, not per process
        print(
            f"unlearned with {config.method}: {result.epochs_completed} epochs, {result.global_step} steps, "
            f"{result.tokens_seen} tokens in {result.wall_seconds:.0f}s → {result.output_dir}{note}"
        )
    return 0
