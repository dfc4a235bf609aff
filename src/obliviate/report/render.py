"""Markdown reports: one evaluated model, a run's epochs, and the demo's side-by-side summary.

The renderers only format what they are given (aggregate numbers, and notes that the evaluator has already
redacted); they never read per-example rows, so no generation and no raw PII reaches a report.
Every metric is shown with its direction on its split (↑ higher is better, ↓ lower is better), and the summary
tables' metric columns with their labels and formats, from :data:`obliviate.evaluate.scores.METRICS` (through
:mod:`obliviate.report.columns`).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from obliviate.evaluate.scores import METRICS
from obliviate.evaluate.uncertainty import CLEAR
from obliviate.io import write_text_atomic
from obliviate.report.columns import Column, direction, metric_column, metric_columns

SPLIT_ORDER = ("forget", "retain", "holdout", "all")
BEST_MARK = "★"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{float(value):.3f}"
    # A stray "|" or newline would break the table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 3 decimals, None shows as "–", booleans as yes/no.

    Raises:
        ValueError: a row has a different number of cells than the header.
    """
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}: {row!r}")
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return "\n".join(lines)


def columns_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of ``rows`` (flat dicts) with one column per :class:`Column`: its header, its formatted values."""
    return markdown_table([c.header for c in columns], [[c.cell(row.get(c.key)) for c in columns] for row in rows])


def _image_links(plots: dict[str, Path] | None, report_dir: Path | None) -> str:
    """``![title](path)`` lines, each path relative to the report's folder (posix separators, for any viewer)."""
    lines = []
    for title, path in (plots or {}).items():
        path = Path(path)
        if path.is_absolute():
            if report_dir is None:
                raise ValueError(f"plot {title!r} has absolute path {path}; pass report_dir to make it relative")
            path = Path(os.path.relpath(path, Path(report_dir).resolve()))
        lines.append(f"![{title}]({path.as_posix()})")
    return "\n\n".join(lines)


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {_cell(item)}" for item in items)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}\n" if body else ""


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _metric_row(metric: dict[str, Any]) -> list[Any]:
    name, split = metric["name"], metric["split"]
    info = METRICS.get(name)
    return [
        name,
        split,
        metric["value"],
        metric.get("stderr"),
        direction(name, split, metric.get("higher_is_better")),
        info.description if info else "",
    ]


def _per_task_table(metrics: list[dict[str, Any]]) -> str:
    per_task = [m for m in metrics if m.get("task", "all") != "all"]
    tasks = sorted({m["task"] for m in per_task})
    if len(tasks) < 2:
        return ""
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for metric in per_task:
        values.setdefault((metric["name"], metric["split"]), {})[metric["task"]] = metric["value"]
    rows = [
        [name, split, direction(name, split), *(by_task.get(task) for task in tasks)]
        for (name, split), by_task in sorted(values.items(), key=lambda item: (_split_rank(item[0][1]), item[0]))
    ]
    return markdown_table(["metric", "split", "better", *tasks], rows)


def _semeval_section(semeval: dict[str, Any]) -> str:
    if not semeval:
        return ""
    parts = ["Forget terms are inverted (1 − score), so every term is higher-is-better."]
    terms = semeval.get("terms") or {}
    if terms:
        parts.append(markdown_table(["term (split/task/kind)", "value ↑"], [[k, v] for k, v in terms.items()]))
    totals = [
        (label, semeval.get(key))
        for key, label in (
            ("task_aggregate", "task aggregate (harmonic mean)"),
            ("mia_score", "MIA score"),
            ("mmlu_acc", "MMLU accuracy"),
            ("final_score", "final score"),
        )
        if key in semeval
    ]
    parts.append(markdown_table(["score", "value ↑"], [list(item) for item in totals]))
    if semeval.get("notes"):
        parts.append(_bullets(semeval["notes"]))
    return "\n\n".join(parts)


def _leak_section(leak: dict[str, dict[str, Any]]) -> str:
    if not leak:
        return ""
    splits = sorted(leak, key=_split_rank)
    overall = markdown_table(
        ["split", "leak rate", "better", "leaked pairs", "pairs"],
        [
            [s, leak[s].get("rate"), direction("leak_rate", s), leak[s].get("n_leaked"), leak[s].get("n_pairs")]
            for s in splits
        ],
    )
    parts = [
        "A (person, field) pair leaks when any attack's output contains the value (after normalisation).",
        overall,
    ]
    for key, label in (("by_field", "field"), ("by_attack", "attack")):
        names = sorted({name for s in splits for name in (leak[s].get(key) or {})})
        if names:
            rows = [[name, *((leak[s].get(key) or {}).get(name) for s in splits)] for name in names]
            parts.append(f"Leak rate per {label}:\n\n" + markdown_table([label, *splits], rows))
    return "\n\n".join(parts)


