"""Re-read every run under runs/sweep/ and tabulate its best epoch under the demo's current rule.

python benchmarks/sweep_table.py   # prints a markdown table; the sweeps themselves: sweep_defaults.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.evaluate.epochs import load_epoch_results, select_best
from obliviate.report.render import markdown_table
from sweep_defaults import SUMMARY_KEYS as KEYS  # the scripts' own folder is on sys.path when run as a script


def main() -> int:
    rows = []
    for eval_dir in sorted(Path("runs/sweep").glob("*/methods/*/eval")):
        epochs = load_epoch_results(eval_dir)
        if len(epochs) < 2:
            continue
        best = select_best(epochs, "holdout_gap")
        summary = next(e for e in epochs if e["epoch"] == best["epoch"])["summary"]
        rows.append([eval_dir.parts[2], len(epochs) - 1, best["epoch"], *[summary.get(k) for k in KEYS]])
    header = [
        "run",
        "epochs run",
        "best epoch",
        "forget R-L",
        "retain R-L",
        "forget EM",
        "retain EM",
        "leak F",
        "leak R",
        "MIA AUC",
    ]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
