"""Writes README.md's demo section from a demo run: the table, the goals and the stop-check plot, all from
``results.json``, so that no number in it is typed by hand.

    python benchmarks/demo_results.py --run --write         # runs `obliviate demo` (timed), then writes README
    python benchmarks/demo_results.py --write               # from the last run's runs/demo/results.json

The section sits between ``<!-- demo-results:start -->`` and ``<!-- demo-results:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import _common

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
KEY = "demo-results"
RUN_COLUMNS = (
    ("lr", "lr"),
    ("steps", "steps"),
    ("end", "ended by"),
    ("tokens_vs_oracle", "tokens / oracle"),
    ("compute_vs_oracle", "compute / oracle"),
)
"""After the one-screen metric columns, whose labels, arrows and formats come from the METRICS table."""


def cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 0.01 and value != 0 else f"{value:.3f}"
    return str(value)


def ended(run: dict) -> str:
    """What ended one run of ``results.json``: its ``ended``, or (a file written before that field) its stop reason,
    else its step budget."""
    from obliviate.evaluate.results import ended_by

    return run.get("ended") or ended_by(run.get("stopped"), run.get("steps", 0), run.get("steps", 0))


def section(results: dict, command: str, wall: float | None, cached: dict | None) -> str:
    rows = results["summary"]
    runs = {r["method"]: r for r in results["runs"]}
    config = results["config"]
    for row in rows[2:]:
        run = runs.get(row["model"], {})
        row["lr"], row["steps"] = run.get("lr"), run.get("steps")
        row["end"] = ended(run)
    from obliviate.report.columns import Column, metric_columns

    columns = [Column("model", "model"), *metric_columns("brief"), *(Column(k, label) for k, label in RUN_COLUMNS)]
    table = _common.markdown_table(
        [c.header for c in columns], [[cell(c.cell(row.get(c.key))) for c in columns] for row in rows]
    )
    held, total, lines = goal_lines(rows, attack_goals(results))
    people = config["people"]
    when = _common.utc_date()
    if cached is None:
        source = "target and oracle from the cache where present"
    elif all(cached.values()):
        source = "target and oracle came from the cache"
    else:
        source = "fine-tuned in the run: " + ", ".join(k for k, v in cached.items() if not v)
    timing = (
        f"The pipeline took {wall / 60:.1f} min of wall time on {_common.cpu_cores()} CPU cores ({source})."
        if wall is not None
        else "Wall time was not measured."
    )
    shown_plots = (
        ("demo_stop_checks.png", "Forget exposure at each stop-rule check, against the never-seen band"),
        ("demo_tradeoff.png", "Forget against retain ROUGE-L of every method, the target and the oracle"),
        ("demo_leak_rate_per_epoch.png", "Forget, retain and holdout leak rate per epoch, one panel per method"),
    )
    plot = "".join(f"\n\n![{alt}](docs/{name})" for name, alt in shown_plots if (REPO / "docs" / name).is_file())
    intro = f"""`obliviate demo` with its defaults: {people} synthetic people (forget, holdout and retain split
{config["forget_fraction"]:.0%} / {config["holdout_fraction"]:.0%} / the rest), a {config["size"]} OLMo, target and
oracle fine-tuned until memorised, within {config["finetune_epochs"]} epochs (memorised: {memorised(results)}).
Every method runs as `obliviate unlearn` runs it with no hyperparameter flags: its preset,
batch {config["unlearn_batch_size"]}, the learning rate from the range test, {_common.budget_words()}, and the
stop rule against the holdout people. Each row is the run's last checkpoint, evaluated on up to
{config["eval_max_examples"]} rows per split. Measured {when} with `{command}`, written by
`benchmarks/demo_results.py`. {timing}"""
    intro = textwrap.fill(" ".join(intro.split()), width=118, break_on_hyphens=False, break_long_words=False)
    return f"""{intro}

{table}

Goals against the oracle (and the target, for retain): {held} of {total} hold{noise_text(rows)}.

{chr(10).join(lines)}{attacks_text(results)}{plot}"""


def attack_goals(results: dict) -> list[dict]:
    """The goals against the attacked oracle that the run computed (``results.json`` goals with an ``attack``)."""
    return [g for g in results.get("goals", []) if g.get("attack")]


def attacks_text(results: dict) -> str:
    """The attacks' table, the default method's verdict and their cost, from ``results.json`` (empty without)."""
    entries = results.get("attacks")
    if not entries:
        return ""
    from obliviate.report.demo_attacks import attack_table, default_verdict

    found = re.search(r"wall time of the whole pipeline: (\d+)s", " ".join(results.get("notes", [])))
    seconds = results.get("attack_seconds") or 0.0
    cost = ""
    if found and float(found.group(1)) > seconds:
        rest = float(found.group(1)) - seconds
        cost = f" They took {seconds:.0f}s, {seconds / rest:.0%} on top of the rest of the pipeline."
    intro = (
        "Attacks on copies of each model (relearn: 10 steps on half of each forget person's records, the other half "
        f"probed; quantize: 4-bit round-to-nearest), forget leak and the rest *before → after*.{cost}"
    )
    verdict = default_verdict(attack_goals(results), results.get("default_method"))
    return f"\n\n{intro}\n\n{attack_table(entries)}" + (f"\n\n{verdict}" if verdict else "")


def memorised(results: dict) -> str:
    """When target and oracle reached the memorisation threshold, from the run's ``memorisation`` record."""
    found = results.get("memorisation") or {}
    parts = [
        f"{name} at epoch {entry['epochs']} of {entry['budget']}"
        if entry.get("memorised")
        else f"{name} not memorised"
        for name, entry in found.items()
        if entry
    ]
    return ", ".join(parts) or "not recorded"