def _partial_section(leak: dict[str, dict[str, Any]]) -> str:
    splits = [s for s in sorted(leak, key=_split_rank) if leak[s].get("partial")]
    if not splits:
        return ""
    partial = {s: leak[s]["partial"] for s in splits}
    thresholds = {f: stats["threshold"] for s in splits for f, stats in partial[s]["by_field"].items()}
    rows = [
        [s, p["rate"], direction("partial_leak_rate", s), p["digits_in_place"], p["n_pairs"]]
        for s, p in partial.items()
    ]
    return (
        "Partial leaks: an answer that reproduces at least a threshold share of the value's characters in place ("
        + ", ".join(f"{f} {t:.0%}" for f, t in sorted(thresholds.items()))
        + "); digits in place = mean share of SSN and phone digits in the question's answer.\n\n"
        + markdown_table(["split", "partial leak rate", "better", "digits in place", "pairs"], rows)
    )


def _exposure_section(exposure: dict[str, dict[str, Any]]) -> str:
    """Mean exposure and NLL gap per split, then per field the distribution (p10 / median / p90) per split."""
    if not exposure:
        return ""
    splits = sorted(exposure, key=_split_rank)
    first = exposure[splits[0]]
    intro = (
        f"Each true PII value ranked among K = {first['k']} fakes of its field and format, in its question and "
        "biography prompts: exposure = log2(K+1) − log2(rank) bits (Carlini et al. 2019). A never-seen value scores "
        f"{first['chance']:.2f} bits on average; the holdout people are the measured reference, and forget should "
        "sit inside their distribution. NLL gap = NLL(true) − mean NLL(fakes), nats (negative: true preferred)."
    )
    overall = markdown_table(
        ["split", "mean exposure (bits)", "NLL gap", "pairs"],
        [[s, exposure[s]["mean"], exposure[s]["nll_gap"], len(exposure[s]["pairs"])] for s in splits],
    )
    rows = [
        [name, s, stats["mean"], stats["p10"], stats["median"], stats["p90"], stats["top_rate"], stats["nll_gap"]]
        for name in sorted({f for s in splits for f in exposure[s]["by_field"]})
        for s in splits
        if (stats := exposure[s]["by_field"].get(name))
    ]
    header = ["field", "split", "mean", "p10", "median", "p90", "ranked first", "NLL gap"]
    return "\n\n".join([intro, overall, markdown_table(header, rows)])


def render_eval_report(
    result: dict[str, Any], title: str, plots: dict[str, Path] | None = None, report_dir: Path | None = None
) -> str:
    """``report.md`` for one evaluated model, from :meth:`~obliviate.evaluate.suite.EvalResult.to_json`.

    Sections: overall metrics (value, standard error and direction per split), per task when there are several,
    the SemEval terms and aggregate, the PII leak rates (per split, field and attack), notes, and the plots.

    Args:
        result: ``{"metrics": [...], "semeval": {...}, "leak": {...}, "notes": [...]}`` and, after ``--attacks``,
            ``"attacks"`` (:mod:`obliviate.report.attacks`); other keys (such as
            per-example rows) are ignored, so generations never reach the report.
        title: the report's heading.
        plots: caption → PNG path; relative paths are kept, absolute ones made relative to ``report_dir``.
        report_dir: the folder ``report.md`` will be written to.
    """
    from obliviate.report.attacks import attack_section  # it draws with this module's tables

    metrics = list(result.get("metrics") or [])
    overall = sorted((m for m in metrics if m.get("task", "all") == "all"), key=lambda m: _split_rank(m["split"]))
    parts = [
        f"# {title}\n",
        "↑ higher is better, ↓ lower is better, on that split (forgetting lowers forget-split scores).\n",
        _section(
            "Overall",
            markdown_table(
                ["metric", "split", "value", "standard error", "better", "what it measures"],
                [_metric_row(m) for m in overall],
            )
            if overall
            else "",
        ),
        _section("Per task", _per_task_table(metrics)),
        _section("SemEval-2025 Task 4", _semeval_section(result.get("semeval") or {})),
        _section("PII leak", _leak_section(result.get("leak") or {})),
        _section("Partial PII leaks", _partial_section(result.get("leak") or {})),
        _section("PII exposure", _exposure_section(result.get("exposure") or {})),
        _section("Attacks", attack_section(result.get("attacks") or [])),
        _section("Notes", _bullets(result.get("notes") or [])),
        _section("Plots", _image_links(plots, report_dir)),
    ]
    return "\n".join(part for part in parts if part)


