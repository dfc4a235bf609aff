"""The demo / benchmark report: every method against the target and the oracle, with plots and goals."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.evaluate.uncertainty import CLEAR, difference_se, no_event_se, paired_se, uniform_rate_people
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
    Column("compute_vs_oracle", "compute / oracle"),
)


ORACLE = "oracle (retrain)"
"""The oracle's row name in the summary (``results.json``); a run without an oracle has no such row."""

STDERR = "stderr"
"""A summary row's ``"split/metric"`` → standard error of its value (empty in a file written before they were
measured)."""

UNITS = "units"
"""A summary row's ``"split/metric"`` → the units behind its value (:data:`~obliviate.evaluate.uncertainty.Units`):
what lets a goal pair two models evaluated on the same rows."""


def summary_rows(outcome: PipelineOutcome) -> list[dict[str, Any]]:
    """One flat row per model: target (epoch 0), the oracle (where there is one), then each method's best epoch."""

    def cost(tokens: int | None, compute: float | None) -> dict[str, float | None]:
        """The two cost columns: trained tokens and compute, each over the oracle's (None where either is unknown)."""

        def ratio(value: float | None, oracle: float | None) -> float | None:
            return value / oracle if value is not None and oracle else None

        return {
            "tokens_vs_oracle": ratio(tokens, outcome.oracle_tokens),
            "compute_vs_oracle": ratio(compute, outcome.oracle_compute),
        }

    target = outcome.target_result
    rows = [
        {
            "model": "target",
            **target.summary(),
            **cost(outcome.target_tokens, outcome.target_compute),
            STDERR: target.stderrs(),
            UNITS: target.units,
        }
    ]
    if (oracle := outcome.oracle_result) is not None:
        cost_of = cost(outcome.oracle_tokens, outcome.oracle_compute)
        rows.append({"model": ORACLE, **oracle.summary(), **cost_of, STDERR: oracle.stderrs(), UNITS: oracle.units})
    for run in outcome.runs:
        best = run.best_epoch
        rows.append(
            {
                "model": run.method,
                **best.summary,
                "epoch": best.epoch,
                "wall_seconds": run.wall_seconds,
                **cost(run.tokens, run.compute),
                STDERR: best.stderr,
                UNITS: best.units,
            }
        )
    return rows


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each stated relative to the oracle (and the target for retain), per method.

    Each goal gives its ``value``, its reference (``target``), whether it ``holds``, its ``margin`` (how far the
    value is inside its bound; negative: outside), the margin's standard error ``margin_se`` (from the per-unit
    differences where both models were evaluated on the same units, else from the two values' errors taken as
    independent; None where either was not measured) and whether the verdict is ``clear`` of sampling noise
    (:data:`~obliviate.evaluate.uncertainty.CLEAR`). Where a rate (:data:`RATES`) is 0 (or 1) on every unit of both
    models, so that the paired error is 0, the error is the Agresti–Coull one of such a count among the method's
    people (:func:`~obliviate.evaluate.uncertainty.no_event_se`), and ``no_event_people`` gives their number. A
    goal is left out where its value or reference was not measured: without an oracle every goal against it (the
    report says so), without a holdout the MIA goal."""
    target = rows[0]
    oracle = next((r for r in rows if r["model"] == ORACLE), {})
    # (goal, metric key, reference row, margin from (value, reference), d margin / d reference)
    checks = [
        ("forget leak rate ≤ oracle + 1 pp", "forget/leak_rate", oracle, lambda v, o: o + 0.01 - v, 1.0),
        ("forget ROUGE-L within 0.05 of oracle", "forget/rougeL_recall", oracle, lambda v, o: 0.05 - abs(v - o), 1.0),
        ("retain ROUGE-L ≥ 95 % of target", "retain/rougeL_recall", target, lambda v, t: v - 0.95 * t, 0.95),
        ("retain EM ≥ 95 % of target", "retain/exact_match", target, lambda v, t: v - 0.95 * t, 0.95),
        ("MIA AUC within 0.05 of oracle", "forget/mia_auc_loss", oracle, lambda v, o: 0.05 - abs(v - o), 1.0),
        # partial leaks: digits reproduced in place, no more than a model that never saw them
        ("digits in place ≤ oracle + 1 pp", "forget/digits_in_place", oracle, lambda v, o: o + 0.01 - v, 1.0),
    ]
    out = []
    for row in [r for r in rows[1:] if r["model"] != ORACLE]:
        for goal, key, reference_row, margin_of, weight in checks:
            value, reference = row.get(key), reference_row.get(key)
            if value is None or reference is None:
                continue
            margin = float(margin_of(value, reference))
            se = paired_se(_units(row, key), _units(reference_row, key), weight)
            if se is None:  # not measured on the same units: the two errors as independent ones
                se = difference_se((1.0, _stderr(row, key)), (weight, _stderr(reference_row, key)))
            people = _uniform_rate(row, reference_row, key)
            if people is not None:  # the plug-in error is 0 (to round-off): the count of people says more
                se = no_event_se(people)
            out.append(
                {
                    "goal": f"{row['model']}: {goal}",
                    "value": value,
                    "target": reference,
                    "holds": margin >= 0,  # a value on its bound holds (the sign of a float difference is exact)
                    "margin": margin,
                    "margin_se": se,
                    # an error of 0 that no count explains says nothing: no verdict on noise then
                    "clear": None if se is None or se <= 1e-12 else abs(margin) >= CLEAR * se,
                    **({"no_event_people": people} if people is not None else {}),
                }
            )
    return out


RATES = ("forget/leak_rate", "retain/exact_match")
"""The goals' metrics that are rates of 0/1 units, whose error a count of 0 (or all) can stand in for."""