def goal_lines(rows: list[dict], extra: list[dict] | None = None) -> tuple[int, int, list[str]]:
    """Goals held, goals in all, and one line per method: how many it meets and the measured value of each miss;
    ``extra``: goals the run computed beyond those of the summary rows (the attacks'), counted the same way."""
    from obliviate.evaluate.uncertainty import CLEAR
    from obliviate.report.demo import goals

    goal_rows = goals(rows) + list(extra or [])
    lines = []
    for row in rows[2:]:
        mine = [g for g in goal_rows if g["goal"].startswith(f"{row['model']}: ")]
        missed = [
            f"{g['goal'].split(': ', 1)[1]} ({cell(g['value'])} against {cell(g['target'])}{margin_words(g)})"
            for g in mine
            if not g["holds"]
        ]
        verdict = f"{sum(g['holds'] for g in mine)} of {len(mine)}"
        line = f"- {row['model']}: {verdict}" + (f"; misses {'; '.join(missed)}" if missed else ", all")
        close = [g["goal"].split(": ", 1)[1] + count_words(g) for g in mine if g.get("clear") is False]
        if close:
            line += f" (within {CLEAR:g} standard errors of the bound: {', '.join(close)})"
        lines.append(line)
    return sum(g["holds"] for g in goal_rows), len(goal_rows), lines


def noise_text(rows: list[dict]) -> str:
    """``; 9 of 30 verdicts lie within 2 standard errors of their bound`` where the rows carry standard errors (the
    metric summary's goals; the attacks' have none), else ""."""
    from obliviate.report.demo import goals
    from obliviate.report.render import noise_words

    words = noise_words(goals(rows))
    return f"; {words} (`docs/METRICS.md`, *Standard errors*)" if words else ""


def count_words(goal: dict) -> str:
    """`` (a rate of 0 for all 20 people)`` for a goal whose error is that of such a count (``no_event_people``),
    else ""."""
    people = goal.get("no_event_people")
    if people is None:
        return ""
    return f" (a rate of {0 if goal['value'] == 0 else 1} for all {people} people)"


def margin_words(goal: dict) -> str:
    """``, margin -0.012 ± 0.048`` for a goal whose margin has a standard error, else ""."""
    if goal.get("margin") is None or goal.get("margin_se") is None:
        return ""
    return f", margin {goal['margin']:+.3f} ± {goal['margin_se']:.3f}"


def with_thresholds(checks: list[dict]) -> list[dict]:
    """Each check with the rule's threshold, worked out from the logged reference and forget standard error where
    the log predates the ``threshold`` field (the same formula as ``ExposureStopRule``)."""
    reference = next((c for c in checks if "reference_exposure" in c), None)
    out = []
    for check in checks:
        check = dict(check)
        if "threshold" not in check and reference is not None and "forget_se" in check:
            se = (reference["reference_se"] ** 2 + check["forget_se"] ** 2) ** 0.5
            check["threshold"] = reference["reference_exposure"] + reference.get("band", 2.0) * se
        out.append(check)
    return out


def write_readme(body: str) -> None:
    start, end = f"<!-- {KEY}:start -->", f"<!-- {KEY}:end -->"
    text = README.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} … {end} markers")
    before, rest = text.split(start, 1)
    text = before + f"{start}\n{body.strip()}\n{end}" + rest.split(end, 1)[1]
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(README)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run `obliviate demo` first (timed)")
    parser.add_argument("--fresh", action="store_true", help="with --run: retrain target and oracle (no cache)")
    parser.add_argument("--output_dir", default="runs/demo", help="the demo's report directory")
    parser.add_argument("--write", action="store_true", help="write the section into README.md")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    wall = None
    if args.run:
        command = [sys.executable, "-m", "obliviate.cli.main", "demo", "--output_dir", str(out)]
        started = time.perf_counter()
        subprocess.run(command + (["--fresh"] if args.fresh else []), check=True)
        wall = time.perf_counter() - started
    results = json.loads((out / "results.json").read_text())
    if wall is None:  # the pipeline's own measure, as its report states it
        found = [re.search(r"wall time of the whole pipeline: (\d+)s", n) for n in results.get("notes", [])]
        wall = next((float(m.group(1)) for m in found if m), None)
    cached = results.get("cached")  # which of target and oracle came from the cache (newer results only)
    shown = "obliviate demo" + (" --fresh" if args.fresh else "")
    checks = {r["method"]: with_thresholds(r.get("stop_checks") or []) for r in results["runs"]}
    if args.write:  # the README's pictures come from this run too; without --write the repository is left alone
        write_plots(checks, out)
    body = section(results, shown, wall, cached)
    print(body)
    if args.write:
        write_readme(body)
    return 0


PLOTS = {"tradeoff.png": "demo_tradeoff.png", "leak_rate_per_epoch.png": "demo_leak_rate_per_epoch.png"}
"""The demo report's plots the README shows, copied from the run into docs/."""


def write_plots(checks: dict, out: Path) -> None:
    """docs/demo_stop_checks.png drawn from the run's stop checks, and the report's own plots copied beside it."""
    import shutil

    if any(checks.values()):
        from obliviate.report.plots import plot_stop_checks

        plot_stop_checks(checks, REPO / "docs" / "demo_stop_checks.png")
    for name, target in PLOTS.items():
        if (out / name).is_file():
            shutil.copyfile(out / name, REPO / "docs" / target)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
