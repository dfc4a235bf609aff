"""Step throughput per method: obliviate's optimizer steps (length pieces) against a bare padded PyTorch loop.

For each method (``--methods``, default every registered one), contender A is the real loop:
:func:`obliviate.train.loop.setup` builds the run (Accelerator, AdamW, schedule, tokenised data, the reference the
method needs) and each round times one :func:`obliviate.train.epoch.train_epoch` (collation, length pieces, the
forwards, the loss, backward, clipping, AdamW, per-step metrics, the JSON log line and the progress bar). Contender
B is a bare loop over the *same* rows (same forget order, retain draws and paired fakes), collated once up front as
whole padded micro-batches: the same forward passes (hidden states through the same hook, the reference where the
method reads one, NPO's reference log-probabilities cached up front as obliviate caches them), the same loss
function on the whole batch, backward, ``clip_grad_norm_`` and AdamW on an identical copy of the model. Rounds
alternate A, B, A, B after one untimed warm-up round each; the headline per method is the median over rounds of
``non-pad tokens/s(A) / non-pad tokens/s(B)`` (goal >= 1.5), and both models' weights must agree after the run.

    .venv/bin/python benchmarks/bench_step.py [--methods ga ga_gd ...] [--size tiny] [--steps 8] [--rounds 12]
        [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()

import torch  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from obliviate.config import UnlearnConfig  # noqa: E402
from obliviate.data.batching import collate, encode_record  # noqa: E402
from obliviate.data.synth import synthesize  # noqa: E402
from obliviate.losses import LOSSES, get_method  # noqa: E402
from obliviate.losses.common import LossInputs  # noqa: E402
from obliviate.models.tiny import build_model, count_parameters, train_tokenizer  # noqa: E402
from obliviate.models.trainable import decoder_layers  # noqa: E402
from obliviate.train import step  # noqa: E402
from obliviate.train.epoch import train_epoch  # noqa: E402
from obliviate.train.loop import setup  # noqa: E402
from obliviate.train.sampling import epoch_batches  # noqa: E402

GOAL = 1.5
SAME_WORK = 1e-3
"""Largest weight gap, as a share of how far the weights moved, that still counts as the same work (float order)."""
RMU_LAYER = 1
# the published RMU alpha = 100 on an untrained tiny model only scales the retain term; c = 6.5 as in WMDP
PARAMS = {"rmu": {"alpha": 1.0, "rmu_c": 6.5}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="methods to time (default: all)"
    )
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


class Contenders:
    """The two loops for one method on identical copies of one model, each stepping through the same epochs' rows."""

    def __init__(self, args: argparse.Namespace, workdir: Path, name: str, data, tokenizer) -> None:
        forget = data.forget[: args.steps * args.batch_size]
        model = build_model(args.size, len(tokenizer), tokenizer=tokenizer, seed=args.seed)
        self.parameters = count_parameters(model)
        self.initial = [p.detach().clone() for p in model.parameters()]
        self.bare_model = copy.deepcopy(model)
        self.method = method = get_method(name)
        self.params = method.params(PARAMS.get(name))
        self.config = UnlearnConfig(
            output_dir=str(workdir / name),
            model_dir="-",
            forget_dir="-",
            method=name,
            epochs=args.rounds + 2,
            batch_size=args.batch_size,
            micro_batch_size=args.batch_size,
            max_length=args.max_length,
            lr=1e-5,
            seed=args.seed,
            mixed_precision="no",
        )
        paired_draws = None
        if method.needs.paired:  # contrast: the forget rows scored on their PII values, beside fake-value copies
            from obliviate.train.relabel import fake_pairs, known_people

            people = known_people(workdir, [*forget, *data.retain])
            forget, paired_draws = fake_pairs(forget, people, draws=1, seed=args.seed)
        # relabel trains on relabelled forget records; their shapes are the forget records', so these stand in
        self.run = setup(model, tokenizer, method, self.params, forget, data.retain, self.config, layer=RMU_LAYER)
        if paired_draws:
            self.run.paired_draws = [[encode_record(tokenizer, r, args.max_length) for r in d] for d in paired_draws]
        self.reference = None
        if method.needs.reference and not method.needs.reference_logprob:
            self.reference = copy.deepcopy(self.bare_model).eval().requires_grad_(False)
        self.bare_optimizer = torch.optim.AdamW(
            [p for p in self.bare_model.parameters() if p.requires_grad],
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
        )
        # the bare loop's batches are collated before timing: collation is counted against obliviate only
        self.batches, cuts = {}, []
        for epoch in range(1, args.rounds + 2):
            self.batches[epoch], pieces = self.same_batches(epoch)
            cuts.extend(pieces)
        self.pieces_per_micro_batch = statistics.mean(cuts)
        self.log_file = open(workdir / f"{name}-metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 (the progress bar is drawn, then discarded)
        self.epochs = {"obliviate": 0, "bare": 0}

    def same_batches(self, epoch: int):
        """The rows train_epoch reads in ``epoch`` (the very sampling functions), collated whole, and how many
        pieces obliviate cuts each micro-batch into."""
        run, pad_id = self.run, self.run.tokenizer.pad_token_id
        micro, draws = epoch_batches(run, self.config, epoch)
        batches, pieces = [], []
        for rows, drawn in zip(micro, draws):
            forget = collate([run.forget[i] for i in rows], pad_id)
            retain = collate([run.retain[i] for i in drawn], pad_id) if drawn else None
            paired = collate([d[i] for d in run.paired for i in rows], pad_id) if run.paired else None
            batches.append((forget, retain, paired, rows))
            pieces.append(len(step.pieces(run, self.method, rows, drawn)))
        return batches, pieces

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
        """One round of the bare loop; returns the tokens it processed (forget, retain, paired; no padding)."""
        self.epochs["bare"] += 1
        model, method, needs = self.bare_model, self.method, self.method.needs
        block = decoder_layers(model)[RMU_LAYER] if needs.hidden else None
        ref_block = decoder_layers(self.reference)[RMU_LAYER] if needs.hidden and self.reference else None
        model.train()
        tokens = 0
        for forget, retain, paired, rows in self.batches[self.epochs["bare"]]:
            inputs = LossInputs(forget=step.run_forward(model, forget, block), control=self.run.control)
            if retain is not None:
                inputs.retain = step.run_forward(model, retain, block)
            if paired is not None:
                inputs.paired = step.run_forward(model, paired, block)
            if needs.reference_logprob:
                inputs.forget_ref_logprob = self.run.forget_ref_logprob[rows]
            elif needs.reference:
                with torch.no_grad():
                    if "forget" in needs.reference_on:
                        inputs.forget_ref = step.run_forward(self.reference, forget, ref_block, needs.hidden)
                    if "retain" in needs.reference_on:
                        inputs.retain_ref = step.run_forward(self.reference, retain, ref_block, needs.hidden)
            method.loss(inputs, self.params).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
            self.bare_optimizer.step()
            self.bare_optimizer.zero_grad(set_to_none=True)
            tokens += sum(b.num_tokens for b in (forget, retain, paired) if b is not None)
        return tokens

    def weight_gaps(self) -> tuple[float, float]:
        """(largest |obliviate - bare| weight difference, largest change of a weight since the start)."""
        trained = list(self.run.accelerator.unwrap_model(self.run.model).parameters())
        gap = max((a - b).abs().max().item() for a, b in zip(trained, self.bare_model.parameters()))
        moved = max((a - b).abs().max().item() for a, b in zip(trained, self.initial))
        return gap, moved

    def close(self) -> None:
        self.log_file.close()
        self.devnull.close()
        AcceleratorState._reset_state()  # as train() does: the next method's run builds its own


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
    """Per method: warm up, time the interleaved rounds, check both loops did the same work; then profile one extra
    round of the first method."""
    people = max(20, -(-args.steps * args.batch_size // 6) * 2 + 10)
    data = synthesize(people=people, forget_fraction=0.45, holdout_fraction=0.05, seed=args.seed)
    tokenizer = train_tokenizer([r.text for r in data.forget + data.retain], vocab_size=4096)
    # synthetic people's PII, as pii.json beside a forget set (what contrast's fake values are drawn from)
    from obliviate.data.synth import write_synth

    write_synth(data, workdir / "data")
    methods, parameters, profile = {}, 0, []
    for name in args.methods:
        contenders = Contenders(args, workdir / "data" / "forget", name, data, tokenizer)
        parameters = contenders.parameters
        contenders.obliviate_round()  # warm-up, untimed (epoch 1 for both)
        contenders.bare_round()
        timings = _common.interleave([contenders.obliviate_round, contenders.bare_round], args.rounds)
        gap, moved = contenders.weight_gaps()
        tokens = [t for _, t in timings[0]]
        if tokens != [t for _, t in timings[1]]:
            raise RuntimeError(f"{name}: the contenders processed different token counts: {tokens} vs {timings[1]}")
        ratios = [(tokens_a / seconds_a) / (tokens_b / seconds_b)
                  for (seconds_a, tokens_a), (seconds_b, tokens_b) in zip(*timings)]  # fmt: skip
        summary = _common.ratio_summary(ratios)
        methods[name] = {
            "tokens_per_round": tokens[0],
            "obliviate_tokens_per_s": sum(tokens) / sum(t for t, _ in timings[0]),
            "bare_tokens_per_s": sum(tokens) / sum(t for t, _ in timings[1]),
            "ratio_median": summary["median"],
            "ratio_min": summary["min"],
            "ratio_max": summary["max"],
            "per_round_ratios": [round(r, 4) for r in ratios],
            "pieces_per_micro_batch": contenders.pieces_per_micro_batch,
            "max_weight_gap": gap,
            "max_weight_change": moved,
            "same_work": moved > 0 and gap <= SAME_WORK * moved,
        }
        methods[name]["meets_goal"] = methods[name]["ratio_median"] >= GOAL and methods[name]["same_work"]
        if not profile:  # one extra, untimed round
            profile = profile_round(contenders.obliviate_round, args.steps, name)
            methods[name]["profile_ms_per_step"] = {label: round(ms, 3) for label, ms in profile}
        contenders.close()
        print(f"{name}: median ratio {summary['median']:.3f}", file=sys.stderr, flush=True)
    result = {
        "size": args.size,
        "parameters": parameters,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "goal": GOAL,
        "threads": torch.get_num_threads(),
        "methods": methods,
    }
    return result, profile


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


# (label, file name, function name): the parts of train_epoch a profile is broken into; cumulative times. "{loss}"
# is the profiled method's loss module.
_PARTS = (
    ("model forward (every pass)", "step.py", "run_forward"),
    ("the method's loss", "{loss}", "loss"),
    ("backward", "accelerator.py", "backward"),
    ("gradient clipping", "accelerator.py", "clip_grad_norm_"),
    ("AdamW step", "adam.py", "step"),
    ("zero_grad", "optimizer.py", "zero_grad"),
    ("lr scheduler step", "lr_scheduler.py", "step"),
    ("collate forget + retain", "batching.py", "collate"),
    ("cut pieces and their shares", "step.py", "pieces"),
    ("step gather (accelerate)", "accelerator.py", "gather"),
    ("progress bar", "std.py", "set_postfix_str"),
    ("JSON log line", "bench_step.py", "log"),
)


def profile_round(run_round, steps: int, method: str) -> list[tuple[str, float]]:
    """cProfile one obliviate round and break ``train_epoch`` into parts: ``(label, ms per step)``.

    The last row, "other loop bookkeeping", is train_epoch minus every part above it; cProfile inflates
    Python-heavy parts, so read the shares, not the totals.
    """
    import cProfile
    import pstats

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
    parts = [(label, cumulative.get((file.format(loss=f"{method}.py"), name), 0.0)) for label, file, name in _PARTS]
    rest = total - sum(seconds for _, seconds in parts)
    per_step = 1000.0 / steps
    return (
        [("train_epoch total", total * per_step)]
        + [(label, s * per_step) for label, s in parts]
        + [("other loop bookkeeping", rest * per_step)]
    )


_EXTRA_WORK = (
    "What the loop does beyond the bare loop, per optimizer step: it collates each piece's batches, cuts the "
    "micro-batch into pieces and counts each piece's units on the CPU, gathers the step's metrics, token count and "
    "retain-draw checksum in one all-gather and one host copy, writes and flushes one JSON line and refreshes the "
    "progress bar."
)
# The rows of the profile that are this extra work (the bare loop does none of it).
_EXTRA_PARTS = (
    "collate forget + retain",
    "cut pieces and their shares",
    "step gather (accelerate)",
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
        + ", ".join(label for label in _EXTRA_PARTS if label in ms)
        + ")."
    )


def _methods(result: dict) -> dict[str, dict]:
    """The per-method figures; a single-method result (the shape before ``--methods``) reads as one ``ga_gd`` row."""
    if "methods" in result:
        return result["methods"]
    one = dict(result)
    one.setdefault("pieces_per_micro_batch", 1.0)
    one.setdefault(
        "same_work", one["max_weight_change"] > 0 and one["max_weight_gap"] <= SAME_WORK * one["max_weight_change"]
    )
    one.setdefault("meets_goal", one["ratio_median"] >= GOAL and one["same_work"])
    return {result.get("method", "ga_gd"): one}


def verdict(result: dict) -> str:
    """One honest line: which methods met the goal (median ratio >= goal with equal weights) and which missed it."""
    methods = _methods(result)
    met = [name for name, m in methods.items() if m["meets_goal"]]
    missed = [name for name, m in methods.items() if not m["meets_goal"]]
    if not missed:
        return f"**Goal met for every method timed** ({', '.join(met)}): median ratio ≥ {GOAL} with equal weights."
    reasons = []
    for name in missed:
        m = methods[name]
        why = [f"median {m['ratio_median']:.2f} < {GOAL}"] if m["ratio_median"] < GOAL else []
        why += [] if m["same_work"] else ["weights differ"]
        reasons.append(f"{name} ({', '.join(why)})")
    head = f"met for {', '.join(met)}; " if met else ""
    return f"**Goal {head}missed for {', '.join(reasons)}.**"


def table(result: dict) -> str:
    rows = []
    for name, m in _methods(result).items():
        rows.append(
            [
                name,
                f"{m['obliviate_tokens_per_s']:,.0f}",
                f"{m['bare_tokens_per_s']:,.0f}",
                f"**{m['ratio_median']:.2f}** ({m['ratio_min']:.2f}–{m['ratio_max']:.2f})",
                f"{m['pieces_per_micro_batch']:.2f}",
                f"{m['max_weight_gap']:.1e} / {m['max_weight_change']:.1e}",
                "yes" if m["meets_goal"] else "no",
            ]
        )
    headers = [
        "method",
        "obliviate tokens/s",
        "bare padded tokens/s",
        "obliviate / bare (median, range)",
        "pieces per micro-batch",
        "weight gap / moved",
        f"≥ {GOAL}, same weights",
    ]
    return _common.markdown_table(headers, rows)


def describe(result: dict) -> str:
    threads = f"{result['threads']} torch thread{'s' if result['threads'] > 1 else ''}"
    batch = result["batch_size"]
    return (
        "Each method's optimizer steps through the real loop (`obliviate.train.loop.setup` + `train_epoch`: "
        "collation, length-sorted pieces each weighted by its share of the units its loss averages over "
        "(`Method.means`), the forwards, loss, backward, clipping, AdamW, per-step metrics, JSON log line, progress "
        "bar) against a bare padded PyTorch loop: the same rows (forget order, retain draws, paired fakes) collated "
        "whole before timing, the same forward passes (the reference where the method reads one, NPO's reference "
        "log-probabilities cached up front as obliviate does), the same loss function on the whole batch, backward, "
        "`clip_grad_norm_` and AdamW on an identical copy of the model. Tokens are non-pad forget, retain and paired "
        "fake-value tokens. "
        "`relabel` runs on the forget records as they are (its relabelled draws have their shapes); `contrast` on "
        f"the forget records scored on their PII values, beside one draw of fake-value copies. Model: "
        f"`{result['size']}` OLMo, {result['parameters']:,} parameters, fp32 on CPU ({threads}, shared machine); "
        f"micro-batch {batch} forget + {batch} retain rows of synthetic Task2 data (up to "
        f"{result.get('max_length', 256)} tokens); {result['steps_per_round']} steps per round, "
        f"{result['rounds']} rounds per contender interleaved "
        "A, B, A, B after one untimed warm-up round each, lr 1e-5."
    )


def report(result: dict, profile: list[tuple[str, float]], command: str, write: bool) -> None:
    text = table(result)
    methods = _methods(result)
    profiled = next((name for name, m in methods.items() if "profile_ms_per_step" in m), next(iter(methods)))
    profile_table = _common.markdown_table(
        [f"part of train_epoch ({profiled}; cProfile, one round)", "ms per step"],
        [[label, f"{ms:.2f}"] for label, ms in profile],
    )
    _common.emit("bench_step", f"{text}\n\n{verdict(result)}", result)
    if not write:
        return
    per_round = "; ".join(
        f"`{name}` {', '.join(f'{r:.2f}' for r in m['per_round_ratios'])}" for name, m in methods.items()
    )
    sanity = " ".join(
        f"`{name}`: {same_work_sentence(m['max_weight_gap'], m['max_weight_change'])}" for name, m in methods.items()
    )
    body = "\n\n".join(
        [
            "## Step throughput",
            describe(result),
            text,
            f"{verdict(result)} Goal: non-pad tokens/s of obliviate ≥ {GOAL}× the bare padded loop's (median of the "
            "interleaved rounds), with the two models' weights equal after all rounds (gap ≤ "
            f"{SAME_WORK:g} of the movement).",
            f"Per-round ratios: {per_round}.",
            sanity,
            "Absolute tokens/s depend on the load of the shared machine; the ratio is the result. The gain is the "
            "padding the pieces leave out (the synthetic data mixes one-line answers and long biographies); on a "
            "GPU, where a short forward costs about as much as a long one until the device is full, it would be "
            "smaller at this model size. " + extra_work_text(profile),
            f"Where one obliviate step of `{profiled}` spends its time (cProfile of one extra round; profiling "
            "inflates the Python-side parts):",
            profile_table,
            f"Reproduce: `{command}` (measured {_common.utc_date()}).",
        ]
    )
    _common.write_section("bench_step", body)
    _common.write_readme_line("readme:bench_step", readme_line(result))


def readme_line(result: dict) -> str:
    """The README's summary bullet: the range of per-method medians and whether every method met the goal."""
    methods = _methods(result)
    medians = [m["ratio_median"] for m in methods.values()]
    met = all(m["meets_goal"] for m in methods.values())
    return (
        f"- an optimizer step of each of the {len(methods)} methods through obliviate's loop runs at "
        f"**{min(medians):.2f}–{max(medians):.2f}×** the non-pad tokens/s of a bare padded PyTorch loop on the same "
        f"batches (median per method; goal ≥ {GOAL}×: {'met by every method' if met else 'not met by every method'}"
        "), with equal weights after the run: length-sorted pieces leave the padding out;"
    )


if __name__ == "__main__":
    main()
