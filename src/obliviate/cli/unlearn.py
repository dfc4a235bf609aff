"""``obliviate unlearn``: remove the forget set from a fine-tuned model."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import UnlearnConfig


def register(subparsers) -> None:
    from obliviate.losses import LOSSES

    parser = subparsers.add_parser(
        "unlearn",
        help=f"unlearn a forget set ({', '.join(['auto', *LOSSES])})",
        description="Unlearn --forget_dir from --model_dir while keeping --retain_dir. Writes the model (or LoRA "
        "adapter) to --output_dir with checkpoints/epoch-N, metrics.jsonl and the resolved config.yaml. With no "
        "hyperparameter flags it measures its own learning rate (a short range test), runs the method's budget (120 "
        "forget steps; contrast: 240 forget steps or 10 passes over the forget set, whichever is more, each followed "
        "by 15 retain steps), and stops once the forget set's PII is as unexposed as a never-seen person's "
        "(docs/METHODS.md).",
    )
    add_arguments(parser, UnlearnConfig)
    _add_weights(parser)
    _describe_methods(parser, LOSSES)
    parser.set_defaults(func=run)


def _add_weights(parser: argparse.ArgumentParser) -> None:
    """One flag per loss weight of the registry (``--alpha``, ``--beta``, …), its help from the methods' own
    declarations (:func:`obliviate.losses.weight_options`); the values go to ``UnlearnConfig.loss_params``."""
    from obliviate.losses import weight_options

    group = parser.add_argument_group("loss weights (each method reads its own; unset: the method's default)")
    for name, (_, help_text) in weight_options().items():
        group.add_argument(f"--{name}", type=float, default=argparse.SUPPRESS, metavar="X", help=help_text)


def _describe_methods(parser: argparse.ArgumentParser, methods) -> None:
    """``--method``'s help from the registry: a method added to ``LOSSES`` is listed, with its one-line summary."""
    action = next(a for a in parser._actions if a.dest == "method")
    listed = "; ".join(f"{name}: {method.summary}" for name, method in methods.items())
    action.help = (
        "auto (contrast where the forget people's PII values are known and a retain set is given, else ga_gd) or "
        f"one of the registered methods ({listed}) (default: auto)"
    )
    action.metavar = "{" + ",".join(["auto", *methods]) + "}"


def config_from(args: argparse.Namespace) -> UnlearnConfig:
    """The run's config: ``--config`` YAML under the flags, the loss weights (flags or top-level YAML keys) gathered
    into ``loss_params``."""
    from obliviate.losses import weight_options

    return build_config(UnlearnConfig, args, nested={"loss_params": weight_options()})


def run(args: argparse.Namespace) -> int:
    from obliviate.distributed import process_state
    from obliviate.train.run import run_unlearn

    config = config_from(args)
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
            f"{result.tokens_seen} tokens"
            + (
                f" (and {result.lr_probe_tokens} in the range test's put-back trials)"
                if result.lr_probe_tokens
                else ""
            )
            + f", {result.forward_tokens} read without training (reference, checks)"
            + f" in {result.wall_seconds:.0f}s (training loop "
            f"{result.timing.get('loop_seconds', 0.0):.1f}s) → {result.output_dir}{note}"
        )
    return 0
