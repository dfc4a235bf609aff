"""The table of a PII set's pipeline run (``obliviate run``'s ``results.json``), for BENCHMARKS.md.

Reads the run's rows, goals and cost, the forget-against-holdout exposure z of each method (``exposure_band.py``'s
test on its chosen epoch), and prints a markdown section; with ``--write KEY`` it replaces the text between
``<!-- KEY:start -->`` and ``<!-- KEY:end -->`` in BENCHMARKS.md (appended where missing). Numbers only, never a
value of the data.

    python benchmarks/pii_set_table.py runs/de27 --command "obliviate run …" --title "…" --write de_people
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from exposure_band import report_bands  # noqa: E402

KEYS = (
    "forget/rougeL_recall",
    "retain/rougeL_recall",
    "retain/exact_match",
    "forget/leak_rate",
    "forget/exposure",
    "holdout/exposure",
    "forget/digits_in_place",
    "forget/mia_auc_loss",
)
"""The summary keys the table shows, labelled and formatted as every table is (``obliviate.report.columns``)."""


def section(run: Path, command: str, title: str) -> str:
    """The markdown of ``run`` (an ``obliviate run`` output directory): heading, command, table, goals."""
    import bench_quality
    import demo_results
    from obliviate.report.columns import Column, metric_column
    from obliviate.report.render import columns_table

    path = run / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).date().isoformat()
    runs = {r["method"]: r for r in results["runs"]}
    bands = {name.split(" (")[0]: b["all fields"] for name, b in report_bands(run).items()}
    rows = []
    for row in results["summary"]:
        method = runs.get(row["model"])
        how = {"steps": method.get("steps"), "ended": demo_results.ended(method)} if method else {}
        rows.append({**row, **how, "z": bands.get(row["model"], {}).get("z")})
    columns = [
        Column("model", "model"),
        *(metric_column(key) for key in KEYS),
        Column("steps", "steps"),
        Column("ended", "ended by"),
        Column("z", "exposure z", fmt=".2f"),
        Column("tokens_vs_oracle", "tokens / oracle"),
    ]
    held = [g for g in results["goals"] if g["holds"]]
    lines = [
        f"### {title}",
        "",
        f"Measured {written} with `{command}` ({results['wall_seconds'] / 60:.1f} min of wall time; target and "
        f"oracle {_cached(results['cached'])}). Each method's row is the checkpoint {_chosen(results['runs'])}. "
        "Exposure z is `benchmarks/exposure_band.py`'s test of that checkpoint's forget exposure against the "
        "holdout's, every field pooled (inside the band: z ≤ 2); it is not the stop rule's test, which reads each "
        "field on its own sample against the never-seen people under the starting weights.",
        "",
        columns_table(columns, rows),
        "",
        f"Goals against the oracle: {len(held)} of {len(results['goals'])} hold.",
        "",
        *(bench_quality.goal_line(goal) for goal in results["goals"]),
    ]
    return "\n".join(lines)


def _chosen(runs: list[dict]) -> str:
    """How the rows' checkpoints were chosen, as the run's ``best`` entries say (``the run's last checkpoint``)."""
    reasons = sorted({run["best"].get("reason", run["best"].get("rule", "?")) for run in runs if "best" in run})
    return "chosen as " + "; ".join(reasons) if reasons else "each run ended with"


def _cached(cached: dict) -> str:
    fresh = [name for name, hit in cached.items() if not hit]
    if not fresh:
        return "from the cache"
    return f"fine-tuned in this run ({', '.join(fresh)})" if len(fresh) < len(cached) else "fine-tuned in this run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an `obliviate run` output directory")
    parser.add_argument("--command", required=True, help="the command that made the run, quoted in the section")
    parser.add_argument("--title", required=True, help="the section's heading")
    parser.add_argument("--write", metavar="KEY", help="replace BENCHMARKS.md's KEY section with the table")
    args = parser.parse_args(argv)
    if not (args.run / "results.json").is_file():
        parser.error(f"{args.run} has no results.json: not an `obliviate run` output directory")
    text = section(args.run, args.command, args.title)
    print(text)
    if args.write:
        _common.write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
