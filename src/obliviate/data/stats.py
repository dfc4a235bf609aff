"""Summaries of a record set: counts per task and kind, and lengths.

Only counts and lengths leave this module, never a value, so its output is safe to print and to log. The
PII-looking counts ``obliviate inspect`` prints beside them come from :func:`obliviate.evaluate.detectors.counts`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from obliviate.data.records import Record


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """``min`` / ``mean`` / ``median`` / ``max`` of a list of lengths (all 0 for an empty list)."""
    if not lengths:
        return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {
        "min": min(lengths),
        "mean": statistics.fmean(lengths),
        "median": float(statistics.median(lengths)),
        "max": max(lengths),
    }


def describe(records: Sequence[Record], tokenizer: Any = None) -> dict[str, Any]:
    """Summarise a record set.

    Args:
        records: one forget / retain / holdout set.
        tokenizer: a Hugging Face tokenizer; lengths are counted in its tokens (no special tokens) when given,
            in characters otherwise.

    Returns:
        ``{"records": n, "counts": {task: {kind: n}}, "unit": "characters" | "tokens",
        "input_length": stats, "output_length": stats}``, where stats are from :func:`length_stats`.
    """
    counts: dict[str, dict[str, int]] = {}
    for (task, kind), count in sorted(Counter((r.task, r.kind) for r in records).items()):
        counts.setdefault(task, {})[kind] = count
    inputs = [r.input for r in records]
    outputs = [r.output for r in records]
    if tokenizer is None:
        input_lengths, output_lengths = [len(t) for t in inputs], [len(t) for t in outputs]
    else:
        input_lengths = _token_lengths(tokenizer, inputs)
        output_lengths = _token_lengths(tokenizer, outputs)
    return {
        "records": len(records),
        "counts": counts,
        "unit": "characters" if tokenizer is None else "tokens",
        "input_length": length_stats(input_lengths),
        "output_length": length_stats(output_lengths),
    }


def _token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
