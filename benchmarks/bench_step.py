"""Step throughput: obliviate's ``ga_gd`` optimizer step against a bare PyTorch loop, interleaved in one process.

Contender A is the real loop: :func:`obliviate.train.loop.setup` builds the run (Accelerator, AdamW, schedule,
tokenised data) and each round times one :func:`obliviate.train.loop.train_epoch` (collation, forward on forget and
retain, the ga_gd loss, backward, clipping, AdamW, per-step metrics, the JSON log line and the progress bar).
Contender B is a bare loop over the *same* pre-collated batches (same forget order, same retain draws) doing the
same forward passes, ``-NLL(F) + NLL(R)`` via ``F.cross_entropy``, backward, ``clip_grad_norm_`` and AdamW on an
identical copy of the model. Rounds alternate A, B, A, B after one untimed warm-up round each; the headline is the
median over rounds of ``tokens/s(A) / tokens/s(B)`` (goal >= 0.95).

    .venv/bin/python benchmarks/bench_step.py [--size tiny|small] [--steps 8] [--rounds 12] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from obliviate.config import UnlearnConfig  # noqa: E402
from obliviate.data.batching import collate, forget_order, micro_batches_for_rank, retain_draws  # noqa: E402
from obliviate.data.synth import synthesize  # noqa: E402
from obliviate.losses import get_method  # noqa: E402
from obliviate.losses.common import IGNORE_INDEX  # noqa: E402
from obliviate.models.tiny import build_model, count_parameters, train_tokenizer  # noqa: E402
from obliviate.train.loop import setup, train_epoch  # noqa: E402

GOAL = 0.95
SAME_WORK = 1e-3
"""Largest weight gap, as a share of how far the weights moved, that still counts as the same work (float order)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", help="model size from obliviate.models.tiny.SIZES (default: tiny)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per round (default: 8)")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds of each contender (default: 12)")
    parser.add_argument("--batch_size", type=int, default=8, help="forget rows per step; as many retain rows (8)")
    parser.add_argument("--max_length", type=int, default=256, help="longest tokenised example (default: 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The bare loop's NLL: mean next-token cross-entropy over answer tokens, as an HF model's ``loss``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def bare_round(model, optimizer, batches, max_grad_norm: float) -> int:
    """One round of the bare loop; returns the tokens it processed (forget + retain, padding excluded)."""
    model.train()
    tokens = 0
    for forget, retain in batches:
        forget_logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask, use_cache=False).logits
        retain_logits = model(input_ids=retain.input_ids, attention_mask=retain.attention_mask, use_cache=False).logits
        loss = -answer_nll(forget_logits, forget.labels) + answer_nll(retain_logits, retain.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += forget.num_tokens + retain.num_tokens
    return tokens


def same_batches(run, config, pad_id: int, epoch: int):
    """The batches train_epoch draws for ``epoch`` (same order functions, same seed), collated once up front."""
    order = forget_order(len(run.forget), run.steps_per_epoch, config.batch_size, config.seed, epoch)
    micro = micro_batches_for_rank(order, 1, 0, config.micro_batch_size)
    draws = retain_draws(len(run.retain), [len(m) for m in micro], config.seed, epoch, 0)
    return [
        (collate([run.forget[i] for i in m], pad_id), collate([run.retain[i] for i in d], pad_id))
        for m, d in zip(micro, draws)
    ]


# (label, file name, function name): the parts of train_epoch a profile is broken into; cumulative times
_PARTS = (
    ("model forward (forget + retain)", "loop.py", "_forward"),
    ("ga_gd loss (incl. its 2 .item())", "ga_gd.py", "loss"),
    ("backward", "accelerator.py", "backward"),
    ("gradient clipping", "accelerator.py", "clip_grad_norm_"),
    ("AdamW step", "adam.py", "step"),
    ("zero_grad", "optimizer.py", "zero_grad"),
    ("lr scheduler step", "lr_scheduler.py", "step"),
    ("collate forget + retain", "batching.py", "collate"),
    ("metric reduce (accelerate)", "accelerator.py", "reduce"),
    ("checksum gather (accelerate)", "accelerator.py", "gather"),
    ("retain-draw checksum", "loop.py", "_checksum"),
    ("progress bar", "std.py", "set_postfix_str"),
    ("JSON log line", "bench_step.py", "log"),
)


def profile_round(run_round, steps: int) -> list[tuple[str, float]]:
    """cProfile one obliviate round and break ``train_epoch`` into parts: ``(label, ms per step)``.

    The last row, "other loop bookkeeping", is train_epoch minus every part above it that a bare loop also does
    and minus the listed bookkeeping parts; cProfile inflates Python-heavy parts, so read the shares, not the totals.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    run_round()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    cumulative: dict[tuple[str, str], float] = {}
    for (filename, _, name), (_, _, _, cum, _) in stats.items():
        key = (Path(filename).name, name)
        cumulative[key] = max(cumulative.get(key, 0.0), cum)  # wrappers share names: keep the outermost
    total = cumulative.get(("loop.py", "train_epoch"), 0.0)
    parts = [(label, cumulative.get((file, name), 0.0)) for label, file, name in _PARTS]
    rest = total - sum(seconds for _, seconds in parts)
    per_step = 1000.0 / steps
    return (
        [("train_epoch total", total * per_step)]
        + [(label, s * per_step) for label, s in parts]
        + [("other loop bookkeeping", rest * per_step)]
    )


class Contenders:
    """The two loops on identical copies of one model, each stepping through the same epochs' batches."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        people = max(20, -(-args.steps * args.batch_size // 6) * 2 + 10)
        data = synthesize(people=people, forget_fraction=0.45, holdout_fraction=0.05, seed=args.seed)
        forget = data.forget[: args.steps * args.batch_size]
        self.tokenizer = train_tokenizer([r.text for r in data.forget + data.retain], vocab_size=4096)
        model = build_model(args.size, len(self.tokenizer), tokenizer=self.tokenizer, seed=args.seed)
        self.parameters = count_parameters(model)
        self.initial = [p.detach().clone() for p in model.parameters()]
        self.bare_model = copy.deepcopy(model)
        self.method = get_method("ga_gd")
        self.params = self.method.params()
        self.config = UnlearnConfig(
            output_dir=str(workdir),
            model_dir="-",
            forget_dir="-",
            method="ga_gd",
            epochs=args.rounds + 2,
            batch_size=args.batch_size,
            micro_batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            mixed_precision="no",
        )
        self.run = setup(model, self.tokenizer, self.method, self.params, forget, data.retain, self.config)
        self.bare_optimizer = torch.optim.AdamW(
            [p for p in self.bare_model.parameters() if p.requires_grad],
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
        )
        # the bare loop's batches are collated before timing: collation is counted against obliviate only
        pad_id = self.tokenizer.pad_token_id
        self.batches = {e: same_batches(self.run, self.config, pad_id, e) for e in range(1, args.rounds + 2)}
        self.log_file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 (the progress bar is drawn, then discarded)
        self.epochs = {"obliviate": 0, "bare": 0}

    def log(self, record: dict) -> None:
        """What train() does with every step's record."""
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def obliviate_round(self) -> int:
        self.epochs["obliviate"] += 1
        before = self.run.state["tokens_seen"]
        with contextlib.redirect_stderr(self.devnull):
            self.run.log = self.log
            train_epoch(self.run, self.epochs["obliviate"])
        return self.run.state["tokens_seen"] - before

    def bare_round(self) -> int:
        self.epochs["bare"] += 1
        return bare_round(
            self.bare_model, self.bare_optimizer, self.batches[self.epochs["bare"]], self.config.max_grad_norm
        )

    def weight_gaps(self) -> tuple[float, float]:
        """(largest |obliviate - bare| weight difference, largest change of a weight since the start)."""
        trained = list(self.run.accelerator.unwrap_model(self.run.model).parameters())
        gap = max((a - b).abs().max().item() for a, b in zip(trained, self.bare_model.parameters()))
        moved = max((a - b).abs().max().item() for a, b in zip(trained, self.initial))
        return gap, moved

    def close(self) -> None:
        self.log_file.close()
        self.devnull.close()


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_step-") as workdir:
        result, profile = measure(args, Path(workdir))
    report(result, profile, _common.exact_command("bench_step.py", build_parser(), args), args.write)
    return result


def measure(args: argparse.Namespace, workdir: Path) -> tuple[dict, list[tuple[str, float]]]:
    """Warm up, time the interleaved rounds, check both did the same work, then profile one extra round."""
    contenders = Contenders(args, workdir)
    contenders.obliviate_round()  # warm-up, untimed (epoch 1 for both)
    contenders.bare_round()
    timings = _common.interleave([contenders.obliviate_round, contenders.bare_round], args.rounds)
    gap, moved = contenders.weight_gaps()
    tokens = [t for _, t in timings[0]]
    if tokens != [t for _, t in timings[1]]:
        raise RuntimeError(f"the contenders processed different token counts: {tokens} vs {timings[1]}")
    ratios = [(tokens_a / seconds_a) / (tokens_b / seconds_b)
              for (seconds_a, tokens_a), (seconds_b, tokens_b) in zip(*timings)]  # fmt: skip
    summary = _common.ratio_summary(ratios)
    result = {
        "size": args.size,
        "parameters": contenders.parameters,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "tokens_per_round": tokens[0],
        "obliviate_tokens_per_s": sum(tokens) / sum(t for t, _ in timings[0]),
        "bare_tokens_per_s": sum(tokens) / sum(t for t, _ in timings[1]),
        "ratio_median": summary["median"],
        "ratio_min": summary["min"],
        "ratio_max": summary["max"],
        "per_round_ratios": [round(r, 4) for r in ratios],
        "max_weight_gap": gap,
        "max_weight_change": moved,
        "goal": GOAL,
        "threads": torch.get_num_threads(),
    }
    result["ratio_of_totals"] = result["obliviate_tokens_per_s"] / result["bare_tokens_per_s"]
    profile = profile_round(contenders.obliviate_round, args.steps)  # one extra, untimed round
    result["profile_ms_per_step"] = {label: round(ms, 3) for label, ms in profile}
    contenders.close()
    return result, profile


_EXTRA_WORK = (
    "What the loop does beyond the bare loop, per optimizer step (accumulation 1): it collates two batches; makes 5 "
    "host syncs per micro-batch (`out.loss.item()`, the 2 `.item()` inside the ga_gd loss, `num_tokens` of forget "
    "and of retain) and 5 per step (3 `.item()` after `accelerator.reduce` of the metric dict, whose floats are "
    "first copied back to the device, the token-count reduce, the retain-checksum `gather(...).tolist()`); writes "
    "and flushes one JSON line; refreshes the progress bar."
)
# The rows of the profile that are this extra work (the bare loop does none of it).
_EXTRA_PARTS = (
    "collate forget + retain",
    "metric reduce (accelerate)",
    "checksum gather (accelerate)",
    "retain-draw checksum",
    "progress bar",
    "JSON log line",
    "other loop bookkeeping",
)


def extra_work_text(profile: list[tuple[str, float]]) -> str:
    """What the loop does beyond the bare loop, and the share of ``train_epoch`` it took in ``profile``."""
    ms = dict(profile)
    total = ms.get("train_epoch total", 0.0)
    if total <= 0:
        return _EXTRA_WORK
    share = sum(ms.get(label, 0.0) for label in _EXTRA_PARTS) / total
    return (
        f"{_EXTRA_WORK} In the profile below these parts took {share:.0%} of `train_epoch` ("
        + ", ".join(_EXTRA_PARTS)
        + "). On a GPU each of the ~10 syncs per step would also drain the launch queue, which this CPU benchmark "
        "cannot measure."
    )


def same_work_sentence(max_weight_gap: float, max_weight_change: float) -> str:
    """Whether the two loops did the same work, from how far their weights drifted apart against how far they moved."""
    numbers = (
        f"After all rounds the two models' weights differ by at most {max_weight_gap:.1e}, while weights moved by up "
        f"to {max_weight_change:.1e} from the start"
    )
    if max_weight_change <= 0:
        return f"{numbers}: no weight moved, so this run cannot show whether both loops did the same work."
    if max_weight_gap <= SAME_WORK * max_weight_change:
        return f"{numbers}: both loops did the same work."
    share = max_weight_gap / max_weight_change
    return f"{numbers}: the gap is {share:.1%} of the movement, so the loops did not do the same work."


def describe(result: dict) -> str:
    threads = f"{result['threads']} torch thread{'s' if result['threads'] > 1 else ''}"
    batch = result["batch_size"]
    return (
        "`ga_gd` optimizer steps through the real loop (`obliviate.train.loop.setup` + `train_epoch`: collation, "
        "forward on forget and retain, loss, backward, clipping, AdamW, per-step metrics, JSON log line, progress "
        "bar) against a bare PyTorch loop doing the same forward passes, `-NLL(F) + NLL(R)` with `F.cross_entropy`, "
        "backward, `clip_grad_norm_` and AdamW on an identical copy of the model, over the same batches (same "
        "forget order and retain draws; the bare loop's batches are collated before timing). "
        f"Model: `{result['size']}` OLMo, {result['parameters']:,} parameters, fp32 on CPU ({threads}, shared "
        f"machine); micro-batch {batch} forget + {batch} retain rows of synthetic Task2 data; "
        f"{result['steps_per_round']} steps per round, rounds interleaved A, B, A, B after one untimed warm-up "
        "round each."
    )


def report(result: dict, profile: list[tuple[str, float]], command: str, write: bool) -> None:
    rows = [
        ["obliviate ga_gd (train_epoch)", f"{result['obliviate_tokens_per_s']:,.0f}", result["tokens_per_round"]],
        ["bare PyTorch loop", f"{result['bare_tokens_per_s']:,.0f}", result["tokens_per_round"]],
    ]
    table = _common.markdown_table(["contender", "tokens/s (all rounds)", "tokens per round"], rows)
    ratio_line = (
        f"**obliviate / bare tokens/s: {result['ratio_median']:.3f}** (median of {result['rounds']} interleaved "
        f"rounds; range {result['ratio_min']:.3f}–{result['ratio_max']:.3f}; ratio of the totals "
        f"{result['ratio_of_totals']:.3f}; goal ≥ {GOAL})"
    )
    profile_table = _common.markdown_table(
        ["part of train_epoch (cProfile, one round)", "ms per step"], [[label, f"{ms:.2f}"] for label, ms in profile]
    )
    _common.emit("bench_step", "\n\n".join([table, ratio_line, profile_table]), result)
    if not write:
        return
    per_round = ", ".join(f"{r:.3f}" for r in result["per_round_ratios"])
    sanity = same_work_sentence(result["max_weight_gap"], result["max_weight_change"])
    body = "\n\n".join(
        [
            "## Step throughput",
            describe(result),
            table,
            f"{ratio_line}. Per-round ratios: {per_round}. {sanity}",
            "Absolute tokens/s depend on the load of the shared machine; the ratio is the result. "
            + extra_work_text(profile),
            "Where one obliviate step spends its time (cProfile of one extra round; profiling inflates the "
            "Python-side parts):",
            profile_table,
            f"Reproduce: `{command}` (measured {_common.utc_date()}).",
        ]
    )
    _common.write_section("bench_step", body)


if __name__ == "__main__":
    main()
