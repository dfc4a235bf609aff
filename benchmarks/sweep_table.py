"""Re-read every run under runs/sweep/ and tabulate its best epoch under the demo's current rule.

python benchmarks/sweep_table.py   # prints a markdown table; the sweeps themselves: sweep_defaults.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from obliviate.evaluate.epochs import load_epoch_results
from obliviate.evaluate.selection import select_best
from obliviate.report.columns import Column, metric_columns
from obliviate.report.render import columns_table


def main() -> int:
    rows = []
    for eval_dir in sorted(Path("runs/sweep").glob("*/methods/*/eval")):
        epochs = load_epoch_results(eval_dir)
        if len(epochs) < 2:
            continue
        best = select_best(epochs, "holdout_gap")
        summary = next(e for e in epochs if e.epoch == best["epoch"]).summary
        rows.append({"run": eval_dir.parts[2], "epochs": len(epochs) - 1, "best": best["epoch"], **summary})
    # the metric columns of the sweep's own write-up (sweep_defaults.write_up): the METRICS table's brief tier
    columns = [Column("run", "run"), Column("epochs", "epochs run"), Column("best", "best epoch")]
    print(columns_table([*columns, *metric_columns("brief")], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
