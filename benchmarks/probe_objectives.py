"""Issue 9 probes: the demo pipeline with chosen methods and preset overrides, printed per epoch.

The demo's data, target and oracle (cached under ``--cache_dir``) with each method's preset, optionally changed
(``--set ga_gd.forget_tokens=pii``), evaluated every epoch. Prints, per method and epoch, the numbers the issue's
goals read (forget / retain ROUGE-L, retain EM, forget leak rate, MIA AUC, forget and holdout exposure, digits in
place) and the target's and the oracle's. Writes nothing outside ``--output_dir`` and the cache.

    python benchmarks/probe_objectives.py --methods ga_gd relabel
    python benchmarks/probe_objectives.py --methods ga_gd npo --set ga_gd.forget_tokens=pii --set npo.forget_tokens=pii
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
    )
    outcome = run_pipeline(config, log=StampedLog())
    print("| model / epoch | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    print(row("target", outcome["runs"][0]["epochs"][0]["summary"] if outcome["runs"] else {}))
    print(row("oracle", outcome["oracle_result"].summary()))
    for run in outcome["runs"]:
        changed = {k: v for k, v in presets[run["method"]].items() if PRESETS.get(run["method"], {}).get(k) != v}
        for epoch in run["epochs"][1:]:
            print(row(f"{run['method']} {changed or ''} epoch {epoch['epoch']}", epoch["summary"]))
        print(f"<!-- {run['method']}: chosen epoch {run['best']['epoch']} ({run['best']['reason']}) -->")
    print(f"written under {Path(args.output_dir).resolve()}")


if __name__ == "__main__":
    main()
