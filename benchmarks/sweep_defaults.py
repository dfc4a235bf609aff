"""Sweep of the unlearning presets on the SYNTHETIC demo data only (LUME stays a fair test).

    .venv/bin/python benchmarks/sweep_defaults.py --methods ga_gd npo --lrs 3e-5 1e-4 3e-4

For every (method, lr) it unlearns the cached demo target, evaluates every epoch, picks the best epoch with the
demo's rule and checks the goals against the oracle. Results go to benchmarks/SWEEP.md (with --write) and
runs/sweep/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def write_up(
    args: argparse.Namespace, command: str, size: str, select: str, goal_names: list[str], rows: list[dict]
) -> str:
    """The sweep's section: how it was run, how the best epoch was chosen, the goals, and one row per run.

    Args:
        goal_names: the goals each run is checked against (``obliviate.report.demo.goals``, without the method).
        rows: target, oracle, then one row per (method, lr[, alpha]) with its best epoch's summary and ``goals``.
    """
    from obliviate.evaluate.selection import RETAIN_FLOOR
    from obliviate.report.columns import Column, metric_columns
    from obliviate.report.render import columns_table

    floors = f"retain ROUGE-L{' and EM' if select == 'holdout_gap' else ''} ≥ {RETAIN_FLOOR:.0%} of the target"
    epochs = f"{args.epochs} unlearning epochs" if args.epochs is not None else "each preset's unlearning epochs"
    columns = [
        Column("model", "run"),
        *metric_columns("brief"),
        Column("epoch", "best epoch"),
        Column("goals", f"goals (of {len(goal_names)})"),
    ]
    return "\n".join(
        [
            f"## Sweep of {', '.join(args.methods)}",
            "",
            f"Measured {datetime.date.today().isoformat()} with `{command}` ({args.people} people, {size} OLMo, "
            f"{args.finetune_epochs} fine-tuning epochs, {epochs}). Best epoch per run by the demo's rule "
            f"(`{select}`, {floors}). Goals: " + "; ".join(goal_names) + ".",
            "",
            columns_table(columns, rows),
            "",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ga", "ga_kl", "ga_gd", "npo", "simnpo", "rmu"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4])
    parser.add_argument(
        "--alphas", nargs="+", type=float, default=[None], help="retain weights to try (default: preset)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--finetune_epochs", type=int, default=30)
    parser.add_argument("--eval_max_examples", type=int, default=60)
    parser.add_argument("--cache_dir", default="runs/cache", help="cached data and models (default: runs/cache)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/SWEEP.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from obliviate.evaluate.data import load_eval_data
    from obliviate.evaluate.membership import oracle_stats
    from obliviate.evaluate.suite import evaluate_model
    from obliviate.models.load import load_model
    from obliviate.pipeline import PipelineConfig, unlearn_method
    from obliviate.pipeline_cache import cached_finetune, prepare_data, tokenizer_dirs
    from obliviate.report.demo import ORACLE, STDERR, UNITS, goals

    config = PipelineConfig(
        output_dir="runs/sweep",
        cache_dir=args.cache_dir,
        people=args.people,
        finetune_epochs=args.finetune_epochs,
        eval_max_examples=args.eval_max_examples,
        unlearn_epochs=args.epochs,
    )
    dirs = prepare_data(config, print)
    target = cached_finetune("target", [dirs["forget"], dirs["retain"]], config, tokenizer_dirs(dirs), print)
    oracle_dir = cached_finetune("oracle", [dirs["retain"]], config, tokenizer_dirs(dirs), print)
    from obliviate.evaluate.suite import EvalOptions

    options = EvalOptions(
        max_examples=config.eval_max_examples,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        show_progress=False,
    )
    data = load_eval_data(dirs["forget"], dirs["retain"], dirs["holdout"])
    model, tokenizer = load_model(oracle_dir)
    oracle = oracle_stats(model, tokenizer, data, options)
    evaluated = evaluate_model(model, tokenizer, data, options, oracle=oracle)
    # named as the pipeline names it, so that goals() finds it; with the errors and units its margins read
    oracle_row = {"model": ORACLE, **evaluated.summary(), STDERR: evaluated.stderrs(), UNITS: evaluated.units}
    rows, target_row, goal_names = [], None, []
    for method in args.methods:
        for lr, alpha in [(lr, alpha) for lr in args.lrs for alpha in args.alphas]:
            presets = {k: dict(v) for k, v in config.presets.items()}
            presets.setdefault(method, {})["lr"] = lr
            label = f"{method} lr={lr:g}"
            if alpha is not None:
                presets[method]["alpha"] = alpha
                label += f" α={alpha:g}"
            run_config = dataclasses.replace(
                config, presets=presets, output_dir=f"runs/sweep/{label.replace(' ', '_')}"
            )
            started = time.perf_counter()
            run = unlearn_method(method, target, dirs, run_config, (data, options, oracle), print)
            start = run.epochs[0]
            target_row = target_row or {"model": "target", **start.summary, STDERR: start.stderr, UNITS: start.units}
            best = run.best_epoch
            row = {
                "model": f"{method} lr={lr:g}",
                **best.summary,
                "epoch": best.epoch,
                "wall": time.perf_counter() - started,
                STDERR: best.stderr,
                UNITS: best.units,
            }
            checks = goals([target_row, oracle_row, row])
            goal_names = [g["goal"].split(": ", 1)[1] for g in checks]
            row["goals"] = sum(g["holds"] for g in checks)
            rows.append(row)
            print(row["model"], {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)
    command = _common.exact_command("sweep_defaults.py", parser, args)
    text = write_up(args, command, config.size, config.select, goal_names, [target_row, oracle_row, *rows])
    print(text)
    if args.write:
        path = REPO / "benchmarks" / "SWEEP.md"
        header = "# Sweeps of the unlearning presets (synthetic data only; newest first)\n\n"
        older = path.read_text().removeprefix(header) if path.exists() else ""
        path.write_text(header + text + "\n" + older)
    return 0


if __name__ == "__main__":
    sys.exit(main())
