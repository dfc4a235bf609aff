"""Pieces the report plots share: one panel per method, reference bands, axis ranges, and labels that do not overlap.

Kept apart from :mod:`obliviate.report.plots` (what each plot shows) so that each stays short; nothing here knows a
metric's name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

Z95 = 1.96
"""Standard errors on each side of a level for its 95 % interval (normal approximation)."""


@dataclass(frozen=True)
class Level:
    """A reference level, such as the oracle's forget ROUGE-L recall, and the standard error of that mean if known.

    With ``se`` the band is the 95 % interval of the level (``value ± 1.96 se``): a method inside it cannot be told
    from the reference on this sample. Without it the band is a thin strip, and its label says so.
    """

    value: float
    se: float | None = None

    def label(self, name: str) -> str:
        if self.se is not None and math.isfinite(self.se):
            return f"{name} {self.value:.3g} ± {Z95 * self.se:.2g} (95 % interval)"
        return f"{name} {self.value:.3g} (sampling error unknown: thin band)"

    def bounds(self, thin: float) -> tuple[float, float]:
        """(low, high) of the band; ``thin`` is the half-width drawn when no standard error is known."""
        half = Z95 * self.se if self.se is not None and math.isfinite(self.se) else thin
        return self.value - half, self.value + half


def as_level(value: float | Level | tuple[float, float | None]) -> Level:
    """A float (value only), a ``(value, se)`` pair or a :class:`Level`."""
    if isinstance(value, Level):
        return value
    if isinstance(value, tuple):
        return Level(float(value[0]), None if value[1] is None else float(value[1]))
    return Level(float(value))


def mean_se(values: Iterable[float]) -> Level | None:
    """The mean of ``values`` and its standard error (sample standard deviation / √n); None for no values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return Level(mean)
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return Level(mean, math.sqrt(variance / len(finite)))


def panel_figure(count: int, max_cols: int = 3) -> Figure:
    """A figure sized for ``count`` panels: 8 in wide, 2.3 in per row of ``max_cols`` plus room for titles."""
    rows = max(1, math.ceil(max(1, count) / max_cols))
    return Figure(figsize=(8.0, 1.2 + 2.3 * rows))


def panels(fig: Figure, count: int, *, sharey: bool = True, max_cols: int = 3) -> list:
    """``count`` axes in a grid (at most ``max_cols`` a row) sharing the x axis; empty grid cells are removed, so
    ``fig.axes`` holds exactly one axes per panel. The bottom panel of each column carries the x label."""
    cols = max(1, min(count, max_cols))
    rows = max(1, math.ceil(count / cols))
    grid = fig.subplots(rows, cols, sharex=True, sharey=sharey, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for extra in axes[count:]:
        fig.delaxes(extra)
    for index, ax in enumerate(axes[:count]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelbottom=True, labelsize="x-small")  # ticks also above an empty grid cell
        if index + cols >= count:
            ax.set_xlabel("epoch", fontsize="small")
    return axes[:count]


def legend_in_spare_cell(fig: Figure, axes: list, handles: dict) -> None:
    """The figure legend in the grid's first empty cell, or, with none, under the panels (room kept for it)."""
    gridspec = axes[0].get_subplotspec().get_gridspec()
    rows, cols = gridspec.get_geometry()
    kwargs = {"fontsize": "x-small", "frameon": False}
    if len(axes) < rows * cols:
        fig.tight_layout()
        slot = gridspec[len(axes) // cols, len(axes) % cols].get_position(fig)
        fig.legend(list(handles.values()), list(handles), loc="center", bbox_to_anchor=slot.bounds, **kwargs)
        return
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    ncol = min(3, len(handles))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, **kwargs)


def draw_band(ax, level: Level, label: str | None, color: str = "0.55", thin: float = 0.004):
    """Shade ``level``'s band across ``ax`` with a line at its value; returns the band's patch (for the legend)."""
    low, high = level.bounds(thin)
    patch = ax.axhspan(low, high, color=color, alpha=0.35, linewidth=0, label=label or "_nolegend_")
    ax.axhline(level.value, color=color, linewidth=0.8, label="_nolegend_")
    return patch


def unit_range(ax, values: Sequence[float], axis: str = "y") -> None:
    """Start a [0, 1] quantity's axis at 0 and end it at 1: a rate or recall near 0 means gone, near 1 kept.

    Values outside [0, 1] (a loss, a perplexity) leave matplotlib's own range; a non-negative quantity starts at 0.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return
    setter = ax.set_ylim if axis == "y" else ax.set_xlim
    if min(finite) >= 0 and max(finite) <= 1:
        setter(-0.03, 1.03)
    elif min(finite) >= 0:
        setter(0, max(finite) * 1.08 or 1.0)


def epoch_range(ax, epochs: Sequence[int]) -> None:
    """Room around a single epoch, so that its axis gets integer ticks (matplotlib falls back to fractions)."""
    if epochs and max(epochs) == min(epochs):
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)


def tight_upper_range(ax, values: Sequence[float], step: float = 0.1) -> None:
    """A [0, 1] quantity whose values sit high (retain scores): from a round step below the lowest value to 1.

    Starting at 0 would squash differences of a few points into a line; starting at the lowest value would blow them
    up. A round floor with the upper bound 1 in view shows both the spread and how far from perfect it is.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) < 0 or max(finite) > 1:
        return
    low = math.floor((min(finite) - step / 2) / step) * step
    ax.set_ylim(-0.03 if low <= 0 else low, 1.0 + step / 10)  # a score of 0 keeps its whole marker in view


