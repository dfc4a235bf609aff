"""Small PNG plots for reports: loss per epoch, a metric per epoch, and the forget/retain trade-off.

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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from obliviate.errors import DataError  # noqa: E402

FIGSIZE = (6.0, 4.0)
DPI = 100
LINESTYLES = ("-", "--", ":", "-.")
# Per panel of the loss plot: the logged keys to try, in order. RMU logs its own terms when it has no NLL.
FORGET_KEYS = ("forget_nll", "rmu_forget")
RETAIN_KEYS = ("retain_nll", "rmu_retain")


def _color(index: int) -> str:
    return f"C{index % 10}"


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
    """Per method, the mean forget NLL and retain NLL per epoch (two panels), from each run's ``metrics.jsonl``.

    A run without ``forget_nll`` / ``retain_nll`` shows what it logged instead (RMU's ``rmu_forget`` /
    ``rmu_retain``); a run with neither shows its ``loss`` on the forget panel. The legend names the key plotted.

    Args:
        metrics_files: method name → path of its ``metrics.jsonl``.

    Returns:
        The figure: axes 0 the forget panel, axes 1 the retain panel, one line per method and key.
    """
    fig = Figure(figsize=FIGSIZE)
    ax_forget, ax_retain = fig.subplots(1, 2, sharex=True)
    drawn = {"forget": False, "retain": False}
    for index, (method, path) in enumerate(metrics_files.items()):
        means = epoch_means(path)
        forget_key, retain_key = _first_key(means, FORGET_KEYS), _first_key(means, RETAIN_KEYS)
        if forget_key is None and retain_key is None:
            forget_key = _first_key(means, ("loss",))
        for panel, ax, key in (("forget", ax_forget, forget_key), ("retain", ax_retain, retain_key)):
            if key is None:
                continue
            epochs, values = _series(means, key)
            ax.plot(epochs, values, marker="o", color=_color(index), label=f"{method} ({key})")
            drawn[panel] = True
    for panel, ax in (("forget", ax_forget), ("retain", ax_retain)):
        ax.set_title(f"{panel} NLL per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean over the epoch's steps")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if drawn[panel]:
            ax.legend(fontsize="x-small")
        else:
            _no_data(ax, f"{panel} NLL")
    fig.tight_layout()
    return fig


def plot_metric_per_epoch(
    curves: dict[str, list[tuple[int, dict[str, float]]]],
    keys: list[str],
    out: Path,
    title: str,
    ylabel: str,
    reference_lines: dict[str, float] | None = None,
) -> Path:
    """Write :func:`draw_metric_per_epoch` to the PNG ``out``; returns ``out``."""
    return _save(draw_metric_per_epoch(curves, keys, title, ylabel, reference_lines), out)


def draw_metric_per_epoch(
    curves: dict[str, list[tuple[int, dict[str, float]]]],
    keys: list[str],
    title: str,
    ylabel: str,
    reference_lines: dict[str, float] | None = None,
) -> Figure:
    """One line per (method, key) over epochs, e.g. forget (solid) against retain (dashed) ROUGE-L recall.

    Args:
        curves: method → ``[(epoch, summary), ...]`` where ``summary`` maps ``"split/metric"`` to a value; a key
            missing from an epoch's summary (or None) leaves that point out.
        keys: the summary keys to draw; the i-th key gets the i-th line style.
        title: figure title.
        ylabel: y-axis label.
        reference_lines: label → value drawn as grey horizontal lines (e.g. ``{"oracle forget": 0.48}``).

    Returns:
        The figure, one axes: a line labelled ``"{method} {key}"`` per curve, then one per reference line.
    """
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    drawn = False
    for index, (method, points) in enumerate(curves.items()):
        ordered = sorted(points, key=lambda point: point[0])
        for key_index, key in enumerate(keys):
            present = [(epoch, summary[key]) for epoch, summary in ordered if summary.get(key) is not None]
            if not present:
                continue
            ax.plot(
                [p[0] for p in present],
                [p[1] for p in present],
                marker="o",
                color=_color(index),
                linestyle=LINESTYLES[key_index % len(LINESTYLES)],
                label=f"{method} {key}",
            )
            drawn = True
    for line_index, (label, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(
            value,
            color="0.45",
            linewidth=1,
            linestyle=LINESTYLES[(line_index + 1) % len(LINESTYLES)],
            label=f"{label} ({value:.3g})",
        )
        drawn = True
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize="x-small")
    else:
        _no_data(ax, ", ".join(keys))
    fig.tight_layout()
    return fig


def plot_tradeoff(
    points: dict[str, tuple[float, float]],
    out: Path,
    target: tuple[float, float] | None = None,
    oracle: tuple[float, float] | None = None,
    xlabel: str = "forget ROUGE-L recall (lower = more forgotten)",
    ylabel: str = "retain ROUGE-L recall (higher = kept)",
) -> Path:
    """Write :func:`draw_tradeoff` to the PNG ``out``; returns ``out``."""
    return _save(draw_tradeoff(points, target, oracle, xlabel, ylabel), out)


def draw_tradeoff(
    points: dict[str, tuple[float, float]],
    target: tuple[float, float] | None = None,
    oracle: tuple[float, float] | None = None,
    xlabel: str = "forget ROUGE-L recall (lower = more forgotten)",
    ylabel: str = "retain ROUGE-L recall (higher = kept)",
) -> Figure:
    """Scatter of each method's (forget, retain) score, labelled, with the target and the oracle marked.

    The ideal sits at the oracle: as forgotten as a model that never saw the forget set, with retain kept.

    Args:
        points: method → ``(x, y)``, by default (forget ROUGE-L recall, retain ROUGE-L recall); a point with a
            None coordinate is left out.
        target: the model before unlearning, drawn as a red square.
        oracle: the model retrained on retain only, drawn as a green star.

    Returns:
        The figure, one axes: a one-point scatter collection labelled by method, then ``target`` and ``oracle``.
    """
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    for index, (method, (x, y)) in enumerate(points.items()):
        if x is None or y is None:  # a metric the run did not produce: nothing to place
            continue
        ax.scatter([x], [y], color=_color(index), marker="o", s=40, label=method)
        ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    for name, point, marker, color in (("target", target, "s", "tab:red"), ("oracle", oracle, "*", "tab:green")):
        if point is not None:
            ax.scatter(
                [point[0]], [point[1]], color=color, marker=marker, s=120, edgecolors="black", label=name, zorder=3
            )
            ax.annotate(name, point, textcoords="offset points", xytext=(5, -11), fontsize="small", color=color)
    if not points and target is None and oracle is None:
        _no_data(ax, "points")
    else:
        ax.legend(fontsize="x-small")
    ax.set_title("forget vs retain trade-off")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(0.12)  # room for the labels next to the outermost points
    fig.tight_layout()
    return fig


def plot_stop_checks(checks: dict[str, list[dict[str, float]]], out: Path) -> Path:
    """:func:`draw_stop_checks`, written to ``out``."""
    return _save(draw_stop_checks(checks), out)


def draw_stop_checks(checks: dict[str, list[dict[str, float]]]) -> Figure:
    """Forget exposure at each stop-rule check, one line per method, against the never-seen band.

    ``checks`` maps a method to its checks as the pipeline reads them from ``metrics.jsonl``: an optional first
    entry ``{"step": 0, "reference_exposure", "reference_se", "band"}`` (the band), then ``{"step",
    "forget_exposure", "threshold"}`` per check. The reference band (mean to mean + band x its standard error) is
    shaded once, from the first method that has it (every method starts from the same model); each method's stop
    threshold, which also counts the forget mean's standard error, is a dotted line in its colour.
    """
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    drawn = False
    shaded = False
    for index, (method, entries) in enumerate(checks.items()):
        reference = next((e for e in entries if "reference_exposure" in e), None)
        if reference is not None and not shaded and math.isfinite(reference.get("reference_exposure", math.nan)):
            low = reference["reference_exposure"]
            high = low + reference.get("band", 2.0) * reference.get("reference_se", 0.0)
            ax.axhspan(low, high, color="0.85", label="holdout mean + 2 se (dotted: each check's stop threshold)")
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
    if not drawn:
        _no_data(ax, "stop-rule check")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("forget exposure (bits)")
    ax.set_title("Forget PII exposure at each stop-rule check")
    if drawn or shaded:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
