"""Evaluation speed: obliviate's evaluator against the official SemEval-2025 Task 4 loop, one row at a time.

Contender A is :func:`obliviate.evaluate.suite.evaluate_model` on the forget and retain rows with ``people=[]``,
so that it runs only what the official script runs (no PII-leak probes; MIA, forget quality and MMLU are skipped
too): one batched forward pass and batched greedy generation per split, then the pure scorers. Contender B
reimplements the organisers' ``evaluate_generations.py`` loop: for each row, ``generate`` greedily from the raw
prompt with batch 1, then a separate forward pass on ``prompt + answer`` (prompt tokens masked) for the NLL, then
ROUGE-L recall (completion rows) and exact match (QA rows) as the official ``compute_metrics`` scores them.

Both run on the same tiny OLMo, briefly fine-tuned on the same seeded sample of LUME Task2 rows (so generations are
not trivial), interleaved A, B, A, B in one process. Reported: the speed-up (goal >= 10x), the share of identical
generations, and the largest difference in an aggregate.

    .venv/bin/python benchmarks/bench_eval.py [--rows 120] [--max_new_tokens 64] [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from obliviate.config import FinetuneConfig  # noqa: E402
from obliviate.data.batching import collate, encode_record  # noqa: E402
from obliviate.data.load import load_split  # noqa: E402
from obliviate.data.records import Record, answer_prefix  # noqa: E402
from obliviate.evaluate import suite  # noqa: E402
from obliviate.evaluate.data import EvalData, sample_records  # noqa: E402
from obliviate.evaluate.suite import EvalOptions, evaluate_model  # noqa: E402
from obliviate.losses import FINETUNE  # noqa: E402
from obliviate.losses.common import mean_nll  # noqa: E402
from obliviate.models.tiny import build_model, count_parameters, train_tokenizer  # noqa: E402
from obliviate.train.loop import train  # noqa: E402

GOAL = 10.0
SPLITS = ("forget", "retain")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(_common.LUME_DIR), help="LUME directory with forget.jsonl/retain.jsonl")
    parser.add_argument("--rows", type=int, default=120, help="Task2 rows, half forget, half retain (default: 120)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="greedy generation length (default: 64)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each contender (default: 2)")
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs on the rows (default: 20)")
    parser.add_argument("--batch_size", type=int, default=32, help="obliviate's evaluation batch size (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="row sample and model initialisation")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--device", default="cpu", help="where both evaluators run, e.g. cuda (default: cpu)")
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    return parser.parse_args(argv)


def task2_sample(data_dir: str, rows: int, seed: int) -> tuple[dict[str, list[Record]], list[Record]]:
    """A seeded sample of Task2 rows per split (whole people kept together), and every Task2 row (tokenizer)."""
    splits, everything = {}, []
    for split in SPLITS:
        task2 = [r for r in load_split(data_dir, split=split) if r.task == "Task2"]
        everything += task2
        splits[split] = sample_records(task2, rows // 2, seed)
    return splits, everything


def finetuned_model(splits: dict[str, list[Record]], vocabulary: list[Record], args: argparse.Namespace):
    """A tiny OLMo trained through the real loop on the sampled rows, so that it regurgitates some of them."""
    tokenizer = train_tokenizer([r.text for r in vocabulary], vocab_size=4096)
    model = build_model("tiny", len(tokenizer), tokenizer=tokenizer, seed=args.seed)
    records = splits["forget"] + splits["retain"]
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as workdir, contextlib.redirect_stderr(io.StringIO()):
        config = FinetuneConfig(output_dir=workdir, model="tiny", data=["-"], epochs=args.epochs, seed=args.seed,
                                save_checkpoints=False, mixed_precision="no")  # fmt: skip
        train(model, tokenizer, method=FINETUNE, params=FINETUNE.params(), forget=records, retain=None, config=config)
    return model.to(args.device).eval(), tokenizer


@torch.no_grad()
def official_loop(model, tokenizer, splits: dict[str, list[Record]], max_new_tokens: int,
                  phases: dict[str, float]) -> dict[str, dict]:  # fmt: skip
    """The organisers' inference loop, row by row: batch-1 greedy generation, then a separate NLL forward pass.

    As in ``evaluate_generations.py``: the prompt is the raw input; the NLL is HF's ``loss`` on the tokenised
    ``input + output`` (no separator, no eos) with the first ``len(tokenised input)`` positions masked; padding
    is the eos token; output decoded with ``skip_special_tokens`` and ``clean_up_tokenization_spaces``. Seconds
    spent in generation and in the NLL forward passes are added to ``phases``.
    """
    model.eval()
    outputs = {}
    for split in ("retain", "forget"):  # the official order
        for record in splits[split]:
            input_ids = tokenizer(record.input, return_tensors="pt").input_ids.to(model.device)
            combined = tokenizer(record.input + record.output, return_tensors="pt").input_ids.to(model.device)
            labels = combined.clone()
            labels[:, : input_ids.shape[1]] = -100
            started = time.perf_counter()
            out = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
            generation = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True,
                                                clean_up_tokenization_spaces=True)[0]  # fmt: skip
            generated = time.perf_counter()
            nll = model(combined, labels=labels).loss.item()
            phases["generation"] += generated - started
            phases["forward pass (NLL)"] += time.perf_counter() - generated
            outputs[record.id] = {"generation": generation, "nll": nll}
    return outputs


def official_scores(splits: dict[str, list[Record]], outputs: dict[str, dict]) -> dict[str, float]:
    """The official ``compute_metrics`` on Task2 rows: per split mean ROUGE-L recall / exact match / NLL, and the
    harmonic mean of the four terms (forget terms inverted)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    aggregates, terms = {}, []
    for split in SPLITS:
        rouge, exact = [], []
        for record in splits[split]:
            generated = outputs[record.id]["generation"]
            if record.kind == "completion":
                rouge.append(scorer.score(str(record.output), str(generated))["rougeL"].recall)
            elif record.kind == "qa":
                exact.append(int(str(record.output).strip().lower() == str(generated).strip().lower()))
        aggregates[f"{split}/rougeL_recall"] = float(np.mean(rouge))
        aggregates[f"{split}/exact_match"] = float(np.mean(exact))
        aggregates[f"{split}/mean_nll"] = float(np.mean([outputs[r.id]["nll"] for r in splits[split]]))
        split_terms = [aggregates[f"{split}/rougeL_recall"], aggregates[f"{split}/exact_match"]]
        terms += [1 - v for v in split_terms] if split == "forget" else split_terms
    aggregates["task_aggregate"] = statistics.harmonic_mean(terms)
    return aggregates