def place_labels(fig: Figure, ax, points: Sequence[tuple[str, float, float]], **text_kw) -> list:
    """Label each ``(text, x, y)`` point next to it where the label overlaps no other label and no point.

    Candidate spots ring the point at growing distance (right, above, left, below, then the diagonals); the first
    free one inside the axes wins, and a label pushed away from its point gets a thin leader line. Call it once the
    axes' limits and the figure's layout are final: the check is in pixels. Returns the annotations.
    """
    renderer = FigureCanvasAgg(fig).get_renderer()
    frame = ax.get_window_extent(renderer)
    marks = [_box_around(ax.transData.transform((x, y)), 8) for _, x, y in points]  # a star of s=120 included
    placed: list = []
    taken: list[tuple[float, float, float, float]] = []
    for index, (text, x, y) in enumerate(points):
        blocked = taken + marks[:index] + marks[index + 1 :]
        for ox, oy, ha, va in _offsets():
            leader = {"arrowstyle": "-", "color": "0.5", "linewidth": 0.6} if math.hypot(ox, oy) > 14 else None
            annotation = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(ox, oy), ha=ha, va=va, arrowprops=leader, **text_kw
            )
            box = _text_box(annotation, renderer)
            padded = (box[0] - 3, box[1] - 1, box[2] + 3, box[3] + 1)  # a gap between neighbouring words
            if _inside(box, frame) and not any(_overlap(padded, b) for b in blocked):
                break
            annotation.remove()
        else:  # nowhere free: keep the first spot rather than drop the label
            annotation = ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 1), **text_kw)
            box = _text_box(annotation, renderer)
        taken.append(box)
        placed.append(annotation)
    return placed


def label_boxes(fig: Figure, annotations: Sequence) -> list[tuple[float, float, float, float]]:
    """The pixel boxes of ``annotations`` as drawn (for tests: do any two overlap?)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [_text_box(a, renderer) for a in annotations]


def overlaps(boxes: Sequence[tuple[float, float, float, float]]) -> list[tuple[int, int]]:
    """Index pairs of boxes that overlap."""
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if _overlap(boxes[i], boxes[j])]


def _offsets():
    """(dx, dy) in points with the alignment that keeps the text on that side of the point."""
    sides = [(1, 0, "left", "center"), (0, 1, "center", "bottom"), (-1, 0, "right", "center")]
    sides += [(0, -1, "center", "top"), (1, 1, "left", "bottom"), (-1, 1, "right", "bottom")]
    sides += [(1, -1, "left", "top"), (-1, -1, "right", "top")]
    for distance in (9, 18, 30, 44, 60):
        for dx, dy, ha, va in sides:
            yield dx * distance, dy * distance, ha, va


def _text_box(annotation, renderer) -> tuple[float, float, float, float]:
    """The text's own pixel box (an annotation's extent would include its leader line)."""
    annotation.update_positions(renderer)  # where the offset puts the text, as drawing would
    box = Text.get_window_extent(annotation, renderer)
    return box.x0, box.y0, box.x1, box.y1


def _box_around(center, half: float) -> tuple[float, float, float, float]:
    return center[0] - half, center[1] - half, center[0] + half, center[1] + half


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box, frame) -> bool:
    return box[0] >= frame.x0 and box[2] <= frame.x1 and box[1] >= frame.y0 and box[3] <= frame.y1
