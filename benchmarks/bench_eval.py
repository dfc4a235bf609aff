"""Evaluation speed and official-mode fidelity: ``obliviate evaluate`` against a faithful copy of the SemEval-2025
Task 4 organisers' loop (``official_loop.py``), each a fresh process, start-up included.

Contender A is the command a user runs, ``obliviate evaluate --no_probes --no_exposure`` (no PII-leak probes, no
exposure: the official script's work, every row generated greedily for ``--max_new_tokens`` and scored for its
NLL). Contender B is ``python official_loop.py`` (bfloat16, one row at a time, as the organisers' script).
Contender C is ``obliviate evaluate --official --no_probes --no_exposure``: its generations are compared with B's
row by row, and its task aggregate and terms with B's, on the target and, with ``--models``, on an oracle (trained
on retain only) and a GA+GD model unlearned from the target.

The rows are a seeded sample of LUME rows of all three tasks (half forget, half retain, whole people kept
together); the model a ``tiny`` OLMo with a tokenizer trained on LUME, fine-tuned on the sample in-process through
obliviate's loop so that it answers and stops. Rounds run A, B, C in turn; seconds are wall clock of each process.

    .venv/bin/python benchmarks/bench_eval.py [--rows 1000] [--max_new_tokens 256] [--models target,oracle,ga_gd]
        [--rounds 1] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()

import torch  # noqa: E402

from obliviate.config import FinetuneConfig, UnlearnConfig  # noqa: E402
from obliviate.data.load import load_split  # noqa: E402
from obliviate.data.records import Record  # noqa: E402
from obliviate.evaluate.data import sample_records  # noqa: E402
from obliviate.losses import FINETUNE, LOSSES  # noqa: E402
from obliviate.models.tiny import build_model, count_parameters, train_tokenizer  # noqa: E402
from obliviate.train.loop import train  # noqa: E402

GOAL = 5.0
GOAL_ROWS = 1000
"""The speed goal holds on at least this many rows; fewer rows show a ratio, not the goal."""
IDENTITY_GOAL = 0.995
OFFICIAL_TOKENS = 256
SPLITS = ("forget", "retain")
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(_common.LUME_DIR), help="LUME directory with forget.jsonl/retain.jsonl")
    parser.add_argument("--rows", type=int, default=1000, help="LUME rows, half forget, half retain (default: 1000)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="greedy generation length (default: 256)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of A, B, C in turn (default: 1)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs on the rows (default: 10)")
    parser.add_argument("--models", default="target", help="official-mode check on: target,oracle,ga_gd")
    parser.add_argument("--batch_size", type=int, default=32, help="obliviate's evaluation batch size (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="row sample and model initialisation")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--device", default="cpu", help="where every contender runs, e.g. cuda (default: cpu)")
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    parser.add_argument(
        "--from_json",
        default=None,
        help="write up a measurement this script printed before (its JSON line) instead of measuring; the other "
        "flags must be the ones it ran with, for the reproduce line",
    )
    return parser.parse_args(argv)


def lume_sample(data_dir: str, rows: int, seed: int) -> tuple[dict[str, list[Record]], list[Record]]:
    """A seeded sample of LUME rows of every task per split (whole people kept together), and every row."""
    splits, everything = {}, []
    for split in SPLITS:
        records = [r for r in load_split(data_dir, split=split) if r.kind in ("completion", "qa")]
        everything += records
        splits[split] = sample_records(records, rows // 2, seed)
    return splits, everything


def _train(model, tokenizer, method, forget, retain, config) -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        train(model, tokenizer, method=method, params=method.params(), forget=forget, retain=retain, config=config)


def build_models(splits, vocabulary, args, root: Path) -> dict[str, Path]:
    """target (fine-tuned on forget + retain), oracle (retain only) and GA+GD (unlearned from the target), saved as
    standard model directories, as many as ``--models`` asks for (the target always)."""
    wanted = {m.strip() for m in args.models.split(",") if m.strip()} | {"target"}
    tokenizer = train_tokenizer([r.text for r in vocabulary], vocab_size=4096)
    common = dict(save_checkpoints=False, mixed_precision="no", seed=args.seed)
    paths = {}
    for name, rows in (("target", splits["forget"] + splits["retain"]), ("oracle", splits["retain"])):
        if name not in wanted:
            continue
        model = build_model("tiny", len(tokenizer), tokenizer=tokenizer, seed=args.seed)
        config = FinetuneConfig(output_dir=str(root / f"work-{name}"), model="tiny", data=["-"], epochs=args.epochs,
                                **common)  # fmt: skip
        _train(model, tokenizer, FINETUNE, rows, None, config)
        paths[name] = _save(model, tokenizer, root / name)
        if name == "target" and "ga_gd" in wanted:
            config = UnlearnConfig.build(model_dir=str(paths[name]), forget_dir="-", retain_dir="-", method="ga_gd",
                                         output_dir=str(root / "work-ga_gd"), epochs=1, stop_check_steps=0,
                                         stop_forget_nll=0, **common)  # fmt: skip
            _train(model, tokenizer, LOSSES["ga_gd"], splits["forget"], splits["retain"], config)
            paths["ga_gd"] = _save(model, tokenizer, root / "ga_gd")
    return paths


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_data(splits: dict[str, list[Record]], root: Path) -> Path:
    """The sample as ``forget.jsonl`` and ``retain.jsonl``, the files both evaluators read."""
    root.mkdir(parents=True)
    for split in SPLITS:
        lines = [json.dumps({"id": r.id, "task": r.task, "input": r.input, "output": r.output}) for r in splits[split]]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _run(command: list[str], args, label: str | None = None) -> str:
    """``command`` in a fresh process with ``--threads`` threads (and no GPU on ``--device cpu``); its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label or ' '.join(command[:4]) + ' ...'} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def obliviate_evaluate(model: Path, data: Path, out: Path, args, official: bool) -> dict:
    """``obliviate evaluate`` in a fresh process; its generations by row id and its SemEval block."""
    command = [sys.executable, "-m", "obliviate.cli.main", "evaluate", "--model", str(model), "--forget_dir",
               str(data), "--retain_dir", str(data), "--output_dir", str(out), "--no_probes", "--no_exposure",
               "--show_pii", "--batch_size", str(args.batch_size)]  # fmt: skip
    command += ["--official"] if official else ["--max_new_tokens", str(args.max_new_tokens)]
    _run(command, args)
    rows = [json.loads(line) for line in (out / "per_example.jsonl").read_text(encoding="utf-8").splitlines()]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {"generations": {r["id"]: r.get("generation", "") for r in rows}, "semeval": results.get("semeval", {})}


