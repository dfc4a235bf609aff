"""``obliviate inspect``: load and validate data sets, print counts, lengths and PII-looking counts (never values)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import InspectConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="validate data sets and print counts, lengths and PII-looking counts",
        description="Load each PATH (a file, or a directory; a directory holding several splits such as forget and "
        "retain is loaded as each of them), validate it, and print counts per task and kind, input / output length "
        "statistics and how many PII-looking strings each set holds (the audit's detectors: phonenumbers read in "
        "--region, python-dateutil, email-validator; national IDs are SSN, SIN and UK NINo shapes). PII values are "
        "never printed. When a forget and a retain set are both given, their overlap is checked.",
    )
    add_arguments(parser, InspectConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.data.load import check_overlap, list_splits, load_split, split_of
    from obliviate.data.stats import describe
    from obliviate.evaluate.detectors import counts

    args = build_config(InspectConfig, args)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    # (label, split, records, group): a directory holding several splits is its own group; single-split paths
    # share one group, so `inspect forget.jsonl retain.jsonl` compares the two
    sets: list[tuple[str, str | None, list, str | None]] = []
    for path in args.paths:
        splits = list_splits(path)
        if len(splits) > 1:
            sets.extend((f"{path} [{split}]", split, load_split(path, split=split), str(path)) for split in splits)
        else:
            split = splits[0] if splits else split_of(path)
            sets.append((str(path), split, load_split(path), None))
    # every check runs before anything is printed, so a failure leaves only the error line
    overlaps = [
        (forget_label, retain_label, check_overlap(forget, retain, allow_overlap=args.allow_overlap))
        for forget_label, forget_split, forget, forget_group in sets
        if forget_split == "forget"
        for retain_label, retain_split, retain, retain_group in sets
        if retain_split == "retain" and retain_group == forget_group
    ]
    for label, split, records, _ in sets:
        pii = counts((text for r in records for text in (r.input, r.output)), args.region)
        _print_summary(label, split, describe(records, tokenizer), pii)
    for forget_label, retain_label, count in overlaps:
        print(f"overlap {forget_label} / {retain_label}: {count} retain records share an id or input and output")
    return 0


def _print_summary(label: str, split: str | None, summary: dict[str, Any], pii: dict[str, int]) -> None:
    print(f"{label}: {summary['records']} records{f' ({split})' if split else ''}")
    for task, kinds in summary["counts"].items():
        print(f"  {task}: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    for side in ("input", "output"):
        stats = summary[f"{side}_length"]
        print(
            f"  {side} length ({summary['unit']}): min {stats['min']}, mean {stats['mean']:.1f}, "
            f"median {stats['median']:.1f}, max {stats['max']}"
        )
    print("  PII-looking strings: " + ", ".join(f"{name} {count}" for name, count in pii.items()))


def _load_tokenizer(path: str):
    from obliviate.errors import ModelError

    if not Path(path).is_dir():
        raise ModelError(f"--tokenizer {path}: expected a local tokenizer directory, found no directory")
    from obliviate.models.load import load_tokenizer  # imports torch: only once the path is known to be good

    return load_tokenizer(path)
