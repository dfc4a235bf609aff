"""The data an evaluation reads: the splits, the people whose PII is tracked, optional SemEval-style MIA documents,
and the fixed, seeded sample a quick look evaluates (``EvalOptions.max_examples``)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.data.load import load_mia_dir, load_split
from obliviate.data.pii import find_pii_json, pii_from_records
from obliviate.data.records import Record

EVAL_SPLITS = ("forget", "retain", "holdout")


@dataclass
class EvalData:
    """The sets to evaluate on, the people whose PII is tracked, and optional SemEval-style MIA documents."""

    splits: dict[str, list[Record]]
    people: list[Any] = field(default_factory=list)
    mia_members: list[Record] | None = None
    mia_nonmembers: list[Record] | None = None
    notes: list[str] = field(default_factory=list)


def load_eval_data(
    forget_dir: str | Path,
    retain_dir: str | Path | None = None,
    holdout_dir: str | Path | None = None,
    mia_dir: str | Path | None = None,
    pii_path: str | Path | None = None,
) -> EvalData:
    """Load the sets and the PII to track: ``pii.json`` (synthetic data) when found, else the Task2 QA answers."""
    splits = {"forget": load_split(forget_dir, split="forget")}
    if retain_dir:
        splits["retain"] = load_split(retain_dir, split="retain")
    if holdout_dir:
        splits["holdout"] = load_split(holdout_dir, split="holdout")
    data = EvalData(splits)
    pii_file = Path(pii_path) if pii_path else find_pii_json(forget_dir)
    if pii_file is not None:
        from obliviate.data.synth import load_pii

        data.people = list(load_pii(pii_file))
    else:
        data.people = [p for name, rows in splits.items() for p in pii_from_records(rows, split=name)]
        if data.people:
            data.notes.append("PII taken from the Task2 QA answers (qa0 birth date … qa4 address)")
    if mia_dir:
        data.mia_members, data.mia_nonmembers = load_mia_dir(mia_dir)
    return data


def sample_records(records: list[Record], max_examples: int | None, seed: int) -> list[Record]:
    """A fixed, seeded sample that keeps whole people together (a person's biography and QA rows)."""
    if max_examples is None or len(records) <= max_examples:
        return records
    from obliviate.data.records import owner_id

    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[owner_id(record)].append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    chosen: list[Record] = []
    for key in keys:
        if len(chosen) >= max_examples:
            break
        chosen.extend(groups[key])
    return chosen


def people_of(people: list[Any], split: str) -> list[Any]:
    """The people of ``split`` (a person with no split, as Task2 QA rows give, belongs to every split)."""
    return [p for p in people if getattr(p, "split", split) in (split, "")]
