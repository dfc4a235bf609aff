"""Small PNG plots for reports: loss per epoch, a metric per epoch, and the forget/retain trade-off.

Per-epoch curves are small multiples, one panel per method on shared axes, so that a method's lines are never
tangled with another's; a reference such as the oracle's level is a band on every panel (its 95 % interval where
the caller knows its standard error, else a thin strip, as its legend entry says). Scores bounded by [0, 1] get
axes that show the bound (:mod:`obliviate.report.plot_parts`).

Each plot has two functions: ``draw_*`` builds the figure (6 × 4 in) and returns it, so that a test can read what
was drawn from its axes; ``plot_*`` draws it and writes it as a PNG at 100 dpi with the Agg backend, atomically (a
temporary file in the same folder, then ``os.replace``, so a reader never sees half a PNG), and returns the path.
Figures are built with ``matplotlib.figure.Figure``, not pyplot, so none is left open in pyplot's global registry.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI machines or training nodes
from matplotlib.figure import Figure  # noqa: E402 (must follow the backend choice)

from obliviate.errors import DataError  # noqa: E402
from obliviate.evaluate.uncertainty import CLEAR  # noqa: E402
from obliviate.report.plot_parts import (  # noqa: E402
    Level,
    as_level,
    draw_band,
    epoch_range,
    legend_in_spare_cell,
    panel_figure,
    panels,
    place_labels,
    tight_upper_range,
    unit_range,
)

FIGSIZE = (6.0, 4.0)
DPI = 100
LINESTYLES = ("-", "--", ":", "-.")
# Per panel of the loss plot: the logged keys to try, in order. RMU logs its own terms when it has no NLL.
FORGET_KEYS = ("forget_nll", "rmu_forget")
RETAIN_KEYS = ("retain_nll", "rmu_retain")


def _color(index: int) -> str:
    return f"C{index % 10}"


METHOD_COLORS = ("C0", "C1", "C4", "C5", "C6", "C9", "C8", "C7")
"""Method colours in the trade-off plot: the default cycle without red and green, the target's and oracle's."""


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` to ``out`` as PNG through a temporary file in the same folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=DPI)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def epoch_means(metrics_file: Path) -> dict[int, dict[str, float]]:
    """Mean of every numeric key per epoch of a ``metrics.jsonl`` (one JSON object per optimizer step).

    Raises:
        DataError: the file is missing, or a line is not a JSON object with an integer ``epoch``.
    """
    path = Path(metrics_file)
    if not path.is_file():
        raise DataError(f"{path}: metrics file not found (expected the metrics.jsonl of a training run)")
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: expected a JSON object per line, found invalid JSON ({exc.msg})"
                ) from exc
            if isinstance(record, dict) and ("lr_probe" in record or "stop_reference" in record):
                continue  # a run event logged before the first step (the range test, the stop rule's reference)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise DataError(f"{path}:{number}: expected an object with an integer 'epoch', found {line[:80]!r}")
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    if math.isfinite(value):
                        sums[record["epoch"]][key].append(float(value))
    return {epoch: {key: sum(vs) / len(vs) for key, vs in keys.items()} for epoch, keys in sorted(sums.items())}


def _series(means: dict[int, dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    epochs = [epoch for epoch, values in means.items() if key in values]
    return epochs, [means[epoch][key] for epoch in epochs]


def _first_key(means: dict[int, dict[str, float]], candidates: tuple[str, ...]) -> str | None:
    return next((key for key in candidates if any(key in values for values in means.values())), None)


def plot_loss_per_epoch(metrics_files: dict[str, Path], out: Path) -> Path:
    """Write :func:`draw_loss_per_epoch` to the PNG ``out``; returns ``out``."""
    return _save(draw_loss_per_epoch(metrics_files), out)


def draw_loss_per_epoch(metrics_files: dict[str, Path]) -> Figure:
    """One panel per method: its mean forget NLL (solid) and retain NLL (dashed) per epoch, from ``metrics.jsonl``.

    A run without ``forget_nll`` / ``retain_nll`` shows what it logged instead (RMU's ``rmu_forget`` /
    ``rmu_retain``); a run with neither shows its ``loss`` as the forget line. The legend names the key plotted.
    Panels do not share the y axis: the methods' losses are different quantities (RMU's are activation distances).

    Args:
        metrics_files: method name → path of its ``metrics.jsonl``.

    Returns:
        The figure, one axes per method titled by its name (in the order given).
    """
    means_by_method = {method: epoch_means(path) for method, path in metrics_files.items()}
    fig = panel_figure(len(means_by_method))
    axes = panels(fig, max(1, len(means_by_method)), sharey=False)
    for ax, (method, means) in zip(axes, means_by_method.items()):
        forget_key, retain_key = _first_key(means, FORGET_KEYS), _first_key(means, RETAIN_KEYS)
        if forget_key is None and retain_key is None:
            forget_key = _first_key(means, ("loss",))
        values, drawn_epochs = [], []
        for index, (key, style) in enumerate(((forget_key, "-"), (retain_key, "--"))):
            if key is not None:
                epochs, series = _series(means, key)
                ax.plot(epochs, series, marker="o", markersize=3, linestyle=style, color=_color(index), label=key)
                values, drawn_epochs = values + series, drawn_epochs + epochs
        epoch_range(ax, drawn_epochs)
        ax.set_title(method, fontsize="small")
        unit_range(ax, values)
        if values:
            ax.legend(fontsize="xx-small")
        else:
            _no_data(ax, "loss")
    if not means_by_method:
        _no_data(axes[0], "loss")
    fig.supylabel("mean over the epoch's steps", fontsize="small")
    fig.suptitle("forget (solid) and retain (dashed) loss per epoch", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_metric_per_epoch(
    curves: dict[str, list[tuple[int, dict[str, float]]]],
    keys: list[str],
    out: Path,
    title: str,
    ylabel: str,
    reference_lines: dict[str, float | Level | tuple[float, float | None]] | None = None,
) -> Path:
    """Write :func:`draw_metric_per_epoch` to the PNG ``out``; returns ``out``."""
    return _save(draw_metric_per_epoch(curves, keys, title, ylabel, reference_lines), out)


def draw_metric_per_epoch(
    curves: dict[str, list[tuple[int, dict[str, float]]]],
    keys: list[str],
    title: str,
    ylabel: str,
    reference_lines: dict[str, float | Level | tuple[float, float | None]] | None = None,
) -> Figure:
    """Small multiples: one panel per method, a line per key (e.g. forget solid, retain dashed) over epochs.

    Args:
        curves: method → ``[(epoch, summary), ...]`` where ``summary`` maps ``"split/metric"`` to a value; a key
            missing from an epoch's summary (or None) leaves that point out.
        keys: the summary keys to draw; the i-th key gets the i-th colour and line style on every panel.
        title: figure title.
        ylabel: y-axis label.
        reference_lines: label → a level drawn as a band on every panel: a value (thin band), ``(value, se)`` or a
            :class:`~obliviate.report.plot_parts.Level` (band of ±1.96 se); e.g. ``{"oracle forget": (0.31, 0.02)}``.

    Returns:
        The figure: one axes per method, titled by it, sharing both axes; one figure legend naming each key (by its
        split when the keys share a metric) and each band.
    """
    fig = panel_figure(len(curves))
    axes = panels(fig, max(1, len(curves)))
    levels = {label: as_level(value) for label, value in (reference_lines or {}).items() if value is not None}
    handles: dict[str, object] = {}
    values: list[float] = [level.value for level in levels.values()]
    for ax, (method, points) in zip(axes, curves.items()):
        ordered = sorted(points, key=lambda point: point[0])
        for key_index, key in enumerate(keys):
            present = [(epoch, summary[key]) for epoch, summary in ordered if summary.get(key) is not None]
            if present:
                (line,) = ax.plot(
                    [p[0] for p in present],
                    [p[1] for p in present],
                    marker="o",
                    markersize=3,
                    color=_color(key_index),
                    linestyle=LINESTYLES[key_index % len(LINESTYLES)],
                    label=_key_label(key, keys),
                )
                handles.setdefault(line.get_label(), line)
                values += [p[1] for p in present]
        for band_index, (label, level) in enumerate(levels.items()):
            patch = draw_band(ax, level, level.label(label), color=("0.45", "tab:olive", "tab:cyan")[band_index % 3])
            handles.setdefault(patch.get_label(), patch)
        ax.set_title(method, fontsize="small")
    if not handles or not curves:
        _no_data(axes[0], ", ".join(keys))
    unit_range(axes[0], values)
    epoch_range(axes[0], [epoch for points in curves.values() for epoch, _ in points])
    fig.supylabel(ylabel, fontsize="small")
    fig.suptitle(f"{title} (epoch 0: the model before unlearning)", fontsize="medium")
    if handles:
        legend_in_spare_cell(fig, axes, handles)
    else:
        fig.tight_layout()
    return fig


def _key_label(key: str, keys: list[str]) -> str:
    """``forget/leak_rate`` → ``forget`` when every key names the same metric (the title says which)."""
    metrics = {k.split("/", 1)[-1] for k in keys}
    return key.split("/", 1)[0] if len(metrics) == 1 and "/" in key else key


def plot_tradeoff(
    points: dict[str, tuple[float, float]],
    out: Path,
    target: tuple[float, float] | None = None,
    oracle: tuple[float, float] | None = None,
    xlabel: str = "forget ROUGE-L recall (lower = more forgotten)",
    ylabel: str = "retain ROUGE-L recall (higher = kept)",
    errors: dict[str, tuple[float | None, float | None]] | None = None,
) -> Path:
    """Write :func:`draw_tradeoff` to the PNG ``out``; returns ``out``."""
    return _save(draw_tradeoff(points, target, oracle, xlabel, ylabel, errors), out)


def draw_tradeoff(
    points: dict[str, tuple[float, float]],
    target: tuple[float, float] | None = None,
    oracle: tuple[float, float] | None = None,
    xlabel: str = "forget ROUGE-L recall (lower = more forgotten)",
    ylabel: str = "retain ROUGE-L recall (higher = kept)",
    errors: dict[str, tuple[float | None, float | None]] | None = None,
) -> Figure:
    """Scatter of each method's (forget, retain) score, labelled, with the target and the oracle marked.

    The ideal sits at the oracle: as forgotten as a model that never saw the forget set, with retain kept. Labels
    are placed where they overlap no other label and no point (methods that score alike sit together), with a
    leader line when pushed away. The forget axis spans [0, 1]; the retain axis runs from a round step below the
    lowest score to 1 (:func:`~obliviate.report.plot_parts.tight_upper_range`).

    Args:
        points: method → ``(x, y)``, by default (forget ROUGE-L recall, retain ROUGE-L recall); a point with a
            None coordinate is left out.
        target: the model before unlearning, drawn as a red square.
        oracle: the model retrained on retain only, drawn as a green star.
        errors: name (a method, ``"target"``, ``"oracle"``) → the standard errors of ``(x, y)``; each known one is
            drawn as a bar of ± :data:`~obliviate.evaluate.uncertainty.CLEAR` standard errors in the point's colour.

    Returns:
        The figure, one axes: a one-point scatter collection labelled by method, then ``target`` and ``oracle``;
        the axes' ``texts`` are the point labels, in that order.
    """
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    labels: list[tuple[str, float, float]] = []
    colors: dict[str, str] = {}
    for index, (method, (x, y)) in enumerate(points.items()):
        if x is None or y is None:  # a metric the run did not produce: nothing to place
            continue
        color = METHOD_COLORS[index % len(METHOD_COLORS)]
        ax.scatter([x], [y], color=color, marker="o", s=40, label=method, zorder=2)
        labels.append((method, x, y))
        colors[method] = color
    for name, point, marker, color in (("target", target, "s", "tab:red"), ("oracle", oracle, "*", "tab:green")):
        if point is not None and None not in point:
            ax.scatter(
                [point[0]], [point[1]], color=color, marker=marker, s=120, edgecolors="black", label=name, zorder=3
            )
            labels.append((name, *point))
            colors[name] = color
    for name, x, y in labels:
        xerr, yerr = (errors or {}).get(name, (None, None))
        if xerr or yerr:
            ax.errorbar(
                [x], [y], xerr=CLEAR * xerr if xerr else None, yerr=CLEAR * yerr if yerr else None,
                fmt="none", ecolor=colors[name], elinewidth=1, capsize=3, alpha=0.7, zorder=1,
            )  # fmt: skip
    barred = any(any(e or () for e in (errors or {}).get(name, ())) for name, _, _ in labels)
    ax.set_title("forget vs retain trade-off" + (f" (bars: ±{CLEAR:g} standard errors)" if barred else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not labels:
        _no_data(ax, "points")
        fig.tight_layout()
        return fig
    unit_range(ax, [x for _, x, _ in labels], axis="x")
    tight_upper_range(ax, [y for _, _, y in labels])
    fig.tight_layout()  # before the labels: they are placed in pixels
    for annotation in place_labels(fig, ax, labels, fontsize="small"):
        annotation.set_color(colors[annotation.get_text()])
    return fig


def plot_stop_checks(checks: dict[str, list[dict[str, float]]], out: Path) -> Path:
    """:func:`draw_stop_checks`, written to ``out``."""
    return _save(draw_stop_checks(checks), out)


def draw_stop_checks(checks: dict[str, list[dict[str, float]]]) -> Figure:
    """Forget exposure at each stop-rule check, one line per method, against the never-seen band.

    ``checks`` maps a method to its checks as the pipeline reads them from ``metrics.jsonl``: an optional first
    entry ``{"step": 0, "reference_exposure", "reference_se", "band"}`` (the band), then ``{"step",
    "forget_exposure", "threshold"}`` per check (with ``"confirm_exposure"`` where the rule read its second sample of
    forget people, drawn as a cross). The reference band (mean to mean + band x its standard error) is
    shaded once, from the first method that has it (every method starts from the same model); each method's stop
    threshold, which also counts the forget mean's standard error, is a dotted line in its colour.
    """
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    drawn = shaded = confirmed = False
    for index, (method, entries) in enumerate(checks.items()):
        reference = next((e for e in entries if "reference_exposure" in e), None)
        if reference is not None and not shaded and math.isfinite(reference.get("reference_exposure", math.nan)):
            low = reference["reference_exposure"]
            high = low + reference.get("band", 2.0) * reference.get("reference_se", 0.0)
            label = "holdout mean + 2 se, fields pooled (dotted: per check; the rule decides per field)"
            ax.axhspan(low, high, color="0.85", label=label)
            shaded = True
        points = [(e["step"], e["forget_exposure"]) for e in entries if "forget_exposure" in e]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, color=_color(index), label=method)
            drawn = True
        limits = [(e["step"], e["threshold"]) for e in entries if math.isfinite(e.get("threshold", math.nan))]
        if limits:  # the rule's threshold at each check (it widens with the forget mean's own standard error)
            steps, values = zip(*limits)
            ax.plot(steps, values, linestyle=":", linewidth=1, color=_color(index), label="_nolegend_")
        second = [(e["step"], e.get("confirm_exposure", math.nan)) for e in entries]
        second = [(s, v) for s, v in second if math.isfinite(v)]
        if second:  # the other forget people, read where the checked ones said stop
            steps, values = zip(*second)
            label = "second sample of forget people" if not confirmed else "_nolegend_"
            ax.plot(steps, values, linestyle="none", marker="x", markersize=6, color=_color(index), label=label)
            confirmed = True
    if not drawn:
        _no_data(ax, "stop-rule check")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("forget exposure (bits)")
    ax.set_title("Forget PII exposure at each stop-rule check")
    fig.tight_layout()
    if drawn or shaded:  # below the axes: inside, it covered the curves it names
        fig.subplots_adjust(bottom=0.36)
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig
