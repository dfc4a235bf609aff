"""Report layer: PNG plots from hand-made inputs, markdown tables, and what each report shows (and never shows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from obliviate.errors import DataError
from obliviate.report import plots, render

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, size: tuple[int, int] = (600, 400)) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        # 6 × 4 inches at 100 dpi; small multiples 8 in wide, 1.2 + 2.3 in per row of three panels
        assert image.size == size
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    """What an axes draws as lines: legend label → (x values, y values), rounded to 9 places (means of floats)."""
    return {
        line.get_label(): (
            [round(float(x), 9) for x in line.get_xdata()],
            [round(float(y), 9) for y in line.get_ydata()],
        )
        for line in ax.get_lines()
        if not line.get_label().startswith("_")  # a band's centre line stays out of the legend
    }


def _points(ax) -> dict[str, list[tuple[float, float]]]:
    """What an axes draws as scatter collections: legend label → its (x, y) points."""
    return {c.get_label(): [tuple(round(v, 9) for v in xy) for xy in c.get_offsets().tolist()] for c in ax.collections}


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_epoch_means_averages_steps_per_epoch(tmp_path):
    path = _write_jsonl(
        tmp_path / "metrics.jsonl",
        [
            {"step": 1, "epoch": 1, "loss": -1.0, "forget_nll": 1.0, "retain_nll": 0.5},
            {"step": 2, "epoch": 1, "loss": -3.0, "forget_nll": 3.0, "retain_nll": 0.7},
            {"step": 3, "epoch": 2, "loss": -5.0, "forget_nll": 5.0},
        ],
    )
    means = plots.epoch_means(path)
    assert means[1] == pytest.approx({"loss": -2.0, "forget_nll": 2.0, "retain_nll": 0.6})
    assert means[2] == pytest.approx({"loss": -5.0, "forget_nll": 5.0})


def test_plot_loss_per_epoch_with_rmu_and_loss_only_runs(tmp_path):
    ga_kl = _write_jsonl(
        tmp_path / "ga_kl.jsonl",
        [{"step": s, "epoch": 1 + s // 3, "loss": -s, "forget_nll": s, "retain_nll": 1.0} for s in range(6)],
    )
    rmu = _write_jsonl(
        tmp_path / "rmu.jsonl",
        [{"step": s, "epoch": 1 + s // 3, "loss": 2.0, "rmu_forget": 1.5, "rmu_retain": 0.1} for s in range(6)],
    )
    finetune = _write_jsonl(tmp_path / "ft.jsonl", [{"step": 1, "epoch": 1, "loss": 3.2}])
    runs = {"ga_kl": ga_kl, "rmu": rmu, "finetune": finetune}
    out = plots.plot_loss_per_epoch(runs, tmp_path / "png" / "loss.png")
    assert out == tmp_path / "png" / "loss.png"
    _assert_png(out, (800, 350))
    panels = plots.draw_loss_per_epoch(runs).axes
    assert [ax.get_title() for ax in panels] == ["ga_kl", "rmu", "finetune"]  # one panel per method
    # ga_kl: steps 0-2 are epoch 1 (forget NLL 0, 1, 2: mean 1), steps 3-5 epoch 2 (mean 4); RMU shows its own
    # terms; the fine-tuning run logged only its loss, which is its forget (solid) line.
    ga_kl_ax, rmu_ax, finetune_ax = panels
    assert _lines(ga_kl_ax) == {"forget_nll": ([1, 2], [1.0, 4.0]), "retain_nll": ([1, 2], [1.0, 1.0])}
    assert _lines(rmu_ax) == {"rmu_forget": ([1, 2], [1.5, 1.5]), "rmu_retain": ([1, 2], [0.1, 0.1])}
    assert _lines(finetune_ax) == {"loss": ([1], [3.2])}
    assert [line.get_linestyle() for line in ga_kl_ax.get_lines()] == ["-", "--"]
    assert ga_kl_ax.get_ylim()[0] == 0  # a non-negative loss starts at 0
    assert not any(_texts(ax) for ax in panels)


def test_plot_loss_per_epoch_says_when_a_panel_has_nothing(tmp_path):
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"step": 1, "epoch": 1, "note": "x"}])
    (ax,) = plots.draw_loss_per_epoch({"ga": empty}).axes
    assert _lines(ax) == {} and _texts(ax) == ["no loss logged"]


def test_plot_loss_per_epoch_rejects_missing_and_bad_files(tmp_path):
    with pytest.raises(DataError, match="metrics file not found"):
        plots.plot_loss_per_epoch({"ga": tmp_path / "nope.jsonl"}, tmp_path / "loss.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "epoch": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        plots.plot_loss_per_epoch({"ga": bad}, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def _band(ax) -> tuple[float, float]:
    (patch,) = ax.patches
    ys = [y for _, y in patch.get_path().transformed(patch.get_patch_transform()).vertices]
    return min(ys), max(ys)


def test_plot_metric_per_epoch_draws_one_panel_per_method_with_the_oracle_band(tmp_path):
    curves = {
        "ga": [
            (2, {"forget/rougeL_recall": 0.3, "retain/rougeL_recall": 0.7}),  # out of order: drawn by epoch
            (0, {"forget/rougeL_recall": 0.9, "retain/rougeL_recall": 0.9}),
            (1, {"forget/rougeL_recall": 0.5}),
        ],  # retain missing at epoch 1
        "npo": [(1, {"forget/rougeL_recall": 0.6, "retain/rougeL_recall": None})],
        "rmu": [(1, {"forget/rougeL_recall": 0.4})],
        "simnpo": [(1, {"forget/rougeL_recall": 0.35})],
    }
    keys = ["forget/rougeL_recall", "retain/rougeL_recall", "holdout/rougeL_recall"]  # no holdout: left out
    reference = {"oracle forget": (0.48, 0.05)}
    out = plots.plot_metric_per_epoch(
        curves, keys, tmp_path / "rouge.png", title="ROUGE-L", ylabel="recall", reference_lines=reference
    )
    _assert_png(out, (800, 580))  # two rows of panels
    fig = plots.draw_metric_per_epoch(curves, keys, "ROUGE-L", "recall", reference)
    assert [ax.get_title() for ax in fig.axes] == ["ga", "npo", "rmu", "simnpo"]  # one axes per method, no spare
    ga, npo = fig.axes[:2]
    assert _lines(ga) == {"forget": ([0, 1, 2], [0.9, 0.5, 0.3]), "retain": ([0, 2], [0.9, 0.7])}
    assert _lines(npo) == {"forget": ([1], [0.6])}
    styles = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in ga.get_lines()}
    assert styles["forget"] == ("C0", "-") and styles["retain"] == ("C1", "--")  # the same key, the same look
    for ax in fig.axes:  # the oracle's 95 % interval on every panel: 0.48 ± 1.96 x 0.05
        assert _band(ax) == pytest.approx((0.48 - 0.098, 0.48 + 0.098))
        assert ax.get_ylim() == pytest.approx((-0.03, 1.03))  # a recall shows its whole [0, 1] range
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "forget",
        "retain",
        "oracle forget 0.48 ± 0.098 (95 % interval)",
    ]
    assert fig.texts[-1].get_text() == "ROUGE-L (epoch 0: the model before unlearning)"


def test_a_level_without_its_standard_error_is_a_thin_band_and_says_so():
    curves = {"ga": [(0, {"forget/leak_rate": 1.0}), (1, {"forget/leak_rate": 0.2})]}
    fig = plots.draw_metric_per_epoch(curves, ["forget/leak_rate"], "leak", "rate", {"oracle": 0.3})
    low, high = _band(fig.axes[0])
    assert low < 0.3 < high and high - low < 0.01
    (legend,) = fig.legends
    assert "oracle 0.3 (sampling error unknown: thin band)" in [t.get_text() for t in legend.get_texts()]


def test_mean_se_is_the_standard_error_of_the_mean():
    from obliviate.report.plot_parts import mean_se

    level = mean_se([0.0, 1.0, 1.0, None, 0.0])  # sample sd 0.577, n 4
    assert level.value == pytest.approx(0.5) and level.se == pytest.approx(0.57735 / 2, rel=1e-4)
    assert mean_se([0.4]).se is None and mean_se([]) is None


def test_plots_overwrite_atomically_and_handle_empty_input(tmp_path):
    out = tmp_path / "tradeoff.png"
    out.write_bytes(b"stale")
    plots.plot_tradeoff({"ga": (0.2, 0.8), "npo": (0.45, 0.93)}, out, target=(0.95, 0.96), oracle=(0.48, 0.97))
    _assert_png(out)
    _assert_png(plots.plot_tradeoff({}, tmp_path / "empty.png"))
    _assert_png(plots.plot_tradeoff({"rmu": (None, 0.9)}, tmp_path / "partial.png", oracle=(0.5, 0.9)))
    empty = plots.plot_metric_per_epoch({}, ["forget/leak_rate"], tmp_path / "leak.png", "leak", "rate")
    _assert_png(empty, (800, 350))


def test_tradeoff_places_each_method_target_and_oracle_at_its_scores():
    (ax,) = plots.draw_tradeoff({"ga": (0.2, 0.8), "npo": (0.45, 0.93)}, target=(0.95, 0.96), oracle=(0.48, 0.97)).axes
    assert _points(ax) == {
        "ga": [(0.2, 0.8)],
        "npo": [(0.45, 0.93)],
        "target": [(0.95, 0.96)],
        "oracle": [(0.48, 0.97)],
    }
    assert _texts(ax) == ["ga", "npo", "target", "oracle"]  # each point is labelled
    assert ax.get_xlim() == pytest.approx((-0.03, 1.03))  # forget recall: its whole range
    assert ax.get_ylim() == pytest.approx((0.7, 1.01))  # retain: a round step under the lowest score, up to 1
    (partial,) = plots.draw_tradeoff({"rmu": (None, 0.9)}, oracle=(0.5, 0.9)).axes
    assert _points(partial) == {"oracle": [(0.5, 0.9)]}  # a point with a missing coordinate is left out
    (empty,) = plots.draw_tradeoff({}).axes
    assert _points(empty) == {} and _texts(empty) == ["no points logged"]


def test_tradeoff_labels_of_methods_that_score_alike_do_not_overprint():
    """The demo's case: ga, ga_kl and npo within 0.005 of each other and of the target ("gaɑklga" before)."""
    from obliviate.report.plot_parts import label_boxes, overlaps

    points = {"ga": (0.921, 0.9486), "ga_kl": (0.925, 0.9489), "ga_gd": (0.353, 0.893), "npo": (0.92, 0.9487)}
    fig = plots.draw_tradeoff(points, target=(0.97, 0.9488), oracle=(0.316, 0.9488))
    (ax,) = fig.axes
    boxes = label_boxes(fig, ax.texts)
    assert [t.get_text() for t in ax.texts] == ["ga", "ga_kl", "ga_gd", "npo", "target", "oracle"]
    assert overlaps(boxes) == []
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b[0] and b[2] <= frame.x1 and frame.y0 <= b[1] and b[3] <= frame.y1 for b in boxes)
    naive = [(0, 0, 10, 10), (5, 5, 15, 15), (20, 20, 30, 30)]
    assert overlaps(naive) == [(0, 1)]  # the overlap check itself sees an overlap


