"""``obliviate init-model``: a tokenizer trained on the data and an untrained tiny/small OLMo."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="train a tokenizer on the data and build an untrained OLMo of a named size",
        description="Train a byte-level BPE tokenizer on the records and save an untrained OLMo-architecture model "
        "as a standard Hugging Face directory (loadable with AutoModelForCausalLM, no obliviate needed).",
    )
    parser.add_argument(
        "--size",
        choices=("tiny", "small"),
        default="tiny",
        help="tiny: ~1.6 M parameters (hidden 128, 4 layers); small: ~7 M (default: tiny)",
    )
    parser.add_argument("--arch", choices=("olmo", "olmo2"), default="olmo", help="architecture (default: olmo)")
    parser.add_argument("--data", nargs="+", required=True, help="data paths to train the tokenizer on")
    parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer vocabulary (default: 4096)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    parser.add_argument("--output_dir", required=True, help="where the model directory is written")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.data.load import load_training_records
    from obliviate.models.load import load_model
    from obliviate.models.tiny import count_parameters, init_model
    from obliviate.train.run import prepare_output_dir

    records = load_training_records(args.data)
    prepare_output_dir(args.output_dir, args.data, overwrite=args.overwrite, resume=False)
    path = init_model(
        records, args.output_dir, size=args.size, arch=args.arch, vocab_size=args.vocab_size, seed=args.seed
    )
    model, tokenizer = load_model(path)
    print(f"{args.size} {args.arch}: {count_parameters(model):,} parameters, vocabulary {len(tokenizer)} → {path}")
    return 0
