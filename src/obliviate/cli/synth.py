"""``obliviate synth``: synthetic people with PII in LUME Task2 format, the offline default data."""

from __future__ import annotations

import argparse

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import SynthConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic biographies with PII as forget / retain / holdout sets",
        description="Draw synthetic people with Faker and write DIR/forget/forget.jsonl, DIR/retain/retain.jsonl, "
        "DIR/holdout/holdout.jsonl (LUME Task2 format: one biography completion and five PII questions per "
        "person) and DIR/pii.json. The same seed gives byte-identical files.",
    )
    add_arguments(parser, SynthConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.data.synth import synthesize, write_synth

    config = build_config(SynthConfig, args)
    data = synthesize(config.people, config.forget_fraction, config.holdout_fraction, config.seed)
    path = write_synth(data, config.output_dir, overwrite=config.overwrite)
    sizes = {split: sum(p.split == split for p in data.people) for split in ("forget", "retain", "holdout")}
    total = len(data.forget) + len(data.retain) + len(data.holdout)
    print(
        f"synth: {len(data.people)} people (forget {sizes['forget']}, retain {sizes['retain']}, "
        f"holdout {sizes['holdout']}), {total} records, seed {data.seed} → {path}"
    )
    return 0