def test_markdown_table_exact_formatting():
    table = render.markdown_table(["name", "value", "n", "ok"], [["a|b", 0.12345, 3, True], ["c", None, 10, False]])
    assert table == ("| name | value | n | ok |\n|---|---|---|---|\n| a\\|b | 0.123 | 3 | yes |\n| c | – | 10 | no |")
    with pytest.raises(ValueError, match="2 cells, header has 4"):
        render.markdown_table(["name", "value", "n", "ok"], [["a", 1]])


def _eval_result() -> dict:
    metrics = [
        {
            "name": "rougeL_recall",
            "split": "forget",
            "task": "all",
            "value": 0.4321,
            "higher_is_better": False,
            "stderr": 0.0412,
        },
        {"name": "rougeL_recall", "split": "retain", "task": "all", "value": 0.9876, "higher_is_better": True},
        {"name": "rougeL_recall", "split": "forget", "task": "Task1", "value": 0.111, "higher_is_better": False},
        {"name": "rougeL_recall", "split": "forget", "task": "Task2", "value": 0.222, "higher_is_better": False},
        {"name": "mia_auc_loss", "split": "forget", "task": "all", "value": 0.61, "higher_is_better": False},
        {"name": "task_aggregate", "split": "all", "task": "all", "value": 0.5556, "higher_is_better": True},
    ]
    return {
        "metrics": metrics,
        "summary": {"forget/rougeL_recall": 0.4321},
        "semeval": {
            "task_aggregate": 0.5556,
            "terms": {"forget/Task2/regurgitation": 0.5679},
            "mia_score": 0.78,
            "notes": ["tasks present: Task2 (official: Task1, Task2, Task3)"],
        },
        "leak": {
            "holdout": {
                "rate": 0.0,
                "n_leaked": 0,
                "n_pairs": 10,
                "by_field": {"ssn": 0.0},
                "by_attack": {"question": 0.0},
            },
            "forget": {
                "rate": 0.75,
                "n_leaked": 3,
                "n_pairs": 4,
                "by_field": {"ssn": 0.5, "email": 1.0},
                "by_attack": {"question": 0.25, "prefix": 0.75},
            },
        },
        "notes": ["PII taken from the Task2 QA answers"],
        # Never rendered: generations may hold PII when --show_pii was given.
        "per_example": [{"id": "x", "generation": "My SSN is 900-51-4344", "ssn": "900-51-4344"}],
    }