def official_copy(model: Path, data: Path, out: Path, args) -> dict:
    """The organisers' loop copy in a fresh process; its generations by row id and its results."""
    _run([sys.executable, str(HERE / "official_loop.py"), "--data_path", str(data), "--checkpoint_path", str(model),
          "--output_dir", str(out), "--max_new_tokens", str(args.max_new_tokens)], args)  # fmt: skip
    import pandas as pd

    generations = {}
    for split in SPLITS:
        frame = pd.read_csv(out / f"{split}_0.csv", keep_default_na=False)
        generations.update({i: str(g) for i, g in zip(frame["id"], frame["model_output"])})
    return {"generations": generations, "results": json.loads((out / "results.json").read_text(encoding="utf-8"))}


COMPONENTS = """
import json, sys, time
started = time.perf_counter()
from obliviate.data.load import load_split
from obliviate.evaluate.passes import forward_and_generate, forward_pass
from obliviate.models.load import load_model
model, tokenizer = load_model(sys.argv[1])
splits = {s: load_split(sys.argv[2], split=s) for s in ("forget", "retain")}
out = {"start-up (imports, model load, data)": time.perf_counter() - started}
began = time.perf_counter()
for name, records in splits.items():
    forward_and_generate(model, tokenizer, records, batch_size=int(sys.argv[4]), max_new_tokens=int(sys.argv[3]),
                         show_progress=False, distribution=False)
out["scoring and greedy generation in one pass (as `evaluate` runs them)"] = time.perf_counter() - began
began = time.perf_counter()
for name, records in splits.items():
    forward_pass(model, tokenizer, records, batch_size=int(sys.argv[4]), show_progress=False, distribution=False)
out["the forward pass alone (every row's NLL; not run by `evaluate`)"] = time.perf_counter() - began
print(json.dumps(out))
"""
"""obliviate's evaluation in its parts, in one fresh process: start-up, then the pass that scores every row's NLL
(the official script computes the same NLLs) and generates greedily, as ``obliviate evaluate`` runs it, then the
forward pass alone, for the share of that pass the scoring takes."""


def components(model: Path, data: Path, args) -> dict[str, float]:
    command = [sys.executable, "-c", COMPONENTS, str(model), str(data), str(args.max_new_tokens), str(args.batch_size)]
    stdout = _run(command, args, label="the component timing")
    return {name: round(seconds, 2) for name, seconds in json.loads(stdout.strip().splitlines()[-1]).items()}


