"""Issue 9 probe: how firm is the range test's pick of the learning rate?

Runs the range test alone (``obliviate.unlearn`` with ``--lr`` unset and a step budget of ``--max_steps``, 80 by
default: the probe, whose kept trial is then the whole run) on a target and its data (``forget/``, ``retain/``,
``holdout/``) for each unlearning seed and each number of measured rows (``--lr_probe_rows``), as the benchmark
pipelines run contrast (its preset, batch and micro-batch 32), and prints one JSON line per run: the rate picked and
every trial's ``(lr, retain_exact_kept, passed)``; with ``--trace``, also each trial's rows measured after every one
of its cycles (``cycles``: ``[forget_rise, retain_rise, retain_exact_kept]`` per cycle; the training is the same).
Figures only; no record is printed. ``docs/METHODS.md`` (the range test, *How firm the pick is*) holds what it
measured.

The loop cuts a trial to the run's budget, so the budget must hold the range test's five cycles: contrast's preset
takes 16 optimizer steps a cycle (a forget step and its 15 retain steps), 80 in all. With a budget of one step, as
this script had until the fifteenth session, every trial since the cut (2026-12-06) was one cycle long.

    python benchmarks/probe_lr_pick.py --model runs/cache/target-... --data runs/cache/data-... \\
        --seeds 0 1 2 --rows 32 128 --output_dir runs/lr_pick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the target model directory")
    parser.add_argument("--data", required=True, help="a directory holding forget/, retain/ and holdout/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="unlearning seeds (default: 0 1 2)")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[32, 128], help="--lr_probe_rows values (default: 32 128)"
    )
    parser.add_argument("--micro_batch_size", type=int, default=32, help="as the pipelines run contrast (default: 32)")
    parser.add_argument("--output_dir", required=True, help="one run directory per seed and row count goes here")
    parser.add_argument("--trace", action="store_true", help="measure every trial's rows after each of its cycles")
    parser.add_argument(
        "--max_steps",
        type=int,
        default=80,
        help="the run's step budget: it must hold the test's five cycles (contrast's preset: 5 x 16 = 80; default)",
    )
    parser.add_argument(
        "--settle", type=int, default=None, help="--lr_probe_settle (default: unset, the method's preset)"
    )
    parser.add_argument(
        "--no_screen", action="store_true", help="every trial takes all its cycles (a diagnostic of the screen)"
    )
    parser.add_argument(
        "--candidates",
        type=float,
        nargs="+",
        default=None,
        help="try these rates, in this order (default: the test's)",
    )
    args = parser.parse_args(argv)

    import functools

    import obliviate
    from obliviate.train import lr_probe

    if args.trace:  # the loop imports probe_lr from its module when it runs the test
        lr_probe.probe_lr = functools.partial(lr_probe.probe_lr, trace_cycles=True)
    if args.no_screen:
        lr_probe.SCREEN_AFTER = sys.maxsize  # no trial is that long
    if args.candidates:
        lr_probe.CANDIDATES = tuple(args.candidates)

    data = Path(args.data)
    for seed in args.seeds:
        for rows in args.rows:
            out = Path(args.output_dir) / f"rows{rows}-seed{seed}"
            run = obliviate.unlearn(
                args.model,
                forget=str(data / "forget"),
                retain=str(data / "retain"),
                holdout_dir=str(data / "holdout"),
                output_dir=str(out),
                max_steps=args.max_steps,
                stop_check_steps=0,
                seed=seed,
                overwrite=True,
                lr_probe_rows=rows,
                lr_probe_settle=args.settle,
                micro_batch_size=args.micro_batch_size,
            )
            lines = (json.loads(line) for line in (out / "metrics.jsonl").open())
            trials = [line["lr_probe"] for line in lines if "lr_probe" in line]
            picked = {"seed": seed, "rows": rows, "lr": run.result.lr}
            picked["trials"] = [(t["lr"], t["retain_exact_kept"], t["passed"]) for t in trials]
            if args.trace:
                picked["cycles"] = {t["lr"]: t["cycles"] for t in trials}
            print(json.dumps(picked), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