def _uniform_rate(row: dict[str, Any], reference_row: dict[str, Any], key: str) -> int | None:
    """The method's number of people where ``key`` is a rate that is 0 (or 1) on every unit for both models, on the
    same units: every per-unit difference is then the same, and the paired error 0. None otherwise."""
    found, other = _units(row, key), _units(reference_row, key)
    if key not in RATES or uniform_rate_people(other) is None or not found:
        return None
    return uniform_rate_people(found) if set(found.get("all", ())) == set(other["all"]) else None


def _stderr(row: dict[str, Any], key: str) -> float | None:
    return (row.get(STDERR) or {}).get(key)


def _units(row: dict[str, Any], key: str) -> dict[str, Any] | None:
    return (row.get(UNITS) or {}).get(key)


def write_demo_report(outcome: PipelineOutcome, out_dir: Path, title: str = "obliviate demo") -> Path:
    """``report.md``, ``results.json`` and the PNG plots in ``out_dir``."""
    rows = summary_rows(outcome)
    plots = {name: path.relative_to(out_dir) for name, path in _plots(outcome, rows, out_dir).items()}
    goal_rows = goals(rows)
    notes = _notes(outcome)
    refs = references(outcome)
    setup = setup_lines(outcome, refs)
    attacks, sections = _attacks(outcome, out_dir, plots, goal_rows)
    columns = [Column("model", "model"), *metric_columns("columns", rows), *RUN_COLUMNS]
    text = render_demo_report(rows, columns, plots, notes, title, goal_rows, setup=setup, sections=sections)
    write_report(text, out_dir / "report.md")
    write_json(
        out_dir / "results.json",
        {
            "summary": rows,
            "goals": goal_rows,
            **attacks,
            "runs": [run.to_json() for run in outcome.runs],
            "config": dataclasses.asdict(outcome.config),
            "memorisation": outcome.memorisation,
            "references": refs,
            "setup": setup,
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
    oracle = next((r for r in rows if r["model"] == ORACLE), {})
    levels = {"oracle forget": _oracle_level(outcome, oracle)} if "forget/rougeL_recall" in oracle else None
    plots = epoch_plots(out_dir, curves, metrics_files, levels)
    methods = [r for r in rows[1:] if r["model"] != ORACLE]
    points = {r["model"]: (r.get("forget/rougeL_recall"), r.get("retain/rougeL_recall")) for r in methods}
    named = {**{r["model"]: r for r in methods}, "target": rows[0], **({"oracle": oracle} if oracle else {})}
    errors = {
        name: (_stderr(row, "forget/rougeL_recall"), _stderr(row, "retain/rougeL_recall"))
        for name, row in named.items()
    }
    plots["Forget against retain ROUGE-L recall (best epoch per method)"] = plot_tradeoff(
        {k: v for k, v in points.items() if None not in v},
        out_dir / "tradeoff.png",
        target=(rows[0].get("forget/rougeL_recall"), rows[0].get("retain/rougeL_recall")),
        oracle=(oracle.get("forget/rougeL_recall"), oracle.get("retain/rougeL_recall")) if oracle else None,
        errors=errors,
    )
    checks = {run.method: run.stop_checks or [] for run in outcome.runs}
    if any(checks.values()):
        plots["Forget exposure at each stop-rule check, against the never-seen band"] = plot_stop_checks(
            checks, out_dir / "stop_checks.png"
        )
    return plots


def _oracle_level(outcome: PipelineOutcome, oracle: dict[str, Any]) -> Level:
    """The oracle's forget ROUGE-L recall with the standard error of that mean over its evaluated forget rows (a
    person's rows one draw): the plots draw its 95 % interval as the band a method should reach."""
    stderr = outcome.oracle_result.stderrs().get("forget/rougeL_recall")  # a person's rows one draw
    if stderr is None:
        rows = [r.get("rougeL_recall") for r in outcome.oracle_result.per_example if r.get("split") == "forget"]
        spread = mean_se(rows)
        stderr = spread.se if spread is not None else None
    return Level(oracle["forget/rougeL_recall"], stderr)


def _notes(outcome: PipelineOutcome) -> list[str]:
    select = outcome.config.select
    chosen = (
        "each method's row is its run's last checkpoint: where the stop rule (or the step budget) ended it"
        if select == "last"
        else f"best epoch per method chosen by `{select}` among epochs whose retain ROUGE-L recall (and, under "
        "`holdout_gap`, retain EM) stays ≥ 90 % of the target's"
    )
    runs_line = "; ".join(
        f"{r.method}: lr {r.lr:.3g}"
        + (
            f" (its range test's put-back trials {r.lr_probe_tokens / r.tokens:.0%} of the run's tokens)"
            if r.lr_probe_tokens
            else ""
        )
        + f", {r.steps} steps, "
        + (f"stopped ({r.stopped})" if r.stopped else f"ended by its {r.ended}")
        for r in outcome.runs
        if r.lr is not None
    )
    has_oracle, has_holdout = outcome.oracle_result is not None, bool(outcome.data_dirs.get("holdout"))
    return [
        chosen,
        *([f"learning rates (range test) and ends: {runs_line}"] if runs_line else []),
        *(
            [
                "forget quality: KS-test p-value of per-example forget answer NLL against the oracle (no paraphrased "
                "or perturbed answers exist in this data)",
                "tokens / oracle: tokens trained on by the unlearning run (forget + paired retain batches, its "
                "range test's trial steps included: the chosen trial's are the run's first steps, the others' are "
                "put back) over the tokens of retraining the oracle",
                "compute / oracle: the same with every token read by a pass that trains nothing (the frozen "
                "reference, the stop rule's checks and starting measurement, the range test's measurements, the "
                "fine-tuning's memorisation checks) counted at a third of a trained token (a forward pass's 2N "
                "of the 6N FLOPs per token of a training step), over the oracle's, counted alike",
            ]
            if has_oracle
            else []
        ),
        *(
            ["MIA AUC: LOSS attack, forget people (members) against holdout people (never trained on)"]
            if has_holdout
            else []
        ),
        f"wall time of the whole pipeline: {outcome.wall_seconds:.0f}s; a method's wall s covers its training and "
        f"its per-epoch evaluations, with {outcome.workers} job(s) side by side on the machine",
        *(outcome.oracle_result or outcome.target_result).notes,
    ]


def references(outcome: PipelineOutcome) -> dict[str, Any]:
    """What each comparison was made against: the oracle (trained, given or none) and the never-seen reference of
    membership inference, exposure and the stop rule (the holdout people, or what stands in for them)."""
    from obliviate.evaluate.exposure import chance_exposure

    trained = outcome.trained.get("oracle", outcome.oracle_dir is not None)
    oracle = "none" if outcome.oracle_dir is None else ("trained" if trained else "given")
    holdout = outcome.data_dirs.get("holdout")
    k = outcome.config.exposure_k
    chance = f"the chance level of a uniform rank among K + 1 = {k + 1} values ({chance_exposure(k):.2f} bits)"
    return {
        "oracle": oracle,
        "oracle_dir": outcome.oracle_dir,
        "holdout_dir": holdout,
        "mia": "forget people (members) against holdout people (non-members)"
        if holdout
        else "not computed: no holdout people to serve as non-members",
        "exposure": "the holdout people's exposure (people never trained on)" if holdout else chance,
        "stop_rule": "the holdout people's exposure under the target" if holdout else chance,
        "leak_floor": "the holdout people's leak rate" if holdout else "none: no holdout people",
    }


def setup_lines(outcome: PipelineOutcome, refs: dict[str, Any]) -> list[str]:
    """The report's first section: how memorised the target is, which oracle, and the never-seen references."""
    target_source = "fine-tuned by this run on forget + retain" if outcome.trained.get("target") else "given"
    lines = [f"target ({target_source}): {_memorised_line(outcome.memorisation.get('target'))}"]
    if refs["oracle"] == "none":
        lines.append(
            "oracle: none (neither --oracle nor --train_oracle): forget quality, PrivLeak, the oracle's row and band, "
            "and every goal against the oracle are not computed; the goals against the target still are"
        )
    else:
        how = "fine-tuned by this run on retain alone" if refs["oracle"] == "trained" else "given"
        memo = _memorised_line(outcome.memorisation.get("oracle"), "retain", "retain goals against it are too easy")
        lines.append(f"oracle ({how}): {memo}")
    if not refs["holdout_dir"]:
        lines += [
            f"no holdout set: membership inference is {refs['mia']}; the MIA goal is not computed",
            f"no holdout set: the never-seen reference of exposure and of the stop rule is {refs['exposure']}; "
            "no leak floor is measured",
        ]
    return lines


def _memorised_line(
    memo: dict[str, Any] | None,
    data: str = "forget + retain",
    consequence: str = "comparisons against it understate what unlearning must remove",
) -> str:
    """``train exact match 0.97, ROUGE-L recall 0.99 on 64 rows: memorised (≥ 0.95) after 23 of 60 epochs``."""
    if not memo:
        return "memorisation not measured"
    from obliviate.evaluate.memorised import describe

    scores = describe(memo) or "no qa or completion rows to score"
    budget = memo.get("budget")
    epochs = memo.get("epochs")
    trained = f" after {epochs}{f' of a budget of {budget}' if budget else ''} epochs" if epochs is not None else ""
    verdict = (
        f"memorised (≥ {memo['threshold']:g}){trained}"
        if memo.get("memorised")
        else f"NOT memorised (< {memo['threshold']:g}){trained}: {consequence}; raise the epoch budget or the "
        "learning rate"
    )
    return f"greedy answers on {memo.get('rows')} {data} rows: {scores}; {verdict}"
