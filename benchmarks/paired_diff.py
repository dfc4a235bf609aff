"""Do two evaluations of the same rows differ by more than the rows' noise? Paired differences, metric by metric.

Each argument is an evaluation's ``results.json`` (``obliviate evaluate``'s, or a run's
``methods/M/eval/epoch-N/results.json``), or ``REPORT/results.json#MODEL`` for a summary row of a pipeline report
(``target``, ``oracle (retrain)``, a method). For every metric both carry units for, it prints the difference
``second − first``, its paired standard error (a person's rows one draw; ``docs/METRICS.md``, *Standard errors*)
and z. Numbers only, never a value.

    python benchmarks/paired_diff.py runs/demo/results.json#contrast \
        runs/seed1/methods/contrast/eval/epoch-12/results.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(spec: str) -> tuple[dict, dict]:
    """``(summary, units)`` of one evaluation, or of one summary row of a report (``PATH#MODEL``)."""
    path, _, model = spec.partition("#")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"paired_diff: cannot read {path}: {exc}") from None
    if model:
        row = next((r for r in data.get("summary", []) if r.get("model") == model), None)
        if row is None:
            raise SystemExit(f"paired_diff: no row {model!r} in {path}")
        return row, row.get("units") or {}
    return data.get("summary") or {}, data.get("units") or {}


def differences(first: tuple[dict, dict], second: tuple[dict, dict]) -> list[dict]:
    """Per metric with units on both sides: the difference, its paired error and z (NaN where the error is 0)."""
    from obliviate.evaluate.uncertainty import paired_se

    (summary_a, units_a), (summary_b, units_b) = first, second
    out = []
    for key in sorted(set(units_a) & set(units_b)):
        se = paired_se(units_b[key], units_a[key])
        if se is None or summary_a.get(key) is None or summary_b.get(key) is None:
            continue
        diff = summary_b[key] - summary_a[key]
        out.append({"metric": key, "first": summary_a[key], "second": summary_b[key], "diff": diff, "se": se,
                    "z": diff / se if se else math.nan})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="results.json, or REPORT/results.json#MODEL")
    parser.add_argument("second", help="the same, evaluated on the same rows")
    args = parser.parse_args(argv)
    found = differences(load(args.first), load(args.second))
    if not found:
        raise SystemExit("paired_diff: the two evaluations share no metric measured on the same units")
    print("| metric | first | second | second − first | paired SE | z |")
    print("|---|---|---|---|---|---|")
    for d in found:
        values = f"{d['first']:.3f} | {d['second']:.3f} | {d['diff']:+.3f} | {d['se']:.3f} | {d['z']:.2f}"
        print(f"| {d['metric']} | {values} |")


if __name__ == "__main__":
    main()
