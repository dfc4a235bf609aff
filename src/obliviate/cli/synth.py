"""``obliviate synth``: synthetic people with PII in LUME Task2 format, the offline default data."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic biographies with PII as forget / retain / holdout sets",
        description="Draw synthetic people with Faker and write DIR/forget/forget.jsonl, DIR/retain/retain.jsonl, "
        "DIR/holdout/holdout.jsonl (LUME Task2 format: one biography completion and five PII questions per "
        "person) and DIR/pii.json. The same seed gives byte-identical files.",
    )
    parser.add_argument("--people", type=int, default=200, help="number of people, 6 records each (default: 200)")
    parser.add_argument(
        "--forget_fraction", type=float, default=0.1, help="share of people in the forget set (default: 0.1)"
    )
    parser.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.1,
        help="share of people never trained on, for membership inference (default: 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for people, templates and splits (default: 0)")
    parser.add_argument("--output_dir", required=True, help="directory to create (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.data.synth import synthesize, write_synth

    data = synthesize(args.people, args.forget_fraction, args.holdout_fraction, args.seed)
    path = write_synth(data, args.output_dir, overwrite=args.overwrite)
    sizes = {split: sum(p.split == split for p in data.people) for split in ("forget", "retain", "holdout")}
    total = len(data.forget) + len(data.retain) + len(data.holdout)
    print(
        f"synth: {len(data.people)} people (forget {sizes['forget']}, retain {sizes['retain']}, "
        f"holdout {sizes['holdout']}), {total} records, seed {data.seed} → {path}"
    )
    return 0