def agreement(ours: dict, theirs: dict) -> dict:
    """Share of identical generations, and the largest gap between task aggregates and between sorted terms."""
    ids = list(theirs["generations"])
    same = sum(ours["generations"].get(i) == theirs["generations"][i] for i in ids) / len(ids)
    their_terms = sorted(theirs["results"]["aggregated-terms"])
    our_terms = sorted(ours["semeval"].get("terms", {}).values())
    gaps = [abs(a - b) for a, b in zip(our_terms, their_terms)] if len(our_terms) == len(their_terms) else [1.0]
    aggregate_gap = abs(ours["semeval"]["task_aggregate"] - theirs["results"]["harmonic-mean-task-aggregate"])
    return {"identical": same, "rows": len(ids), "aggregate_gap": aggregate_gap, "largest_term_gap": max(gaps),
            "aggregate_official": theirs["results"]["harmonic-mean-task-aggregate"],
            "aggregate_obliviate": ours["semeval"]["task_aggregate"]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        result.pop("benchmark", None)
        kept = [a for i, a in enumerate(argv) if a != "--from_json" and (i == 0 or argv[i - 1] != "--from_json")]
        report(result, kept, args.write)
        return result
    torch.set_num_threads(args.threads)
    splits, vocabulary = lume_sample(args.data, args.rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        root = Path(tmp)
        models = build_models(splits, vocabulary, args, root)
        data = write_data(splits, root / "data")
        counter = iter(range(10_000))

        def out() -> Path:
            return root / f"out-{next(counter)}"

        contenders = [
            lambda: obliviate_evaluate(models["target"], data, out(), args, official=False),
            lambda: official_copy(models["target"], data, out(), args),
            lambda: obliviate_evaluate(models["target"], data, out(), args, official=True),
        ]
        fidelity = args.max_new_tokens == OFFICIAL_TOKENS  # --official generates 256 tokens, the copy must too
        timings = _common.interleave(contenders if fidelity else contenders[:2], args.rounds)
        checks = {"target": agreement(timings[2][0][1], timings[1][0][1])} if fidelity else {}
        for name in [m for m in models if m != "target" and fidelity]:
            checks[name] = agreement(obliviate_evaluate(models[name], data, out(), args, official=True),
                                     official_copy(models[name], data, out(), args))  # fmt: skip
        parts = components(models["target"], data, args)
        parameters = count_parameters(build_model("tiny", 4096, seed=args.seed))
    seconds = {
        name: [round(t, 2) for t, _ in timing] for name, timing in zip(("default", "copy", "official"), timings)
    }
    speedups = [b / a for a, b in zip(seconds["default"], seconds["copy"])]
    result = {
        "rows": sum(len(v) for v in splits.values()), "rows_per_split": {s: len(splits[s]) for s in SPLITS},
        "tasks": sorted({r.task for v in splits.values() for r in v}), "parameters": parameters,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "epochs": args.epochs, "threads": args.threads, "device": str(args.device), "seconds": seconds,
        "speedups": [round(s, 3) for s in speedups], "speedup_median": statistics.median(speedups),
        "official_speedup_median": statistics.median([b / a for a, b in zip(seconds.get("official", [1.0]),
                                                                            seconds["copy"])]),
        "checks": checks, "goal": GOAL, "identity_goal": IDENTITY_GOAL, "components": parts,
    }  # fmt: skip
    report(result, argv, args.write)
    return result


def _device_name(result: dict) -> str:
    return f"CPU, {result['threads']} thread(s)" if result["device"] == "cpu" else result["device"]


def report(result: dict, argv: list[str], write: bool) -> None:
    s = {name: " / ".join(f"{t:.1f}" for t in values) for name, values in result["seconds"].items()}
    speed = _common.markdown_table(
        ["contender (fresh process, start-up included)", "seconds per round", "rows"],
        [["`obliviate evaluate --no_probes --no_exposure`", s["default"],
          result["rows"]],
         ["official loop copy (`official_loop.py`, bf16, one row at a time)", s["copy"],
          result["rows"]],
         ["`obliviate evaluate --official --no_probes --no_exposure`", s["official"],
          result["rows"]]],
    )  # fmt: skip
    fidelity = _common.markdown_table(
        ["model", "identical generations (`--official` vs copy)", "task aggregate (copy / obliviate)",
         "largest term gap"],
        [[name, f"{c['identical']:.1%} of {c['rows']}",
          f"{c['aggregate_official']:.4f} / {c['aggregate_obliviate']:.4f}", f"{c['largest_term_gap']:.1e}"]
         for name, c in result["checks"].items()],
    )  # fmt: skip
    verdict = speed_verdict(result)
    if not result["checks"]:  # --max_new_tokens other than 256: no --official run to compare
        result["checks"] = {"none (needs --max_new_tokens 256)": {"identical": float("nan"), "rows": 0,
                            "aggregate_gap": float("nan"), "largest_term_gap": float("nan"),
                            "aggregate_official": float("nan"), "aggregate_obliviate": float("nan")}}  # fmt: skip
        s.setdefault("official", "not run")
        result["official_speedup_median"] = float("nan")
    worst = min(c["identical"] for c in result["checks"].values())
    same = all(c["aggregate_gap"] < 1e-9 and c["largest_term_gap"] < 1e-9 for c in result["checks"].values())
    zero = all(c["aggregate_official"] == 0 for c in result["checks"].values())
    headline = (
        f"**Speed-up: {result['speedup_median']:.1f}×** end to end for `obliviate evaluate` against the official "
        f"loop copy on {result['rows']} rows ({_device_name(result)}; {verdict}); `--official` takes "
        f"{1 / result['official_speedup_median']:.2f}× the copy's time. **`--official` "
        f"fidelity: {worst:.1%}** identical generations at worst over {', '.join(result['checks'])} (goal ≥ "
        f"{IDENTITY_GOAL:.1%}); task aggregates and terms {'equal' if same else 'differ'}"
        + (
            " (every aggregate is 0 here: the tiny model scores 0 on some term, so equal aggregates say little)."
            if zero
            else "."
        )
    )
    parts = breakdown(result)
    _common.emit("bench_eval", "\n\n".join([speed, fidelity, headline, parts]), result)
    if write:
        _common.write_section("bench_eval", section(result, speed, fidelity, headline + "\n\n" + parts, argv))
        _common.write_readme_line("readme:bench_eval", readme_line(result, worst))


def breakdown(result: dict) -> str:
    """Where obliviate's time goes, and what that leaves of the goal: start-up and the forward pass are work any
    evaluation that reports the official script's NLLs must do."""
    parts = result.get("components")
    if not parts:
        return ""
    table = _common.markdown_table(
        ["part of `obliviate evaluate` (one fresh process, the same rows)", "seconds"],
        [[name, f"{seconds:.1f}"] for name, seconds in parts.items()],
    )
    floor = sum(seconds for name, seconds in parts.items() if not name.startswith("scoring"))
    budget = statistics.median(result["seconds"]["copy"]) / GOAL
    return (
        f"{table}\n\nStart-up and the forward pass alone would take {floor:.1f} s, "
        f"{'more' if floor > budget else 'less'} than the {budget:.1f} s that a {GOAL:.0f}× speed-up over the copy "
        "allows for the whole run, generation included."
    )


def speed_verdict(result: dict) -> str:
    """The goal (≥ 5× on ≥ 1,000 rows) as the measurement supports it: met, not met, or not shown on fewer rows."""
    goal = f"goal ≥ {GOAL:.0f}× on ≥ {GOAL_ROWS:,} rows"
    if result["rows"] < GOAL_ROWS:
        return f"{goal}: not shown, {result['rows']} rows measured"
    return f"{goal}: {'met' if result['speedup_median'] >= GOAL else 'not met'}"


def readme_line(result: dict, worst: float) -> str:
    return (
        f"- `obliviate evaluate` is **{result['speedup_median']:.1f}×** faster end to end than a one-row-at-a-time "
        f"copy of the official SemEval loop on {result['rows']} LUME rows ({_device_name(result)}; "
        f"{speed_verdict(result)}), and `--official` reproduces the copy's generations ({worst:.1%} identical at "
        f"worst over {', '.join(result['checks'])});"
    )


def section(result: dict, speed: str, fidelity: str, headline: str, argv: list[str]) -> str:
    describe = (
        f"A seeded sample of LUME rows of {', '.join(result['tasks'])} ({result['rows_per_split']['forget']} forget + "
        f"{result['rows_per_split']['retain']} retain, whole people kept together) and a `tiny` OLMo "
        f"({result['parameters']:,} parameters) fine-tuned on them for {result['epochs']} epochs through obliviate's "
        f"loop; greedy, {result['max_new_tokens']} new tokens, batch {result['batch_size']}. Every contender is a "
        "fresh process timed from launch to exit (imports, model load, data, generation, NLL, scoring, writing). "
        "The copy (`benchmarks/official_loop.py`) follows the organisers' published `evaluate_generations.py`: "
        "bfloat16 weights, one row at a time, `generate` then a separate NLL pass on `input + output`. obliviate's "
        "default mode runs fp32, batched: one forward pass per refill scores the rows' reference answers and "
        "prefills their generation; greedy rows leave the batch at eos and the next prompts join it; prompts are "
        "taken by reference answer length and, within windows of eight batches, by prompt length; the KV cache "
        "grows in place (`docs/METRICS.md`, Generation)."
    )
    command = _common.reproduce_command("bench_eval.py", argv)
    reproduce = f"Reproduce: `{command}` (measured {_common.utc_date()})."
    return "\n\n".join(["## Evaluation speed and official-mode fidelity", describe, speed, fidelity, headline,
                        reproduce])  # fmt: skip


if __name__ == "__main__":
    main()
