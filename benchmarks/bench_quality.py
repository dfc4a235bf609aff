"""LUME quality benchmark: the demo pipeline on the real SemEval-2025 Task 4 data, every method with its defaults.

    .venv/bin/python benchmarks/bench_quality.py --write   # Task2 (PII biographies), every method
    .venv/bin/python benchmarks/bench_quality.py --tasks all

10 % of the retain people are held out of training (the non-members and the leak floor). The target is fine-tuned on
forget + the remaining retain rows, the oracle on those retain rows only; then each method unlearns the forget
set as `obliviate unlearn` does with no hyperparameter flags (its preset, a measured learning rate, the step
budget and the stop rule; nothing tuned on LUME); each row is the run's last checkpoint. The data is read
from ../shared/data/lume and never copied into the repository (a split copy goes to runs/, which git ignores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LUME = REPO.parent / "shared" / "data" / "lume"
TASKS = ("Task1", "Task2", "Task3")


def marks(tasks: str) -> tuple[str, str]:
    """BENCHMARKS.md's markers around one task set's section: Task2 (the README's table) keeps the plain ones."""
    key = "bench_quality" if tasks == "Task2" else f"bench_quality:{tasks}"
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def split_lume(tasks: list[str], out: Path, holdout_fraction: float, seed: int) -> dict[str, Path]:
    """forget / retain-train / holdout jsonl files under ``out``; holdout = 10 % of retain people."""
    from obliviate.data.load import load_split, write_jsonl
    from obliviate.data.records import person_key

    forget = [r for r in load_split(LUME, split="forget") if r.task in tasks]
    retain = [r for r in load_split(LUME, split="retain") if r.task in tasks]
    people = defaultdict(list)
    for record in retain:
        people[person_key(record.id)].append(record)
    keys = sorted(people)
    random.Random(seed).shuffle(keys)
    held = set(keys[: round(holdout_fraction * len(keys))])
    dirs = {name: out / name for name in ("forget", "retain", "holdout")}
    write_jsonl(forget, dirs["forget"] / "forget.jsonl")
    write_jsonl([r for r in retain if person_key(r.id) not in held], dirs["retain"] / "retain.jsonl")
    write_jsonl([r for k in sorted(held) for r in people[k]], dirs["holdout"] / "holdout.jsonl")
    return dirs


def table(results: dict, args) -> str:
    """One row per model: the one-screen metric columns (labels, arrows and formats from the METRICS table), then how
    each run went."""
    import demo_results
    from obliviate.report.columns import Column, metric_columns
    from obliviate.report.render import columns_table

    runs = {r["method"]: r for r in results.get("runs", [])}
    rows = []
    for row in results["summary"]:
        run = runs.get(row["model"])
        how = {"lr": "–", "steps": "–", "ended": "–"}
        if run:
            how = {"lr": f"{run['lr']:.3g}" if run.get("lr") else "–", "steps": run.get("steps")}
            how["ended"] = demo_results.ended(run)
        rows.append({**row, **how})
    columns = [
        Column("model", "model"),
        *metric_columns("brief"),
        Column("lr", "lr"),
        Column("steps", "steps"),
        Column("ended", "ended by"),
        Column("tokens_vs_oracle", "tokens / oracle"),
        Column("compute_vs_oracle", "compute / oracle"),
    ]
    return columns_table(columns, rows)


def write_section(text: str, tasks: str = "Task2") -> None:
    path = REPO / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = marks(tasks)
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current:
        current = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


def _finetuned(args: argparse.Namespace) -> str:
    """How target and oracle were fine-tuned, as the run's flags say."""
    if args.target_dir:
        return f"given ({args.target_dir}, {args.oracle_dir}), fine-tuned as their trainer_state.json says"
    if args.until_memorised:
        return f"fine-tuned until memorised ({args.until_memorised:g}) within {args.finetune_epochs} epochs"
    return f"fine-tuned {args.finetune_epochs} epochs"


def _epochs(results: dict, model: str, args: argparse.Namespace) -> str:
    """The epochs a model was fine-tuned: all of the budget, until memorised (from ``results.json``), or a given
    model's own count (its ``trainer_state.json``)."""
    if args.target_dir:
        state = Path(getattr(args, f"{model}_dir")) / "trainer_state.json"
        return str(json.loads(state.read_text())["epoch"]) if state.is_file() else "–"
    if not args.until_memorised:
        return str(args.finetune_epochs)
    epochs = results.get("memorisation", {}).get(model, {}).get("epochs")
    return "–" if epochs is None else str(epochs)


def write_up(results: dict, args: argparse.Namespace, command: str, seconds: float, cores: int) -> str:
    """The Quality section: how it was measured, the target's starting point, the table, the goals and the attacks."""
    import demo_results
    from obliviate.report.render import noise_words

    target = results["summary"][0]
    goals = results["goals"]
    held = [g for g in goals if g["holds"]]
    noise = f"; {words}" if (words := noise_words(goals)) else ""

    def score(key: str) -> str:
        value = target.get(key)
        return "–" if value is None else f"{value:.3f}"

    return "\n".join(
        [
            f"## Quality on LUME ({args.tasks})",
            "",
            f"Measured {datetime.date.today().isoformat()} with `{command}` ({args.size} OLMo, "
            f"{_finetuned(args)}, {args.eval_max_examples} rows per split per epoch, greedy {args.max_new_tokens} "
            f"new tokens; whole run {seconds:.0f}s on a machine with {cores} CPU core{'s' if cores != 1 else ''}).",
            "",
            f"The target's ROUGE-L recall on its training data after {_epochs(results, 'target', args)} fine-tuning "
            f"epochs: {score('forget/rougeL_recall')} (forget) / {score('retain/rougeL_recall')} (retain).",
            "",
            table(results, args),
            "",
            f"Goals against the oracle: {len(held)} of {len(goals)} hold{noise}.",
            "",
            *[goal_line(g) for g in goals],
            *(
                ["", "### Attacks on LUME", demo_results.attacks_text(results).strip()]
                if results.get("attacks")
                else []
            ),
        ]
    )


def goal_line(goal: dict) -> str:
    """``- ✗ contrast: forget ROUGE-L within 0.05 of oracle (0.537 against 0.508, margin +0.021 ± 0.030), within 2
    standard errors of the bound``: whether it holds, its value and reference, its margin and error where measured,
    and whether the verdict is within noise (``docs/METRICS.md``, *Standard errors*)."""
    import demo_results
    from obliviate.evaluate.uncertainty import CLEAR

    line = f"- {'✓' if goal['holds'] else '✗'} {goal['goal']}"
    if goal.get("value") is not None and goal.get("target") is not None:
        line += f" ({demo_results.cell(goal['value'])} against {demo_results.cell(goal['target'])}"
        line += f"{demo_results.margin_words(goal)})"
    if goal.get("clear") is False:
        line += f", within {CLEAR:g} standard errors of the bound{demo_results.count_words(goal)}"
    return line


def _data(tasks: str) -> str:
    return "all three tasks of the real LUME data" if tasks == "all" else f"the real LUME {tasks} data"


def readme_section(results: dict, args: argparse.Namespace, command: str, seconds: float) -> str:
    """README.md's LUME section: the one-screen table and each method's goals, from ``results.json``."""
    import textwrap

    import demo_results
    from obliviate.report.columns import Column, metric_columns

    rows = [dict(r) for r in results["summary"]]
    runs = {r["method"]: r for r in results.get("runs", [])}
    for row in rows[2:]:
        run = runs.get(row["model"], {})
        row["lr"], row["steps"], row["end"] = run.get("lr"), run.get("steps"), demo_results.ended(run)
    run_columns = demo_results.RUN_COLUMNS
    columns = [Column("model", "model"), *metric_columns("brief"), *(Column(k, label) for k, label in run_columns)]
    table = _common.markdown_table(
        [c.header for c in columns], [[demo_results.cell(c.cell(row.get(c.key))) for c in columns] for row in rows]
    )
    held, total, lines = demo_results.goal_lines(rows, demo_results.attack_goals(results))
    intro = (
        f"The same pipeline on {_data(args.tasks)} (`../shared/data/lume`; 10 % of the retain people held "
        f"out), each method below as `obliviate unlearn` runs it with no hyperparameter flags, nothing tuned on LUME. "
        f"Measured {_common.utc_date()} with `{command}` ({seconds / 60:.0f} min on {_common.cpu_cores()} CPU cores; "
        f"target and oracle {_finetuned(args)}, {args.eval_max_examples} rows per split), "
        f"written by the script. Details: [BENCHMARKS.md](BENCHMARKS.md#quality-on-lume-{args.tasks.lower()})."
    )
    intro = textwrap.fill(intro, width=118, break_on_hyphens=False, break_long_words=False)
    return (
        f"{intro}\n\n{table}\n\nGoals against the oracle (and the target, for retain): {held} of {total} hold"
        f"{demo_results.noise_text(rows)}.\n\n" + ("\n".join(lines)) + demo_results.attacks_text(results)
    )


def written_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The run's command line; with given models (``--target_dir``) without the fine-tuning flags, which it did not
    read."""
    unread = ("finetune_epochs", "until_memorised") if args.target_dir else ()
    return _common.exact_command("bench_quality.py", parser, args, omit=unread)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="Task2", help="Task2 (default), all, or a comma list")
    methods = ["ga", "ga_kl", "ga_gd", "npo", "simnpo", "rmu", "contrast"]
    parser.add_argument("--methods", nargs="+", default=methods)
    parser.add_argument("--size", default="tiny", help="model size (default: tiny)")
    parser.add_argument(
        "--finetune_epochs",
        type=int,
        default=40,
        help="target/oracle epoch budget, stopped once memorised (default: 40)",
    )
    parser.add_argument(
        "--until_memorised",
        type=float,
        default=0.95,
        help="stop fine-tuning once training EM and ROUGE-L reach this (default: 0.95); 0: all --finetune_epochs",
    )
    parser.add_argument(
        "--target_dir",
        default=None,
        help="a target already fine-tuned on this split (with --oracle_dir; default: fine-tune one, cached)",
    )
    parser.add_argument("--oracle_dir", default=None, help="the oracle to --target_dir, fine-tuned on its retain rows")
    parser.add_argument("--unlearn_epochs", type=int, default=None, help="unlearning epochs (default: step budget)")
    parser.add_argument("--eval_max_examples", type=int, default=240, help="rows per split per epoch (default: 240)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="generation length (default: 64)")
    parser.add_argument("--output_dir", default="runs/lume", help="(default: runs/lume)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="side-by-side processes (default: one per core)")
    parser.add_argument(
        "--attacks",
        default="relearn,quantize",
        help="attacks on target, oracle and each method's chosen checkpoint (default: relearn,quantize; none: off)",
    )
    parser.add_argument("--write", action="store_true", help="rewrite the Quality section of BENCHMARKS.md")
    parser.add_argument(
        "--set", action="append", default=[], help="method.option=value for probes (repeatable; never with --write)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from obliviate.cli.run import run_experiment
    from obliviate.pipeline import PipelineConfig, StampedLog

    if args.set and args.write:
        parser.error("--set runs a probe with options the defaults do not have: it never rewrites BENCHMARKS.md")
    from probe_objectives import parse_setting

    presets: dict = {}
    for text in args.set:
        method, option, value = parse_setting(text)
        presets.setdefault(method, {})[option] = value
    tasks = list(TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",")]
    if unknown := sorted(set(tasks) - set(TASKS)):
        parser.error(f"--tasks: unknown {', '.join(unknown)} (LUME has {', '.join(TASKS)}; or all)")
    if bool(args.target_dir) != bool(args.oracle_dir):
        parser.error("--target_dir and --oracle_dir go together: each table row is measured against both")
    out = Path(args.output_dir)
    dirs = split_lume(tasks, out / "data", 0.1, args.seed)
    config = PipelineConfig(
        output_dir=str(out / "report"),
        cache_dir=str(out / "cache"),
        target_dir=args.target_dir,
        oracle_dir=args.oracle_dir,
        methods=tuple(args.methods),
        size=args.size,
        finetune_epochs=args.finetune_epochs,
        finetune_until_memorised=args.until_memorised or None,  # None: the fixed budget, and its cache entries
        eval_max_examples=args.eval_max_examples,
        unlearn_epochs=args.unlearn_epochs,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        workers=args.workers,
        eval_batch_size=32,  # biographies up to 512 tokens: keep each forward's logits small
        data_dirs={k: str(v) for k, v in dirs.items()},
        presets=presets,
        attacks=args.attacks,
    )
    started = time.perf_counter()
    run_experiment(config, title=f"LUME {args.tasks} quality benchmark", log=StampedLog())  # as `obliviate run`
    results = json.loads((Path(config.output_dir) / "results.json").read_text())
    command = written_command(parser, args)
    text = write_up(results, args, command, time.perf_counter() - started, _common.cpu_cores())
    print(text)
    if args.write:
        write_section(text, args.tasks)
        _common.write_readme_line(
            "lume-results" if args.tasks == "Task2" else f"lume-{args.tasks}-results",
            readme_section(results, args, command, time.perf_counter() - started),
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