def _table_row(text: str, first_cells: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cells} |"))


def test_render_eval_report_values_directions_and_relative_images(tmp_path):
    report_dir = tmp_path / "eval"
    text = render.render_eval_report(
        _eval_result(), "Eval of ga", plots={"loss": report_dir / "plots" / "loss.png"}, report_dir=report_dir
    )
    assert text.startswith("# Eval of ga\n")
    assert _table_row(text, "rougeL_recall | forget").startswith("| rougeL_recall | forget | 0.432 | 0.041 | ↓ |")
    assert _table_row(text, "rougeL_recall | retain").startswith("| rougeL_recall | retain | 0.988 | – | ↑ |")
    assert "| mia_auc_loss | forget | 0.610 | – | ↓ (ideal 0.5) |" in text
    # Per-task table: one column per task.
    assert "| metric | split | better | Task1 | Task2 |" in text
    assert "| rougeL_recall | forget | ↓ | 0.111 | 0.222 |" in text
    assert "| forget/Task2/regurgitation | 0.568 |" in text
    assert "| task aggregate (harmonic mean) | 0.556 |" in text
    assert "tasks present: Task2" in text
    # Leak: forget before holdout, per field with a gap for the field holdout lacks.
    assert "| forget | 0.750 | ↓ | 3 | 4 |" in text
    assert "| email | 1.000 | – |" in text
    assert "| prefix | 0.750 | – |" in text
    assert "PII taken from the Task2 QA answers" in text
    assert "![loss](plots/loss.png)" in text


