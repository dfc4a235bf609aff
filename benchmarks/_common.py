"""Shared pieces of bench_step, bench_memory and bench_eval: quiet libraries, interleaved timing, tables and
rewriting one marked section of BENCHMARKS.md.

Timings on a shared machine are noisy, so every benchmark times its two contenders side by side in one process,
alternating A, B, A, B, and reports the ratio of each A/B pair; absolute seconds are shown only for context.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
LUME_DIR = Path(os.environ.get("OBLIVIATE_LUME_DIR", REPO_ROOT.parent / "shared" / "data" / "lume"))
SECTION_ORDER = ("bench_step", "bench_memory", "bench_eval", "bench_finetune")
THREADS_HELP = (
    "torch intra-op threads (default: 1; on a machine whose cores are shared with other work, 2 threads on 2 "
    "cores contend and can run 20x slower)"
)
_HEADER = (
    "# Benchmarks\n\n"
    "Speed and memory of obliviate against plain baselines, measured side by side in one process on the same "
    "model and data; each section says how to reproduce it.\n"
)


def quiet() -> None:
    """Silence library warnings and progress chatter that would bury the tables (set before heavy imports)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def utc_date() -> str:
    """Today as ``date -u +%F`` prints it."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def reproduce_command(script: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a run, without ``--write`` (which only decides where the result goes)."""
    args = [a for a in argv if a != "--write"]
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *map(shlex.quote, args)])


def exact_command(
    script: str, parser: argparse.ArgumentParser, args: argparse.Namespace, omit: Sequence[str] = ()
) -> str:
    """The exact command line of a run: every option with the value it ran with, defaults included.

    Options left unset (``None``) and hidden ones are omitted, and so is ``--write``, which only decides where the
    result goes, and every option whose ``dest`` is in ``omit`` (one the run did not read, so that the command
    does not claim it mattered). Reading the parsed values rather than ``sys.argv`` keeps a default that later
    changes from silently changing what the written command means.
    """
    words = [".venv/bin/python", f"benchmarks/{script}"]
    for action in parser._actions:  # argparse offers no public iterator over its options
        if not action.option_strings or action.dest in ("help", "write", *omit) or action.help == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest)
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            words += [flag] if value else []
        elif value is None or (isinstance(value, list) and all(v is None for v in value)):
            continue
        else:
            values = value if isinstance(value, list) else [value]
            words += [flag, *(shlex.quote(str(v)) for v in values)]
    return " ".join(words)


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), read from the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def budget_words() -> str:
    """The step budgets ``obliviate unlearn`` runs with no flags, as the registry declares them, in words for a
    table's preamble, e.g. "a budget of 120 forget steps (contrast: 240, or 10 passes over the forget set where that
    is more, each followed by its preset's 15 retain-only steps: 3,840 optimizer steps at 240)"."""
    from obliviate.losses import DEFAULT_STEPS, LOSSES

    own = [m for m in LOSSES.values() if m.steps != DEFAULT_STEPS or m.passes]
    words = [
        f"{m.name}: {m.steps}"
        + (f", or {m.passes} passes over the forget set where that is more" if m.passes else "")
        + (
            f", each followed by its preset's {m.preset['retain_steps']} retain-only steps: "
            f"{m.steps * (1 + m.preset['retain_steps']):,} optimizer steps" + (f" at {m.steps}" if m.passes else "")
            if m.preset.get("retain_steps")
            else ""
        )
        for m in own
    ]
    return f"a budget of {DEFAULT_STEPS} forget steps" + (f" ({'; '.join(words)})" if words else "")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The report's table renderer (``obliviate.report.render.markdown_table``), cells shown as given."""
    from obliviate.report.render import markdown_table as render

    return render(list(headers), [[str(cell) for cell in row] for row in rows])


def interleave(contenders: Sequence[Callable[[], Any]], rounds: int) -> list[list[tuple[float, Any]]]:
    """Run each contender once per round in turn (A, B, A, B, ...) and time it with ``perf_counter``.

    Returns:
        ``timings[c][r] = (seconds, result)`` for contender ``c`` in round ``r``.
    """
    timings: list[list[tuple[float, Any]]] = [[] for _ in contenders]
    for _ in range(rounds):
        for slot, contender in enumerate(contenders):
            started = time.perf_counter()
            result = contender()
            timings[slot].append((time.perf_counter() - started, result))
    return timings


def ratio_summary(ratios: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios: the median is the headline, the range shows the noise."""
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def write_section(key: str, body: str) -> Path:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` in BENCHMARKS.md.

    A missing file is created with the top heading; a missing section is inserted after the sections that come
    before it in :data:`SECTION_ORDER` (so later sections such as "Quality" stay below), else appended.
    """
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else _HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = _insert(text, key, block)
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, BENCHMARKS_MD)
    return BENCHMARKS_MD


def write_readme_line(key: str, body: str) -> Path:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` in README.md (a summary line that the
    benchmark measured, kept beside its BENCHMARKS.md section). The markers must exist: a README without them is left
    alone and the call says so."""
    readme = REPO_ROOT / "README.md"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} ... {end} markers: nothing written there")
    before, rest = text.split(start, 1)
    text = before + start + "\n" + body.strip() + "\n" + rest[rest.index(end) :]
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, readme)
    return readme


def _insert(text: str, key: str, block: str) -> str:
    position = SECTION_ORDER.index(key) if key in SECTION_ORDER else len(SECTION_ORDER)
    for earlier in reversed(SECTION_ORDER[:position]):
        marker = f"<!-- {earlier}:end -->"
        if marker in text:
            anchor = text.index(marker) + len(marker)
            return text[:anchor] + "\n\n" + block + text[anchor:]
    starts = [f"<!-- {later}:start -->" for later in SECTION_ORDER[position + 1 :]]
    cuts = [text.index(start) for start in starts if start in text]
    if "\n## Quality" in text:
        cut = text.index("\n## Quality") + 1
        previous = text.rfind("\n", 0, cut - 1) + 1
        # a section of another script starts at its marker line, just above its heading
        cuts.append(previous if text[previous : cut - 1].startswith("<!--") else cut)
    if cuts:
        return text[: min(cuts)] + block + "\n\n" + text[min(cuts) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def emit(name: str, table: str, summary: dict[str, Any]) -> None:
    """Print the table and one JSON line (``{"benchmark": name, ...}``) for machines."""
    import json

    print(table)
    print(json.dumps({"benchmark": name, **summary}, sort_keys=False))
    sys.stdout.flush()
