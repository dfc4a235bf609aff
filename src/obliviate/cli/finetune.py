"""``obliviate finetune``: build the target (forget + retain) or oracle (retain only) model."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import FinetuneConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="train a causal LM on records (prompt masked)",
        description="Train a causal LM on records: cross-entropy on the answer with the prompt masked, on every "
        "token for documents. --model tiny builds a tokenizer and a tiny OLMo from the data first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser, FinetuneConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.distributed import process_state
    from obliviate.train.run import run_finetune

    config = build_config(FinetuneConfig, args)
    result = run_finetune(config, extra_inputs=[args.config] if args.config else None)
    if process_state().is_main_process:  # one line per launch, not per process
        print(
            f"finetuned {result.epochs_completed} epochs, {result.global_step} steps, {result.tokens_seen} tokens "
            f"in {result.wall_seconds:.0f}s (training loop {result.timing.get('loop_seconds', 0.0):.1f}s) "
            f"→ {result.output_dir}"
        )
    return 0
