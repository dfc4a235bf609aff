"""Issue 9 probes: the demo pipeline with chosen methods and preset overrides, printed per epoch.

The demo's data, target and oracle (cached under ``--cache_dir``, at ``--size``) with each method's preset,
optionally changed (``--set ga_gd.forget_tokens=pii``), evaluated every epoch. Prints, per method and epoch, the
numbers the issue's goals read (forget / retain ROUGE-L, retain EM, forget leak rate, MIA AUC, forget and holdout
exposure, digits in place) and the target's and the oracle's, then each method's goals with the margin and standard
error of each miss. Writes nothing outside ``--output_dir`` and the cache.

    python benchmarks/probe_objectives.py --methods ga_gd relabel
    python benchmarks/probe_objectives.py --methods ga_gd npo --set ga_gd.forget_tokens=pii --set npo.forget_tokens=pii
    python benchmarks/probe_objectives.py --methods contrast --people 400 --forget_fraction 0.05

``--people`` and ``--forget_fraction`` change the synthetic data (a new target and oracle are fine-tuned for it).
The goal lines end with each method's cost: its training tokens (its range test's trials included) and its
compute over the oracle's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

KEYS = (
    ("forget/rougeL_recall", "forget R-L"),
    ("retain/rougeL_recall", "retain R-L"),
    ("retain/exact_match", "retain EM"),
    ("forget/leak_rate", "leak"),
    ("forget/mia_auc_loss", "MIA AUC"),
    ("forget/exposure", "exposure"),
    ("holdout/exposure", "holdout exp."),
    ("forget/digits_in_place", "digits"),
)


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``method.option=value`` with the value read as YAML (``pii``, ``1e-3``, ``4``)."""
    import yaml

    target, _, raw = text.partition("=")
    method, _, option = target.partition(".")
    if not (method and option and raw):
        raise SystemExit(f"--set {text!r}: expected method.option=value")
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return method, option, value


def row(label: str, summary: dict[str, float]) -> str:
    return f"| {label} | " + " | ".join(f"{summary.get(k, float('nan')):.3f}" for k, _ in KEYS) + " |"


def main() -> None:
    from obliviate.pipeline import PRESETS, PipelineConfig, StampedLog, run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--set", action="append", default=[], help="method.option=value (repeatable)")
    parser.add_argument("--output_dir", default="runs/probe")
    parser.add_argument("--cache_dir", default="runs/cache")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--size", default="tiny", help="model size; pair small or medium with --cache_dir runs/size/cache"
    )
    parser.add_argument("--attacks", default=None, help="the pipeline's attacks (unset: its default; none: off)")
    parser.add_argument("--people", type=int, default=None, help="synthetic people (unset: the demo's)")
    parser.add_argument("--forget_fraction", type=float, default=None, help="share forgotten (unset: the demo's)")
    parser.add_argument("--write", action="store_true", help="also write the table into BENCHMARKS.md (markers)")
    args = parser.parse_args()
    presets = {name: dict(values) for name, values in PRESETS.items()}
    for method, option, value in map(parse_setting, args.set):
        presets.setdefault(method, {})[option] = value
    config = PipelineConfig(
        output_dir=args.output_dir,
        cache_dir=args.cache_dir,
        methods=tuple(args.methods),
        presets=presets,
        workers=args.workers,
        size=args.size,
        **({} if args.attacks is None else {"attacks": args.attacks}),
        **{k: v for k, v in (("people", args.people), ("forget_fraction", args.forget_fraction)) if v is not None},
    )
    outcome = run_pipeline(config, log=StampedLog())
    lines = ["| model / epoch | " + " | ".join(label for _, label in KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    lines.append(row("target", outcome.runs[0].epochs[0].summary if outcome.runs else {}))
    lines.append(row("oracle", outcome.oracle_result.summary()))
    chosen = []
    for run in outcome.runs:
        changed = {k: v for k, v in presets.get(run.method, {}).items() if PRESETS.get(run.method, {}).get(k) != v}
        for epoch in run.epochs[1:]:
            lines.append(row(f"{run.method} {changed or ''} epoch {epoch.epoch}".replace("  ", " "), epoch.summary))
        chosen.append(f"{run.method}: epoch {run.best['epoch']} chosen ({run.best['reason']})")
    print("\n".join(lines + chosen))
    if args.write:
        write_section(lines, chosen, presets, args)
    print("\n".join(goal_lines(outcome)))
    print(f"written under {Path(args.output_dir).resolve()}")


def goal_lines(outcome) -> list[str]:
    """The goals of each method's chosen epoch against the oracle and the target, each miss with its margin and
    standard error (``benchmarks/demo_results.py``'s lines, from the run's evaluations in memory)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import demo_results
    from obliviate.report.demo import ORACLE, summary_rows

    rows = summary_rows(outcome)
    held, total, lines = demo_results.goal_lines(rows)
    costs = [
        f"- {row['model']}: {row['tokens_vs_oracle']:.3f} times the oracle's training tokens"
        + (f", {row['compute_vs_oracle']:.3f} times its compute" if row.get("compute_vs_oracle") is not None else "")
        for row in rows[1:]
        if row["model"] != ORACLE and row.get("tokens_vs_oracle") is not None
    ]
    return [
        f"goals: {held} of {total} hold{demo_results.noise_text(rows)}",
        *lines,
        *(["cost:", *costs] if costs else []),
    ]


def data_words(args: argparse.Namespace) -> str:
    """``demo data``, or what ``--people`` and ``--forget_fraction`` changed."""
    changed = [f"{k} {v}" for k, v in (("people", args.people), ("forget_fraction", args.forget_fraction)) if v]
    return "demo data" + (f" with {', '.join(changed)}" if changed else "")


def write_section(lines: list[str], chosen: list[str], presets: dict, args: argparse.Namespace) -> None:
    """The table between ``<!-- probe-objectives:start -->`` and ``:end`` in BENCHMARKS.md, with its command."""
    import datetime
    import sys

    path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    start, end = "<!-- probe-objectives:start -->", "<!-- probe-objectives:end -->"
    command = "python benchmarks/probe_objectives.py " + " ".join(a for a in sys.argv[1:])
    presets_used = {m: presets.get(m, {}) for m in args.methods}
    body = "\n".join(
        [
            start,
            f"Measured {datetime.date.today().isoformat()} with `{command}` ({data_words(args)}, {args.size} target "
            f"and oracle from the cache; presets {presets_used}; exposure ranks among the per-epoch evaluation's "
            "fakes).",
            "",
            *lines,
            "",
            *[f"- {line}" for line in chosen],
            end,
        ]
    )
    text = path.read_text()
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n## Objectives probed on the demo data (issue 9)\n\n" + body + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
