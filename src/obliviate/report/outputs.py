"""Write what an evaluation produced: results.json, per_example.jsonl, report.md and the plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from obliviate.evaluate.results import AttackResult, EpochEval, EvalResult
from obliviate.io import write_text_atomic
from obliviate.report.columns import metric_keys
from obliviate.report.render import render_epochs_report, render_eval_report, write_report

ROUGE_KEYS = metric_keys("rougeL_recall")
LEAK_KEYS = metric_keys("leak_rate")
ATTACK_PLOT = "attack_leak_rate.png"
ATTACK_PLOT_TITLE = "Forget leak rate before and after each attack"


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=float))


def write_evaluation(
    out_dir: Path,
    result: EvalResult,
    title: str,
    extra: dict[str, Any] | None = None,
    attacks: Sequence[AttackResult] = (),
) -> None:
    """One evaluated model: ``results.json`` (with ``attacks`` after ``--attacks``), ``per_example.jsonl``,
    ``report.md`` and, with attacks, the leak-rate plot ``attack_leak_rate.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**(extra or {}), **result.to_json()}
    plots = {}
    if attacks:
        from obliviate.report.attacks import plot_attack_leaks  # matplotlib: imported only to draw

        data["attacks"] = [a.to_json() for a in attacks]
        plots[ATTACK_PLOT_TITLE] = plot_attack_leaks(data["attacks"], out_dir / ATTACK_PLOT).relative_to(out_dir)
    write_json(out_dir / "results.json", data)
    write_text_atomic(out_dir / "per_example.jsonl", "".join(json.dumps(r) + "\n" for r in result.per_example))
    write_report(render_eval_report(data, title, plots), out_dir / "report.md")


def epoch_plots(
    out_dir: Path,
    curves: dict[str, list[tuple[int, dict[str, float]]]],
    metrics_files: dict[str, Path],
    references: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Loss, ROUGE-L recall and leak rate per epoch, as PNGs in ``out_dir``."""
    from obliviate.report.plots import plot_loss_per_epoch, plot_metric_per_epoch  # matplotlib: only to draw

    plots: dict[str, Path] = {}
    files = {k: v for k, v in metrics_files.items() if v.is_file()}
    if files:
        plots["Forget and retain loss per epoch"] = plot_loss_per_epoch(files, out_dir / "loss_per_epoch.png")
    plots["ROUGE-L recall per epoch (forget solid, retain dashed)"] = plot_metric_per_epoch(
        curves,
        ROUGE_KEYS,
        out_dir / "rougeL_per_epoch.png",
        "ROUGE-L recall per epoch",
        "ROUGE-L recall",
        reference_lines=references,
    )
    if any(k in s for points in curves.values() for _, s in points for k in LEAK_KEYS):
        plots["PII leak rate per epoch"] = plot_metric_per_epoch(
            curves, LEAK_KEYS, out_dir / "leak_rate_per_epoch.png", "PII leak rate per epoch", "leak rate"
        )
    return plots


def write_checkpoint_evaluation(
    out_dir: Path,
    epochs: list[EpochEval],
    best: dict[str, Any],
    run_dir: Path,
    title: str,
    attacks: Sequence[AttackResult] = (),
) -> None:
    """``--checkpoints``: per-epoch results, plots, ``best.json`` and a report with the per-epoch table (and the
    attacks on the best epoch, in ``results.json["attacks"]``, the report and ``attack_leak_rate.png``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        if epoch.result is not None:
            write_evaluation(out_dir / f"epoch-{epoch.epoch}", epoch.result, f"{title}: epoch {epoch.epoch}")
    slim = [e.to_json() for e in epochs]
    found = [a.to_json() for a in attacks]
    write_json(out_dir / "results.json", {"epochs": slim, "best": best, **({"attacks": found} if found else {})})
    write_json(out_dir / "best.json", best)
    curves = {"run": [(e.epoch, e.summary) for e in epochs]}
    plots = epoch_plots(out_dir, curves, {"run": run_dir / "metrics.jsonl"})
    if found:
        from obliviate.report.attacks import plot_attack_leaks

        plots[ATTACK_PLOT_TITLE] = plot_attack_leaks(found, out_dir / ATTACK_PLOT)
    plots = {name: path.relative_to(out_dir) for name, path in plots.items()}
    write_report(render_epochs_report(slim, best, title, plots, attacks=found), out_dir / "report.md")
