"""benchmarks/probe_fields.py: rows a run broke, counted per (kind, PII field)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_fields  # noqa: E402


def test_probe_fields_counts_the_rows_the_starting_model_reproduced_and_the_unlearned_one_does_not(
    assets, monkeypatch, capsys
):
    from obliviate.data.batching import retain_match_key

    seen: dict[str, list] = {}

    def kept(model_dir: str, records: list) -> list[bool]:
        seen[model_dir] = records
        if model_dir == "before":  # reproduces every row but the first
            return [i > 0 for i in range(len(records))]
        return [retain_match_key(r)[2] != "ssn" for r in records]  # lost every SSN question, kept the rest

    monkeypatch.setattr(probe_fields, "kept_rows", kept)
    argv = ["--before", "before", "--after", "after", "--data", str(assets.retain), "--rows", "30"]
    counts = probe_fields.main(argv)
    records = seen["before"]
    assert seen["after"] == records and len(records) == 30  # one seeded sample, read by both models
    keys = [retain_match_key(r)[1:] for r in records]
    assert sum(had for _, had in counts.values()) == 29
    lost = {key for key in counts if key[1] == "ssn"}
    assert ("qa", "ssn") in lost
    for key, (gone, had) in counts.items():
        assert had == keys[1:].count(key) and gone == (had if key in lost else 0)
    gone = sum(counts[key][0] for key in lost)
    assert gone > 0 and f"all: {gone} of 29" in " ".join(capsys.readouterr().out.split())
    again = probe_fields.main(argv)
    assert seen["before"] == records and again == counts  # seeded
