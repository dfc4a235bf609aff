"""The attacks in a report: a table of each attack's numbers beside the unattacked ones, and the leak-rate plot.

Both read only ``results.json["attacks"]`` entries (:meth:`~obliviate.evaluate.results.AttackResult.to_json`):
aggregates, never generations, so no PII reaches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from obliviate.report.render import markdown_table

COLUMNS = (
    ("forget/leak_rate", "forget leak"),
    ("forget/exposure", "forget exposure"),
    ("forget/rougeL_recall", "forget ROUGE-L"),
    ("forget/exact_match", "forget EM"),
    ("retain/rougeL_recall", "retain ROUGE-L"),
    ("retain/exact_match", "retain EM"),
)
"""The summary keys each attack is shown with, before → after."""

INTRO = (
    "Each attack works on a copy of the model in memory (the model on disk is unchanged); the copy is evaluated "
    "like the model itself. Cells read *before → after*; *before* is the unattacked model on the same rows "
    "(`relearn forget_half`: the held-back half of each forget person's records, only the PII fields no trained "
    "record holds)."
)


def pair_cell(before: dict[str, Any], after: dict[str, Any] | None, key: str) -> str:
    def shown(value: Any) -> str:
        return "–" if value is None else f"{float(value):.3f}"

    if after is None:
        return shown(before.get(key))
    return f"{shown(before.get(key))} → {shown(after.get(key))}"


def attack_section(attacks: Sequence[dict[str, Any]]) -> str:
    """The report's "Attacks" section: one row per attack, or the note of an attack that did not run."""
    if not attacks:
        return ""
    keys = [(key, label) for key, label in COLUMNS if any(key in a["before"] for a in attacks)]
    rows = []
    for attack in attacks:
        cells = [pair_cell(attack["before"], attack["after"], key) for key, _ in keys]
        change = (attack.get("details") or {}).get("relative_change")
        status = f"‖Δθ‖/‖θ‖ {change:.3g}" if attack["ran"] and change is not None else attack.get("note") or ""
        rows.append([attack["name"], *cells, status])
    return "\n\n".join([INTRO, markdown_table(["attack", *[label for _, label in keys], "weights / note"], rows)])


def plot_attack_leaks(attacks: Sequence[dict[str, Any]], out: Path, split: str = "forget") -> Path:
    """Write :func:`draw_attack_leaks` to the PNG ``out``; returns ``out``."""
    from obliviate.report.plots import _save

    return _save(draw_attack_leaks(attacks, split), out)


def draw_attack_leaks(attacks: Sequence[dict[str, Any]], split: str = "forget") -> Figure:
    """Paired bars per attack that ran: the ``split`` leak rate before (hatched) and after (solid) the attack.

    Returns:
        The figure, one axes; the bars' heights are the values, before then after for each attack, in order.
    """
    from matplotlib.figure import Figure  # imported only to draw: the tables above need no matplotlib

    from obliviate.report.plots import FIGSIZE, _color, _no_data

    key = f"{split}/leak_rate"
    ran = [a for a in attacks if a["ran"] and a["after"].get(key) is not None]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    if not ran:
        _no_data(ax, f"{split} leak rate after an attack")
    for i, attack in enumerate(ran):
        before = attack["before"].get(key) or 0.0
        ax.bar(i - 0.2, before, 0.4, color="0.9", edgecolor="0.35", hatch="//", label="before" if not i else None)
        ax.bar(i + 0.2, attack["after"][key], 0.4, color=_color(i), label="after" if not i else None)
    ax.set_xticks(range(len(ran)), [a["name"] for a in ran], rotation=30, ha="right", fontsize="x-small")
    ax.set_ylabel(f"{split} PII leak rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{split} leak rate before and after each attack")
    if ran:
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
