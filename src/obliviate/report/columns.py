"""Table columns derived from :data:`obliviate.evaluate.scores.METRICS`: label, direction arrow and format.

Every summary table (the demo report, the per-epoch table, the benchmark and README tables) takes its metric
columns from :func:`metric_columns`; a report lists only its own non-metric columns (model, lr, wall time).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from obliviate.evaluate.scores import METRICS, higher_is_better

TIERS = ("columns", "brief")
"""``columns``: the full summary tables; ``brief``: the one-screen tables (see
:class:`~obliviate.evaluate.scores.MetricInfo`)."""


@dataclass(frozen=True)
class Column:
    """One table column: the row key it shows, its header, and the format of its numbers (None: the table's own)."""

    key: str
    label: str
    arrow: str = ""
    fmt: str | None = None

    @property
    def header(self) -> str:
        return f"{self.label} {self.arrow}" if self.arrow else self.label

    def cell(self, value: Any) -> Any:
        """``value`` formatted by ``fmt`` where it is a number; anything else as it is."""
        if self.fmt and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return format(value, self.fmt)
        return value


def direction(name: str, split: str, higher: bool | None = None) -> str:
    """ "↑" or "↓" for ``name`` on ``split`` (``higher`` overrides the lookup), plus the ideal where one exists."""
    info = METRICS.get(name)
    if higher is None:
        if info is None:
            return ""
        try:
            higher = higher_is_better(name, split)
        except ValueError:
            return ""
    arrow = "↑" if higher else "↓"
    return f"{arrow} (ideal {info.ideal:g})" if info is not None and info.ideal is not None else arrow


def metric_column(key: str, label: str | None = None) -> Column:
    """The column of a summary key: ``"split/metric"`` gets the metric's label (prefixed by the split, unless the
    metric is tabled on that split alone or is split-free), arrow and format; any other key a plain column."""
    split, _, name = key.partition("/")
    info = METRICS.get(name)
    if info is None:
        return Column(key, label or key)
    if label is None:
        alone = split == "all" or (info.columns or info.brief) == (split,)
        label = info.label if alone else f"{split} {info.label}"
    return Column(key, label, direction(name, split), info.fmt)


def metric_columns(tier: str = "columns", rows: Iterable[Mapping[str, Any]] | None = None) -> list[Column]:
    """The metric columns of ``tier`` in table order; with ``rows``, only those some row has a value for."""
    if tier not in TIERS:
        raise ValueError(f"tier {tier!r}: expected one of {TIERS}")
    columns = [metric_column(f"{split}/{info.name}") for info in METRICS.values() for split in getattr(info, tier)]
    if rows is None:
        return columns
    rows = list(rows)
    return [c for c in columns if any(row.get(c.key) is not None for row in rows)]


def metric_keys(name: str) -> list[str]:
    """The summary keys of one metric's full-table columns, e.g. ``["forget/leak_rate", "retain/leak_rate", ...]``."""
    return [f"{split}/{name}" for split in METRICS[name].columns]
