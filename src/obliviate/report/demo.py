"""The demo / benchmark report: every method against the target and the oracle, with plots and goals."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.report.columns import Column, metric_columns
from obliviate.report.outputs import epoch_plots, write_json
from obliviate.report.plot_parts import Level, mean_se
from obliviate.report.plots import plot_stop_checks, plot_tradeoff
from obliviate.report.render import render_demo_report, write_report

if TYPE_CHECKING:
    from obliviate.pipeline import PipelineOutcome

RUN_COLUMNS = (  # after the metric columns, which come from obliviate.evaluate.scores.METRICS
    Column("epoch", "best epoch"),
    Column("wall_seconds", "wall s"),
    Column("tokens_vs_oracle", "tokens / oracle"),
)


def summary_rows(outcome: PipelineOutcome) -> list[dict[str, Any]]:
    """One flat row per model: target (epoch 0), oracle, then each method's best epoch."""
    oracle_tokens = outcome.oracle_tokens
    rows = [
        {
            "model": "target",
            **outcome.target_result.summary(),
            "tokens_vs_oracle": outcome.target_tokens / oracle_tokens,
        },
        {"model": "oracle (retrain)", **outcome.oracle_result.summary(), "tokens_vs_oracle": 1.0},
    ]
    for run in outcome.runs:
        best = run.best_epoch
        rows.append(
            {
                "model": run.method,
                **best.summary,
                "epoch": best.epoch,
                "wall_seconds": run.wall_seconds,
                "tokens_vs_oracle": run.tokens / oracle_tokens,
            }
        )
    return rows


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each stated relative to the oracle (and the target for retain), per method."""
    target, oracle = rows[0], rows[1]
    out = []
    for row in rows[2:]:
        checks = [
            (
                "forget leak rate ≤ oracle + 1 pp",
                row.get("forget/leak_rate"),
                oracle.get("forget/leak_rate"),
                lambda v, o: v <= o + 0.01,
            ),
            (
                "forget ROUGE-L within 0.05 of oracle",
                row.get("forget/rougeL_recall"),
                oracle.get("forget/rougeL_recall"),
                lambda v, o: abs(v - o) <= 0.05,
            ),
            (
                "retain ROUGE-L ≥ 95 % of target",
                row.get("retain/rougeL_recall"),
                target.get("retain/rougeL_recall"),
                lambda v, t: v >= 0.95 * t,
            ),
            (
                "retain EM ≥ 95 % of target",
                row.get("retain/exact_match"),
                target.get("retain/exact_match"),
                lambda v, t: v >= 0.95 * t,
            ),
            (
                "MIA AUC within 0.05 of oracle",
                row.get("forget/mia_auc_loss"),
                oracle.get("forget/mia_auc_loss"),
                lambda v, o: abs(v - o) <= 0.05,
            ),
        ]
        if row.get("forget/digits_in_place") is not None and oracle.get("forget/digits_in_place") is not None:
            checks.append(  # partial leaks: digits reproduced in place, no more than a model that never saw them
                (
                    "digits in place ≤ oracle + 1 pp",
                    row.get("forget/digits_in_place"),
                    oracle.get("forget/digits_in_place"),
                    lambda v, o: v <= o + 0.01,
                )
            )
        for goal, value, reference, test in checks:
            holds = value is not None and reference is not None and bool(test(value, reference))
            out.append({"goal": f"{row['model']}: {goal}", "value": value, "target": reference, "holds": holds})
    return out


def write_demo_report(outcome: PipelineOutcome, out_dir: Path, title: str = "obliviate demo") -> Path:
    """``report.md``, ``results.json`` and the PNG plots in ``out_dir``."""
    rows = summary_rows(outcome)
    plots = {name: path.relative_to(out_dir) for name, path in _plots(outcome, rows, out_dir).items()}
    goal_rows = goals(rows)
    notes = _notes(outcome)
    attacks, sections = _attacks(outcome, out_dir, plots, goal_rows)
    columns = [Column("model", "model"), *metric_columns("columns", rows), *RUN_COLUMNS]
    text = render_demo_report(rows, columns, plots, notes, title, goal_rows, sections=sections)
    write_report(text, out_dir / "report.md")
    write_json(
        out_dir / "results.json",
        {
            "summary": rows,
            "goals": goal_rows,
            **attacks,
            "runs": [run.to_json() for run in outcome.runs],
            "config": dataclasses.asdict(outcome.config),
            "notes": notes,
            "wall_seconds": outcome.wall_seconds,
            "cached": outcome.cached,
        },
    )
    return out_dir / "report.md"


def _attacks(outcome: PipelineOutcome, out_dir: Path, plots: dict[str, Path], goal_rows: list) -> tuple[dict, dict]:
    """With attacks (:mod:`obliviate.pipeline_attacks`): their goals appended to ``goal_rows``, their plot added to
    ``plots``; returns the ``results.json`` keys and the report's "Attacks" section (both empty without)."""
    if outcome.attacks is None:
        return {}, {}
    from obliviate.report import demo_attacks

    entries = outcome.attacks.entries()
    found = demo_attacks.attack_goals(entries)
    goal_rows.extend(found)
    plots[demo_attacks.PLOT_TITLE] = demo_attacks.plot_pipeline_attacks(
        entries, out_dir / demo_attacks.PLOT
    ).relative_to(out_dir)
    section = demo_attacks.attack_section(outcome.attacks, found, outcome.wall_seconds)
    data = {
        "attacks": entries,
        "attack_seconds": outcome.attacks.wall_seconds,
        "default_method": outcome.attacks.default_method,
    }
    return data, {"Attacks": section}


