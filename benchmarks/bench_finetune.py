"""Fine-tuning throughput on CPU, which decides how long the demo takes to build its target and oracle.

Three measurements on synthetic people (short QA answers and long biographies mixed, as in the demo) and the tiny
OLMo, each through the real loop (:func:`obliviate.train.run.run_finetune`):

1. **Length-sorted pieces.** A batch of mixed lengths is run as pieces of similar length, each loss weighted by
   its share of the batch's scored tokens: the same gradient as the whole padded batch, far fewer padded tokens.
   Contenders: whole batches (the pieces turned off) and pieces, two epochs each, alternating, each in its own
   process.
2. **Worker processes.** The same fine-tuning as one process with two torch threads, against two processes with one
   thread each running at the same time (what the demo does with target and oracle); aggregate tokens/s, rounds
   alternating.
3. **``--group_by_length``** (transformers' idea: whole steps of similar length). Faster still, but it changes
   which examples share a step; two runs of ``--epochs`` epochs side by side, answer-token NLL on the training data
   afterwards, and the speed of each.

    .venv/bin/python benchmarks/bench_finetune.py [--people 60] [--epochs 30] [--rounds 4] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()


FLOAT_ORDER_NLL = 1e-3
"""Largest answer-NLL gap between pieces and whole batches that floating-point summation order explains."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=60, help="synthetic people (default: 60)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the group_by_length runs (default: 30)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of parts 1 and 2 (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    parser.add_argument("--child", nargs=4, metavar=("WORKDIR", "THREADS", "EPOCHS", "MODE"), help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def finetune(workdir: Path, out: Path, threads: int, epochs: int, mode: str) -> dict:
    """One fine-tuning run through the real loop; ``mode`` is pieces, whole or grouped."""
    import torch

    import obliviate.train.step as step
    from obliviate.config import FinetuneConfig
    from obliviate.train.run import run_finetune

    torch.set_num_threads(threads)
    if mode == "whole":
        step.length_pieces = lambda lengths, *a, **k: [list(range(len(lengths)))]
    config = FinetuneConfig(
        output_dir=str(out),
        model=str(workdir / "init"),
        data=[str(workdir / "data" / "forget"), str(workdir / "data" / "retain")],
        epochs=epochs,
        lr=3e-3,
        batch_size=16,
        micro_batch_size=16,
        group_by_length=mode == "grouped",
        save_checkpoints=False,
        overwrite=True,
    )
    started, wall_start = time.perf_counter(), time.time()
    result = run_finetune(config)
    seconds, wall_end = time.perf_counter() - started, time.time()
    return {
        "tokens": result.tokens_seen,
        "seconds": seconds,
        "start": wall_start,
        "end": wall_end,
        "answer_nll": answer_nll(workdir, out),
    }


def answer_nll(workdir: Path, model_dir: Path) -> float:
    """Token-weighted answer NLL of the trained model on its training data (lower: memorised better)."""
    import torch

    from obliviate.data.batching import collate, encode_record
    from obliviate.data.load import load_split
    from obliviate.losses.common import IGNORE_INDEX
    from obliviate.models.load import load_model

    model, tokenizer = load_model(model_dir)
    records = load_split(workdir / "data" / "forget") + load_split(workdir / "data" / "retain")
    encoded = [encode_record(tokenizer, r, 512) for r in records]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), 32):
            batch = collate(encoded[start : start + 32], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
            labels = batch.labels[:, 1:]
            scored = labels != IGNORE_INDEX
            logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total -= float((logp * scored).sum())
            count += int(scored.sum())
    return total / count


def spawn(workdir: Path, threads: int, epochs: int, mode: str, tag: str) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    args = [sys.executable, __file__, "--child", str(workdir), str(threads), str(epochs), f"{mode}:{tag}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


def collect(*processes: subprocess.Popen) -> list[dict]:
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a child run failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def prepare(workdir: Path, people: int, seed: int) -> None:
    from obliviate.data.synth import synthesize, write_synth
    from obliviate.models.tiny import init_model

    data = synthesize(people=people, forget_fraction=0.1, holdout_fraction=0.1, seed=seed)
    write_synth(data, workdir / "data")
    init_model(data.forget + data.retain, workdir / "init", size="tiny", seed=seed)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        workdir, threads, epochs, mode = args.child
        mode, tag = mode.split(":")
        print(json.dumps(finetune(Path(workdir), Path(workdir) / f"out-{tag}", int(threads), int(epochs), mode)))
        return None
    with tempfile.TemporaryDirectory(prefix="bench_finetune-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, args.people, args.seed)
        pieces, workers = [], []
        for round_ in range(args.rounds):
            # part 1: whole batches against pieces, one one-thread process each, two epochs each, alternating
            whole, split = (collect(spawn(workdir, 1, 2, mode, f"p{round_}{mode}"))[0] for mode in ("whole", "pieces"))
            pieces.append((whole, split))
            # part 2: one process with two threads against two one-thread processes at once
            one = collect(spawn(workdir, 2, 2, "pieces", f"w{round_}a"))[0]
            pair = collect(*(spawn(workdir, 1, 2, "pieces", f"w{round_}b{i}") for i in range(2)))
            workers.append((one, pair))
        grouped, plain = collect(
            spawn(workdir, 1, args.epochs, "grouped", "g"), spawn(workdir, 1, args.epochs, "pieces", "u")
        )
    result = summarise(args, pieces, workers, grouped, plain)
    report(result, _common.exact_command("bench_finetune.py", build_parser(), args), args.write)
    return result


def summarise(args, pieces, workers, grouped, plain) -> dict:
    speed = [s["tokens"] / s["seconds"] / (w["tokens"] / w["seconds"]) for w, s in pieces]
    # aggregate of the pair: both runs' tokens over the span from the first one's training start to the last one's
    # end (imports excluded on both sides, as for the single process)
    parallel = [
        (pair[0]["tokens"] + pair[1]["tokens"])
        / (max(p["end"] for p in pair) - min(p["start"] for p in pair))
        / (one["tokens"] / one["seconds"])
        for one, pair in workers
    ]
    return {
        "people": args.people,
        "pieces_speedup": _common.ratio_summary(speed),
        "workers_speedup": _common.ratio_summary(parallel),
        "pieces_nll_gap": max(abs(w["answer_nll"] - s["answer_nll"]) for w, s in pieces),
        "grouped": grouped,
        "ungrouped": plain,
        "epochs": args.epochs,
        "cpu_cores": _common.cpu_cores(),
    }


def speed(run: dict) -> float:
    return run["tokens"] / run["seconds"]


def pieces_sentence(nll_gap: float) -> str:
    """What the answer-NLL gap between pieces and whole batches after two epochs shows."""
    if nll_gap <= FLOAT_ORDER_NLL:
        return (
            "Pieces gave the same update as the whole batch, up to floating-point order: the largest difference in "
            f"answer NLL after two epochs was {nll_gap:.1e} (`tests/test_train.py` checks the weights)."
        )
    return (
        f"Pieces did not give the same update as the whole batch here: answer NLL after two epochs differed by up to "
        f"{nll_gap:.4f}, more than floating-point order explains (≤ {FLOAT_ORDER_NLL:g})."
    )


def grouping_sentence(grouped: dict, ungrouped: dict, epochs: int) -> str:
    """How ``--group_by_length`` compared with pieces on speed and on memorisation (answer NLL, lower = better)."""
    ratio = speed(grouped) / speed(ungrouped)
    pace = "faster than" if ratio > 1.05 else "slower than" if ratio < 0.95 else "about as fast as"
    nll, reference = grouped["answer_nll"], ungrouped["answer_nll"]
    if nll >= 2 * reference:
        memorised = "memorised far worse"
    elif nll > 1.1 * reference:
        memorised = "memorised worse"
    elif nll * 1.1 < reference:
        memorised = "memorised better"
    else:
        memorised = "memorised about as well"
    return (
        f"Grouping whole steps by length ran {pace} length-sorted pieces ({ratio:.2f}x the tokens/s) and "
        f"{memorised} in the same {epochs} epochs (answer NLL {nll:.3f} against {reference:.3f})."
    )


def report(result: dict, command: str, write: bool) -> None:
    p, w = result["pieces_speedup"], result["workers_speedup"]
    g, u = result["grouped"], result["ungrouped"]

    def spread(r: dict) -> list[str]:
        return [f"{r['median']:.2f}x", f"{r['min']:.2f}–{r['max']:.2f}"]

    rows = [
        ["length-sorted pieces vs whole padded batches (1 thread)", *spread(p)],
        ["two 1-thread processes vs one 2-thread process (aggregate)", *spread(w)],
        [
            f"--group_by_length vs pieces, {result['epochs']} epochs side by side",
            f"{speed(g) / speed(u):.2f}x",
            "one run each",
        ],
    ]
    table = _common.markdown_table(["comparison", "tokens/s ratio (median)", "range over rounds"], rows)
    memo = _common.markdown_table(
        ["batching", "answer NLL on the training data after training", "tokens/s"],
        [
            ["random steps, length-sorted pieces (the default)", f"{u['answer_nll']:.3f}", f"{speed(u):,.0f}"],
            ["--group_by_length", f"{g['answer_nll']:.3f}", f"{speed(g):,.0f}"],
        ],
    )
    _common.emit("bench_finetune", table + "\n\n" + memo, result)
    if not write:
        return
    body = "\n".join(
        [
            "## Fine-tuning throughput",
            "",
            f"Measured {_common.utc_date()} with `{command}` ({result['people']} synthetic people, tiny OLMo, "
            f"batch 16, {result['cpu_cores']} CPU cores; each contender in its own process, rounds alternating).",
            "",
            table,
            "",
            f"{pieces_sentence(result['pieces_nll_gap'])} Memorisation after the same epochs, two runs side by side:",
            "",
            memo,
            "",
            f"{grouping_sentence(g, u, result['epochs'])} `--group_by_length` is off by default; the demo uses "
            "pieces and worker processes, both on by default.",
        ]
    )
    _common.write_section("bench_finetune", body)
    _common.write_readme_line("readme:bench_finetune", readme_line(result))


def readme_line(result: dict) -> str:
    """The README's summary bullet: the two speed-ups the demo uses by default."""
    return (
        f"- fine-tuning runs **{result['pieces_speedup']['median']:.2f}×** faster with length-sorted pieces (same "
        f"update) and **{result['workers_speedup']['median']:.2f}×** with two one-thread processes instead of one "
        f"two-thread process on {result['cpu_cores']} cores (medians; `bench_finetune.py`)."
    )


if __name__ == "__main__":
    main()
