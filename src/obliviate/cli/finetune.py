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
    from obliviate.evaluate.memorised import memorisation_check_for
    from obliviate.train.run import run_finetune

    config = build_config(FinetuneConfig, args)
    extra = [args.config] if args.config else None
    result = run_finetune(config, extra_inputs=extra, memorisation_check=memorisation_check_for)
    if process_state().is_main_process:  # one line per launch, not per process
        print(
            f"finetuned {result.epochs_completed} epochs, {result.global_step} steps, {result.tokens_seen} tokens "
            f"({result.forward_tokens} read by checks) in {result.wall_seconds:.0f}s "
            f"(training loop {result.timing.get('loop_seconds', 0.0):.1f}s) "
            f"→ {result.output_dir}"
        )
        if config.until_memorised is not None:
            print(memorisation_line(result, config))
    return 0


def memorisation_line(result, config) -> str:
    """How memorised the model ended: the check that stopped it, or the last one when the budget ran out."""
    if result.stopped:
        return result.stopped
    from obliviate.evaluate.memorised import describe, read_memorisation

    last = read_memorisation(result.output_dir) or {}
    return (
        f"not memorised within the budget of {config.epochs} epochs: {describe(last)} < {config.until_memorised:g} "
        "(raise --epochs or --lr)"
    )