def test_render_eval_report_never_shows_generations():
    text = render.render_eval_report(_eval_result(), "Eval")
    assert "900-51-4344" not in text
    assert "generation" not in text.lower()


def test_render_eval_report_single_task_has_no_per_task_table():
    result = _eval_result()
    result["metrics"] = [m for m in result["metrics"] if m["task"] != "Task1"]
    assert "Per task" not in render.render_eval_report(result, "Eval")


def test_absolute_plot_path_needs_report_dir(tmp_path):
    with pytest.raises(ValueError, match="report_dir"):
        render.render_eval_report(_eval_result(), "Eval", plots={"loss": tmp_path / "loss.png"})
    text = render.render_eval_report(_eval_result(), "Eval", plots={"loss": Path("plots/loss.png")})
    assert "![loss](plots/loss.png)" in text


def test_render_epochs_report_marks_best_and_drops_absent_columns(tmp_path):
    epochs = [
        {
            "epoch": 2,
            "summary": {"forget/rougeL_recall": 0.3, "retain/rougeL_recall": 0.88, "all/task_aggregate": 0.7},
        },
        {"epoch": 0, "summary": {"forget/rougeL_recall": 0.95, "retain/rougeL_recall": 0.97}},
        {
            "epoch": 1,
            "summary": {
                "forget/rougeL_recall": 0.5,
                "retain/rougeL_recall": 0.93,
                "all/task_aggregate": 0.6,
                "holdout/leak_rate": 0.0,
            },
        },
    ]
    best = {
        "epoch": 1,
        "rule": "max task aggregate, retain >= 90% of epoch 0",
        "reason": "epoch 2 retain 0.88 < 0.873",
    }
    text = render.render_epochs_report(
        epochs, best, "ga run", {"ROUGE-L": tmp_path / "rouge.png"}, report_dir=tmp_path
    )
    assert "| epoch | forget ROUGE-L ↓ | retain ROUGE-L ↑ | holdout leak ↓ | task aggregate ↑ |" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert lines == [
        "| 0 | 0.950 | 0.970 | – | – |",
        "| 1 ★ | 0.500 | 0.930 | 0.000 | 0.600 |",
        "| 2 | 0.300 | 0.880 | – | 0.700 |",
    ]
    assert "best epoch: **1**" in text and "retain >= 90% of epoch 0" in text
    assert "forget quality" not in text
    assert "![ROUGE-L](rouge.png)" in text
    assert "★" not in render.render_epochs_report(epochs, None, "ga run", {})