def render_epochs_report(
    epochs: list[dict[str, Any]],
    best: dict[str, Any] | None,
    title: str,
    plots: dict[str, Path],
    report_dir: Path | None = None,
    attacks: Sequence[dict[str, Any]] = (),
) -> str:
    """Per-epoch table of a run's checkpoints (epoch 0 = before unlearning), the best epoch marked, the attacks on
    the best epoch (``--attacks``) and the plots.

    Args:
        epochs: ``[{"epoch": n, "summary": {"forget/rougeL_recall": v, ...}}, ...]``.
        best: ``{"epoch": n, "rule": ..., "reason": ...}`` or None when no epoch was selected.
        title: the report's heading.
        plots: caption → PNG path (see :func:`render_eval_report`).
        report_dir: the folder the report will be written to.
    """
    from obliviate.report.attacks import attack_section

    ordered = sorted(epochs, key=lambda entry: entry["epoch"])
    best_epoch = best.get("epoch") if best else None
    rows = [
        {
            **entry.get("summary", {}),
            "epoch": f"{entry['epoch']} {BEST_MARK}" if entry["epoch"] == best_epoch else entry["epoch"],
        }
        for entry in ordered
    ]
    table = columns_table([Column("epoch", "epoch"), *metric_columns("columns", rows)], rows)
    selection = ""
    if best:
        selection = f"{BEST_MARK} best epoch: **{best_epoch}**"
        if best.get("rule"):
            selection += f" (rule: {_cell(best['rule'])})"
        if best.get("reason"):
            selection += f"; {_cell(best['reason'])}"
    parts = [
        f"# {title}\n",
        _section("Per epoch", table + (f"\n\n{selection}" if selection else "")),
        _section(f"Attacks on epoch {best_epoch}", attack_section(attacks)),
        _section("Plots", _image_links(plots, report_dir)),
    ]
    return "\n".join(part for part in parts if part)


def render_demo_report(
    rows: list[dict[str, Any]],
    columns: Sequence[Column | tuple[str, str]],
    plots: dict[str, Path],
    notes: list[str],
    title: str,
    goals: list[dict[str, Any]] | None = None,
    report_dir: Path | None = None,
    setup: list[str] | None = None,
    sections: dict[str, str] | None = None,
) -> str:
    """The demo's side-by-side report: one row per model (target, oracle, each method), plots, goals, notes.

    Args:
        rows: one flat dict per model; ``row["model"]`` names it (first column, unless ``columns`` has "model").
        columns: :class:`~obliviate.report.columns.Column` objects, or ``(key, header)`` pairs (headers of known
            ``split/metric`` keys then get their direction arrow); a missing key shows as "–".
        plots: caption → PNG path (see :func:`render_eval_report`).
        notes: already-redacted lines shown at the end.
        title: the report's heading.
        goals: ``{"goal", "value", "target", "holds"}`` per goal, with ``margin``, ``margin_se`` and ``clear`` where
            measured (:func:`obliviate.report.demo.goals`), rendered as a table with a count of those held and of
            the verdicts within sampling noise.
        report_dir: the folder the report will be written to.
        setup: lines on the models and references compared against (how memorised the target is, which oracle,
            what stands in for a missing holdout), shown first.
        sections: title → markdown body of further sections, shown after the summary (the attacks).
    """
    shown = [c if isinstance(c, Column) else metric_column(*c) for c in columns]
    if "model" not in [c.key for c in shown]:
        shown = [Column("model", "model"), *shown]
    summary = columns_table(shown, rows)
    goals_text = ""
    if goals:
        held = sum(bool(goal.get("holds")) for goal in goals)
        goals_text = markdown_table(
            ["goal", "value", "target", "holds", "margin ± SE", f"clear of {CLEAR:g} SE"],
            [
                [g.get("goal"), g.get("value"), g.get("target"), g.get("holds"), _margin(g), g.get("clear")]
                for g in goals
            ],
        )
        if counts := sorted({g["no_event_people"] for g in goals if g.get("no_event_people") is not None}):
            goals_text += (
                f"\n\n{NO_EVENT} both models' rate is 0 (or 1) on every unit, so the plug-in error is 0; the error"
                f" shown is the Agresti–Coull one of such a count among {' or '.join(map(str, counts))} people, a"
                " person one draw (`docs/METRICS.md`, *Standard errors*)."
            )
        noise = noise_words(goals)
        goals_text += f"\n\n{held} of {len(goals)} goals hold" + (f"; {noise}." if noise else ".")
    parts = [
        f"# {title}\n",
        _section("Setup", _bullets(setup or [])),
        _section("Summary", summary),
        *(_section(name, body) for name, body in (sections or {}).items()),
        _section("Plots", _image_links(plots, report_dir)),
        _section("Goals", goals_text),
        _section("Notes", _bullets(notes)),
    ]
    return "\n".join(part for part in parts if part)


NO_EVENT = "†"
"""Marks a goal's error taken from its count (:func:`~obliviate.evaluate.uncertainty.no_event_se`)."""


def noise_words(goal_rows: list[dict[str, Any]]) -> str:
    """How many verdicts lie within :data:`CLEAR` standard errors of their bound, in words ("" where no goal has a
    standard error)."""
    known = [g for g in goal_rows if g.get("clear") is not None]
    if not known:
        return ""
    close = sum(not g["clear"] for g in known)
    return f"{close} of {len(known)} verdicts lie within {CLEAR:g} standard errors of their bound"


def _margin(goal: dict[str, Any]) -> str:
    """A goal's margin inside its bound (negative: outside) and its standard error: ``+0.012 ± 0.041``."""
    margin, se = goal.get("margin"), goal.get("margin_se")
    if margin is None:
        return "–"
    mark = NO_EVENT if goal.get("no_event_people") is not None else ""
    return f"{margin:+.3f}" + ("" if se is None else f" ± {se:.3f}{mark}")


def write_report(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` (UTF-8, ending in a newline) atomically (:func:`obliviate.io.write_text_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text if text.endswith("\n") else text + "\n")
    return path