def obliviate_scores(result) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """The same aggregates from obliviate's result, its generations and its per-row answer NLL."""
    aggregates = {}
    for split in SPLITS:
        rows = [r for r in result.per_example if r["split"] == split]
        aggregates[f"{split}/rougeL_recall"] = result.value("rougeL_recall", split)
        aggregates[f"{split}/exact_match"] = result.value("exact_match", split)
        aggregates[f"{split}/mean_nll"] = float(np.mean([r["answer_nll"] for r in rows]))
    aggregates["task_aggregate"] = result.semeval["task_aggregate"]
    generations = {r["id"]: r["generation"] for r in result.per_example}
    return aggregates, generations, {r["id"]: r["answer_nll"] for r in result.per_example}


@torch.no_grad()
def one_row_nll_checks(model, tokenizer, splits: dict[str, list[Record]]) -> tuple[dict[str, float], dict[str, float]]:
    """Untimed checks, one row at a time: each row's answer NLL on obliviate's own tokens (no padding), and each
    split's mean NLL by the official formula once the separator and eos obliviate trains with are added."""
    same_tokens, official_with_separator = {}, {}
    for split in SPLITS:
        values = []
        for record in splits[split]:
            batch = collate([encode_record(tokenizer, record, 512)], tokenizer.pad_token_id).to(model.device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            same_tokens[record.id] = float(mean_nll(logits, batch.labels))
            prompt = tokenizer(record.input, return_tensors="pt").input_ids
            text = tokenizer(record.input + answer_prefix(record) + record.output, return_tensors="pt").input_ids
            ids = torch.cat([text, torch.tensor([[tokenizer.eos_token_id]])], dim=1).to(model.device)
            labels = ids.clone()
            labels[:, : prompt.shape[1]] = -100
            values.append(model(ids, labels=labels).loss.item())
        official_with_separator[f"{split}/mean_nll"] = float(np.mean(values))
    return same_tokens, official_with_separator


def time_suite_passes(phases: dict[str, float]) -> None:
    """Wrap the two passes the suite calls so that their seconds add up in ``phases`` (the rest is scoring)."""
    for attribute, phase in (("forward_pass", "forward pass (NLL)"), ("generate", "generation")):
        original = getattr(suite, attribute)

        def timed(*args, _original=original, _phase=phase, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                phases[_phase] += time.perf_counter() - started

        setattr(suite, attribute, timed)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    splits, vocabulary = task2_sample(args.data, args.rows, args.seed)
    model, tokenizer = finetuned_model(splits, vocabulary, args)
    data = EvalData(splits=splits, people=[])
    options = EvalOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, show_progress=False)

    phases = {"obliviate": defaultdict(float), "official": defaultdict(float)}
    time_suite_passes(phases["obliviate"])

    def contender_obliviate():
        return obliviate_scores(evaluate_model(model, tokenizer, data, options))

    def contender_official():
        outputs = official_loop(model, tokenizer, splits, args.max_new_tokens, phases["official"])
        return official_scores(splits, outputs), outputs

    timings = _common.interleave([contender_obliviate, contender_official], args.rounds)
    speedups = [t_official / t_obliviate for (t_obliviate, _), (t_official, _) in zip(*timings)]
    (ours, generations, our_nll), (theirs, outputs) = timings[0][0][1], timings[1][0][1]
    ids = list(generations)
    identical = sum(generations[i] == outputs[i]["generation"] for i in ids) / len(ids)
    same_tokens, official_with_separator = one_row_nll_checks(model, tokenizer, splits)
    gaps = {name: abs(ours[name] - theirs[name]) for name in ours}
    result = {
        "rows": len(ids), "rows_per_split": {s: len(splits[s]) for s in SPLITS}, "parameters": count_parameters(model),
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "epochs": args.epochs, "threads": torch.get_num_threads(), "device": str(args.device),
        "obliviate_seconds": [round(t, 3) for t, _ in timings[0]],
        "official_seconds": [round(t, 3) for t, _ in timings[1]],
        "speedups": [round(s, 3) for s in speedups], "speedup_median": statistics.median(speedups),
        "identical_generations": identical, "aggregates_obliviate": ours, "aggregates_official": theirs,
        "aggregate_gaps": gaps, "largest_gap_name": max(gaps, key=gaps.get), "largest_gap": max(gaps.values()),
        "largest_gap_excluding_nll": max(v for k, v in gaps.items() if not k.endswith("mean_nll")),
        "max_row_nll_gap_same_tokens": max(abs(our_nll[i] - same_tokens[i]) for i in ids), "goal": GOAL,
        "phases": phase_table(phases, timings), "official_nll_with_separator_and_eos": official_with_separator,
        "max_nll_gap_with_separator_and_eos": max(abs(ours[k] - v) for k, v in official_with_separator.items()),
    }  # fmt: skip
    report(result, argv, args.write)
    return result


def phase_table(phases: dict[str, dict[str, float]], timings) -> dict[str, dict[str, float]]:
    """Seconds per phase over all rounds for each contender; "scoring and the rest" is what the passes leave."""
    totals = {"obliviate": sum(t for t, _ in timings[0]), "official": sum(t for t, _ in timings[1])}
    table = {}
    for name in ("generation", "forward pass (NLL)"):
        table[name] = {who: phases[who][name] for who in totals}
    table["scoring and the rest"] = {who: totals[who] - sum(phases[who].values()) for who in totals}
    table["total"] = totals
    return table


def report(result: dict, argv: list[str], write: bool) -> None:
    speed = _common.markdown_table(
        ["contender", "seconds per round", "rows"],
        [["obliviate `evaluate_model` (batched)", " / ".join(f"{t:.1f}" for t in result["obliviate_seconds"]),
          result["rows"]],
         ["official loop, one row at a time", " / ".join(f"{t:.1f}" for t in result["official_seconds"]),
          result["rows"]]],
    )  # fmt: skip
    phase_rows = [[name, f"{v['official']:.2f}", f"{v['obliviate']:.2f}", f"{v['official'] / v['obliviate']:.1f}×"]
                  for name, v in result["phases"].items()]  # fmt: skip
    phases = _common.markdown_table(["phase (all rounds)", "official s", "obliviate s", "speed-up"], phase_rows)
    names = list(result["aggregates_obliviate"])
    agreement = _common.markdown_table(
        ["aggregate", "obliviate", "official loop", "|difference|"],
        [[name, f"{result['aggregates_obliviate'][name]:.4f}", f"{result['aggregates_official'][name]:.4f}",
          f"{result['aggregate_gaps'][name]:.4f}"] for name in names],
    )  # fmt: skip
    verdict = "met" if result["speedup_median"] >= GOAL else "not met"
    headline = (
        f"**Speed-up: {result['speedup_median']:.1f}×** (median of {result['rounds']} interleaved rounds: "
        f"{', '.join(f'{s:.1f}×' for s in result['speedups'])}; goal ≥ {GOAL:.0f}×: {verdict} on "
        f"{_device_name(result)}). **Identical generations: {result['identical_generations']:.1%}** of "
        f"{result['rows']} rows. **Largest aggregate difference: {result['largest_gap_excluding_nll']:.4f}** among "
        f"the scores the official script reports (ROUGE-L recall, exact match, task aggregate); the mean NLL "
        f"differs by up to {result['largest_gap']:.2f} nats ({result['largest_gap_name']}) because the two "
        "define it on different tokens (below)."
    )
    _common.emit("bench_eval", "\n\n".join([speed, phases, agreement, headline]), result)
    if write:
        _common.write_section("bench_eval", section(result, speed, phases, agreement, headline, argv))
        _common.write_readme_line("readme:bench_eval", readme_line(result))


def readme_line(result: dict) -> str:
    """The README's summary bullet, from the same figures as the section."""
    verdict = "met" if result["speedup_median"] >= GOAL else "not met"
    return (
        f"- the evaluator is **{result['speedup_median']:.1f}×** faster than a one-row-at-a-time reimplementation of "
        f"the official SemEval loop on {_device_name(result)} ({result['rows']} rows), with "
        f"{result['identical_generations']:.1%} identical generations and aggregates that differ by at most "
        f"{result['largest_gap_excluding_nll']:.4f} (goal ≥ {GOAL:.0f}×: {verdict});"
    )


def _device_name(result: dict) -> str:
    return "CPU" if result["device"] == "cpu" else result["device"]


def describe(result: dict) -> str:
    per_split = result["rows_per_split"]
    return (
        f"A seeded sample of LUME Task2 rows ({per_split['forget']} forget + {per_split['retain']} retain, whole "
        f"people kept together) and a `tiny` OLMo ({result['parameters']:,} parameters, fp32, {_device_name(result)}, "
        f"{result['threads']} torch thread) fine-tuned on them for {result['epochs']} epochs through obliviate's "
        f"loop so that generations are non-trivial; greedy, `max_new_tokens` {result['max_new_tokens']}. "
        "obliviate: `evaluate_model` with `EvalData(people=[])`, so it runs no PII-leak probes (and, with no "
        "holdout, oracle or MMLU, no MIA, forget quality or final score): one batched forward pass and batched "
        f"generation (batch {result['batch_size']}; short-answer and long-answer prompts in separate passes) "
        "per split, "
        "then the scorers. Official: a reimplementation of "
        "the organisers' `evaluate_generations.py` inference loop (per row: `generate` with batch 1 from the raw "
        "prompt, then a separate forward pass on `input + output` for the NLL) followed by its `compute_metrics` "
        "scoring. Rounds interleaved A, B, A, B in one process; seconds are shown only for context."
    )


def why_cpu(result: dict) -> str:
    generation = result["phases"]["generation"]
    forward = result["phases"]["forward pass (NLL)"]
    return (
        "Why the speed-up is small on a CPU: with one thread the model's arithmetic grows with the batch, so "
        "batching saves only the per-call Python and dispatch overhead. Generation gains "
        f"{generation['official'] / generation['obliviate']:.1f}×, and a batch keeps computing rows that have "
        "already emitted eos until its longest row ends (the sort is by prompt length, so the few long completion "
        "rows share a batch with many short QA rows). The batched forward pass runs at "
        f"{forward['official'] / forward['obliviate']:.1f}× the speed of the per-row passes: short QA rows are "
        "padded to the longest completion "
        "row in their batch, and `forward_pass` also computes the Min-K%++ statistics (mean and spread of log p "
        "over the whole vocabulary at every position) for every row, though no MIA is requested here. On a GPU a "
        "model this small is bound by kernel launches, so a batch-32 step should cost about what a batch-1 step "
        "does; that is where the 10× goal is meant to be met, and `--device cuda` runs the same comparison there "
        "(not measured: this session had no GPU)."
    )


def section(result: dict, speed: str, phases: str, agreement: str, headline: str, argv: list[str]) -> str:
    nll_note = (
        "The NLL means differ by definition, not by numerics: the official loop tokenises `input + output` glued "
        "together with no separator and no eos (`...Her Social` + `Security Number...` becomes `SocialSecurity`; "
        "a question's `?` runs into its answer) and masks `len(tokenised input)` positions, whereas obliviate "
        "tokenises prompt and answer separately with one separating space, as the model was trained, and scores "
        "the eos. On obliviate's own tokens, one row at a time, the per-row NLL differs from the batched pass by at "
        f"most {result['max_row_nll_gap_same_tokens']:.1e} (padding and batching numerics only); and the official "
        "formula applied to `input + separator + output + eos` gives split means within "
        f"{result['max_nll_gap_with_separator_and_eos']:.1e} of obliviate's."
    )
    ours = result["aggregates_obliviate"]
    zero = [name for name in ours if name.endswith(("retain/exact_match", "retain/rougeL_recall")) and ours[name] == 0]
    zero += [name for name in ours if name.startswith("forget/") and not name.endswith("nll") and ours[name] == 1]
    if ours["task_aggregate"] == 0 and zero:
        nll_note += (
            f" The task aggregate is 0 for both because a harmonic-mean term is 0 ({', '.join(zero)}) for this "
            "briefly trained tiny model."
        )
    command = _common.reproduce_command("bench_eval.py", argv)
    reproduce = (
        f"Reproduce: `{command}` (measured {_common.utc_date()}). `--rows 3000 --max_new_tokens 256` evaluates "
        "every Task2 row at the official generation length (long on a CPU); `--epochs 30` trains the model until "
        "it answers some QA rows exactly."
    )
    parts = ["## Evaluation speed", describe(result), speed, headline, phases]
    if result["device"] == "cpu" and result["speedup_median"] < GOAL:
        parts.append(why_cpu(result))
    return "\n\n".join(parts + [agreement, nll_note, reproduce])


if __name__ == "__main__":
    main()
