"""Is the tiny model part of the problem? The demo's experiment at each model size, on the same synthetic people.

    .venv/bin/python benchmarks/bench_size.py --sizes tiny small medium --methods contrast ga_gd --write

For every size, the same data (the demo's people, same seed) is memorised by a fresh target and oracle of that size
(fine-tuned until memorised, as the demo does), then each method unlearns it as ``obliviate unlearn`` does with no
hyperparameter flags. The section in BENCHMARKS.md puts each size's target, oracle and methods side by side with the
goals each meets, so that a change in selectivity with size shows as a change in retain damage at the same forget
level. Sizes run one after another in this process's workers (``--workers``), each in its own output directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import demo_results  # noqa: E402

MARK = "bench_size"


def size_config(size: str, args: argparse.Namespace):
    """The demo pipeline's config at ``size``, in this benchmark's own output and cache directories."""
    from obliviate.pipeline import PipelineConfig

    return PipelineConfig(
        output_dir=str(Path(args.output_dir) / size),
        cache_dir=str(Path(args.output_dir) / "cache"),
        methods=tuple(args.methods),
        people=args.people,
        size=size,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        workers=args.workers,
        attacks="none",
        fresh=args.fresh,
    )


def run_size(size: str, args: argparse.Namespace) -> dict:
    """The demo pipeline at ``size`` (cached target and oracle reused); its ``results.json``."""
    import dataclasses
    import shutil

    from obliviate.cli.run import run_experiment
    from obliviate.pipeline import StampedLog
    from obliviate.pipeline_cache import prepare_data

    config = size_config(size, args)
    shutil.rmtree(config.output_dir, ignore_errors=True)  # the benchmark's own directory: each run writes it anew
    log = StampedLog()
    dirs = prepare_data(config, log)
    config = dataclasses.replace(config, data_dirs={name: str(path) for name, path in dirs.items()})
    run_experiment(config, title=f"bench_size {size}", log=log)
    return read_size(size, args)


def read_size(size: str, args: argparse.Namespace) -> dict:
    """A size's ``results.json`` as its run wrote it, with the model's parameter count (from the shared untrained
    model that target and oracle start from)."""
    from obliviate.pipeline import StampedLog
    from obliviate.pipeline_cache import cached_init, prepare_data, tokenizer_dirs

    config = size_config(size, args)
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    dirs = prepare_data(config, StampedLog())
    results["parameters"] = parameters(cached_init(config, tokenizer_dirs(dirs)))
    return results


def parameters(model_dir) -> str:
    """The parameter count of the model in ``model_dir``."""
    from obliviate.models.load import load_model
    from obliviate.models.tiny import count_parameters

    model, _ = load_model(model_dir)
    return f"{count_parameters(model):,}"


def section(measured: dict[str, dict], command: str) -> str:
    """The markdown section: one table of every size's rows and the goals each method meets at each size."""
    from obliviate.report.columns import metric_columns

    columns = metric_columns("brief")
    header = [
        "size",
        "model",
        *(c.header for c in columns),
        "lr",
        "steps",
        "ended by",
        "tokens / oracle",
        "compute / oracle",
    ]
    rows, verdicts = [], []
    for size, results in measured.items():
        runs = {r["method"]: r for r in results["runs"]}
        for row in results["summary"]:
            run = runs.get(row["model"], {})
            end = demo_results.ended(run) if run else "–"
            cells = [demo_results.cell(c.cell(row.get(c.key))) for c in columns]
            cost = demo_results.cell(row.get("tokens_vs_oracle")), demo_results.cell(row.get("compute_vs_oracle"))
            lr, steps = demo_results.cell(run.get("lr")), demo_results.cell(run.get("steps"))
            rows.append([size, row["model"], *cells, lr, steps, end, *cost])
        held, total, lines = demo_results.goal_lines(results["summary"])
        verdicts.append(
            f"**{size}** ({results['parameters']} parameters, fine-tuned at lr {results['config']['finetune_lr']:g}; "
            f"memorised: {demo_results.memorised(results)}): "
            f"{held} of {total} goals hold{demo_results.noise_text(results['summary'])}.\n\n" + "\n".join(lines)
        )
    times = ", ".join(f"{size} {results['wall_seconds'] / 60:.1f} min" for size, results in measured.items())
    first = next(iter(measured.values()))["config"]
    return f"""## Model size and selectivity (demo data)

The demo's {first["people"]} synthetic people at each model size: target and oracle fine-tuned until memorised
(budget {first["finetune_epochs"]} epochs; which reached the threshold is under the table), then each method as
`obliviate unlearn` runs it with no hyperparameter flags: learning rate from the range test,
{_common.budget_words()}, and the stop rule. Last checkpoint of each run, up to {first["eval_max_examples"]} rows
per split. Wall time of each size's pipeline (fine-tuning included where it was not cached): {times}.

{_common.markdown_table(header, rows)}

{chr(10).join(v + chr(10) for v in verdicts).rstrip()}

Reproduce: `{command}` (measured {_common.utc_date()}, {_common.cpu_cores()} CPU cores)."""


def main(argv: list[str] | None = None) -> int:
    from obliviate.config import TINY_SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(TINY_SIZES))
    parser.add_argument("--methods", nargs="+", default=["contrast", "ga_gd"])
    parser.add_argument("--people", type=int, default=200, help="synthetic people (the demo's 200)")
    parser.add_argument("--finetune_epochs", type=int, default=30, help="fine-tuning budget (the demo's)")
    parser.add_argument("--workers", type=int, default=1, help="processes per size's jobs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="retrain targets and oracles (no cache)")
    parser.add_argument("--output_dir", default="runs/size")
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    parser.add_argument(
        "--from_results", action="store_true", help="write up the runs already in OUTPUT_DIR/SIZE instead of running"
    )
    args = parser.parse_args(argv)
    _common.quiet()
    measured = {size: (read_size if args.from_results else run_size)(size, args) for size in args.sizes}
    measured_with = argparse.Namespace(**{**vars(args), "from_results": False})  # the command that ran them
    text = section(measured, _common.exact_command("bench_size.py", parser, measured_with))
    print(text)
    if args.write:
        _common.write_section(MARK, text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