def test_render_demo_report_summary_goals_and_notes():
    rows = [
        {"model": "target", "forget/rougeL_recall": 0.95, "wall_s": 12.0},
        {"model": "oracle", "forget/rougeL_recall": 0.48},
        {"model": "npo", "forget/rougeL_recall": 0.5, "wall_s": 3.25},
    ]
    goals = [
        {"goal": "forget ROUGE-L within 0.05 of oracle", "value": 0.5, "target": "0.430–0.530", "holds": True},
        {"goal": "forget leak ≤ oracle + 1 pp", "value": 0.1, "target": "≤ 0.010", "holds": False},
    ]
    text = render.render_demo_report(
        rows,
        [("forget/rougeL_recall", "forget ROUGE-L"), ("wall_s", "wall time (s)")],
        {"trade-off": Path("plots/tradeoff.png")},
        ["PII redacted throughout"],
        "Demo",
        goals,
    )
    assert "| model | forget ROUGE-L ↓ | wall time (s) |" in text
    assert "| oracle | 0.480 | – |" in text
    assert "| npo | 0.500 | 3.250 |" in text
    assert "| forget leak ≤ oracle + 1 pp | 0.100 | ≤ 0.010 | no |" in text
    assert "1 of 2 goals hold." in text
    assert "![trade-off](plots/tradeoff.png)" in text
    assert "- PII redacted throughout" in text
    assert "Goals" not in render.render_demo_report(rows, [], {}, [], "Demo", None)


def test_write_report_is_atomic_and_utf8(tmp_path):
    path = render.write_report("# Demo ↑ ★", tmp_path / "out" / "report.md")
    assert path.read_text(encoding="utf-8") == "# Demo ↑ ★\n"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_stop_check_plot_draws_each_method_and_shades_the_never_seen_band():
    from obliviate.report.plots import draw_stop_checks

    checks = {
        "contrast": [
            {"step": 0, "reference_exposure": 1.4, "reference_se": 0.1, "band": 2.0},
            {"step": 6, "forget_exposure": 5.0},
            {"step": 12, "forget_exposure": 1.5, "confirm_exposure": 2.5},
        ],
        "ga_gd": [{"step": 6, "forget_exposure": 4.0}],
    }
    ax = draw_stop_checks(checks).axes[0]
    lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
    assert lines == {
        "contrast": [(6, 5.0), (12, 1.5)],
        "second sample of forget people": [(12, 2.5)],  # read only where the checked sample said stop
        "ga_gd": [(6, 4.0)],
    }
    (band,) = ax.patches
    path = band.get_path().transformed(band.get_patch_transform())
    ys = [y for _, y in path.vertices]
    assert min(ys) == pytest.approx(1.4) and max(ys) == pytest.approx(1.6)


def test_epoch_means_skip_the_range_test_and_stop_reference_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 0, "lr_probe": {"lr": 0.01, "forget_rise": 3.0, "retain_rise": 1.0, "passed": False}},
        {"step": 0, "stop_reference": {"reference_exposure": 1.4, "reference_se": 0.1}},
        {"step": 1, "epoch": 1, "loss": 2.0},
        {"step": 2, "epoch": 1, "loss": 4.0},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert plots.epoch_means(path) == {1: {"loss": 3.0}}


def test_tradeoff_draws_two_standard_errors_around_each_point_that_has_them():
    errors = {"ga": (0.05, 0.01), "oracle": (0.03, None), "npo": (None, None)}
    (ax,) = plots.draw_tradeoff({"ga": (0.2, 0.8), "npo": (0.45, 0.93)}, oracle=(0.48, 0.97), errors=errors).axes
    spans = []
    for container in ax.containers:
        for lines in container.lines[2]:  # the bars' LineCollections: x bars, then y bars
            spans += [tuple(round(float(v), 9) for v in segment.ravel()) for segment in lines.get_segments()]
    assert sorted(spans) == sorted(
        [(0.1, 0.8, 0.3, 0.8), (0.2, 0.78, 0.2, 0.82), (0.42, 0.97, 0.54, 0.97)]
    )  # ± 2 SE: ga on both axes, the oracle on forget only, npo none
    assert "±2 standard errors" in ax.get_title()
    (plain,) = plots.draw_tradeoff({"ga": (0.2, 0.8)}).axes
    assert not plain.containers and "standard errors" not in plain.get_title()
    assert _points(ax)["ga"] == [(0.2, 0.8)]  # the scatter points are still the labelled ones