def _plots(outcome: PipelineOutcome, rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Loss, ROUGE-L and leak rate per epoch, the forget/retain trade-off, and the stop rule's checks."""
    curves = {run.method: [(e.epoch, e.summary) for e in run.epochs] for run in outcome.runs}
    metrics_files = {run.method: Path(run.run_dir) / "metrics.jsonl" for run in outcome.runs}
    oracle = rows[1]
    references = {"oracle forget": _oracle_level(outcome, oracle)} if "forget/rougeL_recall" in oracle else None
    plots = epoch_plots(out_dir, curves, metrics_files, references)
    points = {r["model"]: (r.get("forget/rougeL_recall"), r.get("retain/rougeL_recall")) for r in rows[2:]}
    plots["Forget against retain ROUGE-L recall (best epoch per method)"] = plot_tradeoff(
        {k: v for k, v in points.items() if None not in v},
        out_dir / "tradeoff.png",
        target=(rows[0].get("forget/rougeL_recall"), rows[0].get("retain/rougeL_recall")),
        oracle=(oracle.get("forget/rougeL_recall"), oracle.get("retain/rougeL_recall")),
    )
    checks = {run.method: run.stop_checks or [] for run in outcome.runs}
    if any(checks.values()):
        plots["Forget exposure at each stop-rule check, against the never-seen band"] = plot_stop_checks(
            checks, out_dir / "stop_checks.png"
        )
    return plots


def _oracle_level(outcome: PipelineOutcome, oracle: dict[str, Any]) -> Level:
    """The oracle's forget ROUGE-L recall with the standard error of that mean over its evaluated forget rows: the
    plots draw its 95 % interval as the band a method should reach."""
    rows = [r.get("rougeL_recall") for r in outcome.oracle_result.per_example if r.get("split") == "forget"]
    spread = mean_se(rows)
    return Level(oracle["forget/rougeL_recall"], spread.se if spread is not None else None)


def _notes(outcome: PipelineOutcome) -> list[str]:
    select = outcome.config.select
    chosen = (
        "each method's row is its run's last checkpoint: where the stop rule (or the step budget) ended it"
        if select == "last"
        else f"best epoch per method chosen by `{select}` among epochs whose retain ROUGE-L recall (and, under "
        "`holdout_gap`, retain EM) stays ≥ 90 % of the target's"
    )
    runs_line = "; ".join(
        f"{r.method}: lr {r.lr:.3g}, {r.steps} steps, "
        + (f"stopped ({r.stopped})" if r.stopped else "step budget spent")
        for r in outcome.runs
        if r.lr is not None
    )
    return [
        chosen,
        *([f"learning rates (range test) and ends: {runs_line}"] if runs_line else []),
        "forget quality: KS-test p-value of per-example forget answer NLL against the oracle (no paraphrased or "
        "perturbed answers exist in this data)",
        "MIA AUC: LOSS attack, forget people (members) against holdout people (never trained on)",
        "tokens / oracle: tokens processed by the unlearning run (forget + paired retain batches) over the tokens of "
        "retraining the oracle",
        f"wall time of the whole pipeline: {outcome.wall_seconds:.0f}s; a method's wall s covers its training and "
        f"its per-epoch evaluations, with {outcome.workers} job(s) side by side on the machine",
        *outcome.oracle_result.notes,
    ]
