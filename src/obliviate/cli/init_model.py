"""``obliviate init-model``: a tokenizer trained on the data and an untrained tiny, small or medium OLMo."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import InitModelConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="train a tokenizer on the data and build an untrained OLMo of a named size",
        description="Train a byte-level BPE tokenizer on the records and save an untrained OLMo-architecture model "
        "as a standard Hugging Face directory (loadable with AutoModelForCausalLM, no obliviate needed).",
    )
    add_arguments(parser, InitModelConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.data.load import load_training_records
    from obliviate.io import check_output_dir, mark_output_dir
    from obliviate.models.load import load_model
    from obliviate.models.tiny import count_parameters, init_model

    config = build_config(InitModelConfig, args)
    records = load_training_records(config.data)
    inputs = [*config.data, *([args.config] if getattr(args, "config", None) else [])]
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite)
    path = init_model(  # written beside and renamed into place: a failure leaves the old directory
        records, out, size=config.size, arch=config.arch, vocab_size=config.vocab_size, seed=config.seed
    )
    mark_output_dir(path, "init-model")
    model, tokenizer = load_model(path)
    print(f"{config.size} {config.arch}: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)} → {path}")
    return 0
