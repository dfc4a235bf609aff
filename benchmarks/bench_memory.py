"""Peak memory of ga_kl and npo against ga_gd: proof that no second copy of the weights is kept where none is needed.

Under LoRA the reference model of ga_kl and npo is the same model with its adapters disabled, so their peak memory
should be within 1.1x of ga_gd's (which needs no reference). Under full fine-tuning npo keeps one cached
log pi_ref(y|x) per forget row instead of a frozen copy, so its peak should be within 1.02x of ga_gd's; full
fine-tuning ga_kl, which keeps the copy, shows what one costs, and ga_kl training the MLPs alone (contrast's preset)
shows that the copy holds only what is trained: the frozen parameters are shared with the model. A model where
weights dominate (OLMo, hidden 1024, 8 layers, about 100 M parameters, fp32) is saved once; then each case runs in a
fresh subprocess through the real entry point (:func:`obliviate.train.run.run_unlearn`, 1 epoch, batch 2, sequence
length 64, a few steps) and reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

    .venv/bin/python benchmarks/bench_memory.py [--hidden 1024 --layers 8] [--no_full] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GOAL = 1.1
FULL_NPO_GOAL = 1.02
LORA_CASES = (("ga_gd", 8), ("ga_kl", 8), ("npo", 8))
FULL_CASES = (("ga_gd", 0), ("ga_kl", 0), ("npo", 0))
MLP_CASES = (("ga_gd", 0, "mlp"), ("ga_kl", 0, "mlp"))
OLMO_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "vocab_size": 50304}
"""OLMo-7B's shape (``allenai/OLMo-7B-hf``): its parameters are counted on the meta device, no weights needed."""
_RESULT_TAG = "BENCH_MEMORY_RESULT "


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default: 1024)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (default: 8)")
    parser.add_argument("--intermediate", type=int, default=2816, help="MLP width (default: 2816)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (default: 16)")
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank of the LoRA cases (default: 8)")
    parser.add_argument("--forget_people", type=int, default=1, help="synthetic people forgotten; 6 rows each (1)")
    parser.add_argument("--batch_size", type=int, default=2, help="forget rows per step (default: 2)")
    parser.add_argument("--max_length", type=int, default=64, help="longest tokenised example (default: 64)")
    parser.add_argument("--no_full", action="store_true", help="skip the full fine-tuning contrast")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    parser.add_argument("--child", nargs=6, metavar=("METHOD", "LORA_R", "MODULES", "MODEL", "DATA", "OUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--build", metavar="WORKDIR", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float:
    """Resident set size now (VmRSS), in MiB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One case in this fresh process; prints one tagged JSON line with its memory figures."""
    inherited = peak_rss_mb()
    _common.quiet()
    import torch

    from obliviate.config import UnlearnConfig
    from obliviate.train import loop
    from obliviate.train.run import run_unlearn

    torch.set_num_threads(args.threads)
    method, lora_r, modules, model_dir, data_dir, output_dir = args.child
    # ru_maxrss survives execve: a child starts from its parent's RSS, so the parent stays small (it never loads
    # torch); VmHWM, which a new process image resets, is recorded as a cross-check
    marks = {"inherited_peak_mb": inherited, "after_imports_rss_mb": current_rss_mb()}
    real_setup = loop.setup

    def setup_with_mark(*setup_args, **setup_kwargs):
        # the model is loaded (weights memory-mapped, paged in on first use) and LoRA applied by now
        marks["peak_before_setup_mb"] = peak_rss_mb()
        return real_setup(*setup_args, **setup_kwargs)

    loop.setup = setup_with_mark
    config = UnlearnConfig(
        output_dir=output_dir, model_dir=model_dir, forget_dir=f"{data_dir}/forget", retain_dir=f"{data_dir}/retain",
        method=method, lora_r=int(lora_r), trainable_modules=modules, epochs=1, batch_size=args.batch_size,
        micro_batch_size=args.batch_size,
        max_length=args.max_length, save_checkpoints=False, mixed_precision="no", overwrite=True,
    )  # fmt: skip
    result = run_unlearn(config)
    marks.update(peak_mb=peak_rss_mb(), vm_hwm_mb=_status_mb("VmHWM"), steps=result.global_step,
                 tokens=result.tokens_seen)  # fmt: skip
    print(_RESULT_TAG + json.dumps(marks), flush=True)


def build(args: argparse.Namespace) -> None:
    """Synthetic data and an untrained OLMo of the requested shape, saved as a standard HF directory (in a child,
    so that the parent whose RSS every case inherits never holds the model)."""
    _common.quiet()
    import torch
    from transformers import OlmoConfig, OlmoForCausalLM

    from obliviate.data.synth import synthesize, write_synth
    from obliviate.models.load import save_pretrained_atomic
    from obliviate.models.tiny import count_parameters, train_tokenizer

    workdir = Path(args.build)
    people = max(20, args.forget_people * 20)
    data = synthesize(people=people, forget_fraction=args.forget_people / people, holdout_fraction=0.05, seed=0)
    write_synth(data, workdir / "data")
    tokenizer = train_tokenizer([r.text for r in data.forget + data.retain], vocab_size=4096)
    config = OlmoConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = OlmoForCausalLM(config)
    with contextlib.redirect_stderr(io.StringIO()):  # the "Writing model shards" bar
        save_pretrained_atomic(model, tokenizer, workdir / "model")
    result = {"parameters": count_parameters(model), "mlp_parameters": _mlp_parameters(model)}
    with torch.device("meta"):
        big = OlmoForCausalLM(OlmoConfig(**OLMO_7B))
    result.update(olmo_7b_parameters=count_parameters(big), olmo_7b_mlp_parameters=_mlp_parameters(big))
    print(_RESULT_TAG + json.dumps(result), flush=True)


def _mlp_parameters(model) -> int:
    """How many parameters ``--trainable_modules mlp`` trains (every block's MLP): what a reference copy holds."""
    from obliviate.models.trainable import select_trainable

    select_trainable(model, "all", "mlp")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def spawn(args: argparse.Namespace, *mode: str) -> dict:
    """Run this script in a fresh process in ``mode`` (``--build`` or ``--child``) and parse its result line."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--batch_size", str(args.batch_size),
               "--max_length", str(args.max_length), "--hidden", str(args.hidden), "--layers", str(args.layers),
               "--intermediate", str(args.intermediate), "--heads", str(args.heads), "--forget_people",
               str(args.forget_people), *mode]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_TAG)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(mode)} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(_RESULT_TAG) :])


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    if args.build:
        build(args)
        return None
    cases = [(m, args.lora_r, "all") for m, _ in LORA_CASES]
    cases += [] if args.no_full else [(m, r, "all") for m, r in FULL_CASES] + list(MLP_CASES)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        workdir = Path(tmp)
        built = spawn(args, "--build", str(workdir))
        for method, lora_r, modules in cases:
            out = workdir / f"out-{method}-{lora_r}-{modules}"
            model, data = str(workdir / "model"), str(workdir / "data")
            mode = ("--child", method, str(lora_r), modules, model, data, str(out))
            runs.append({"method": method, "lora_r": lora_r, "modules": modules, **spawn(args, *mode)})
    parameters = built["parameters"]
    result = {
        **built, "weights_mb": parameters * 4 / 2**20, "mlp_weights_mb": built["mlp_parameters"] * 4 / 2**20,
        "hidden": args.hidden, "layers": args.layers,
        "lora_r": args.lora_r, "batch_size": args.batch_size, "max_length": args.max_length,
        "steps": runs[0]["steps"], "parent_rss_mb": peak_rss_mb(), "goal": GOAL, "runs": runs,
    }  # fmt: skip
    add_ratios(result)
    report(result, argv, args.write)
    return result


def add_ratios(result: dict) -> None:
    """Each case against ga_gd in the same mode: peak RSS, and the peak above the imports' RSS."""
    runs = result["runs"]
    for run in runs:
        run["above_imports_mb"] = run["peak_mb"] - run["after_imports_rss_mb"]
    for run in runs:
        mode = (run["lora_r"], run["modules"])
        base = next((r for r in runs if r["method"] == "ga_gd" and (r["lora_r"], r["modules"]) == mode), None)
        if base is not None:
            run["peak_ratio"] = run["peak_mb"] / base["peak_mb"]
            run["above_imports_ratio"] = run["above_imports_mb"] / base["above_imports_mb"]
            run["extra_mb"] = run["peak_mb"] - base["peak_mb"]
    result["max_lora_peak_ratio"] = max(r["peak_ratio"] for r in runs if r["lora_r"] and r["method"] != "ga_gd")
    full_kl = next((r for r in runs if r["method"] == "ga_kl" and (r["lora_r"], r["modules"]) == (0, "all")), None)
    result["full_ga_kl_extra_mb"] = full_kl["extra_mb"] if full_kl else None
    mlp_kl = next((r for r in runs if r["method"] == "ga_kl" and r["modules"] == "mlp"), None)
    result["mlp_ga_kl_extra_mb"] = mlp_kl["extra_mb"] if mlp_kl else None
    full_npo = next((r for r in runs if r["method"] == "npo" and (r["lora_r"], r["modules"]) == (0, "all")), None)
    result["full_npo_peak_ratio"] = full_npo["peak_ratio"] if full_npo else None


def _case_name(run: dict) -> str:
    if run["lora_r"]:
        return f"{run['method']} + LoRA r={run['lora_r']}"
    return f"{run['method']}, full fine-tuning" if run["modules"] == "all" else f"{run['method']}, MLPs only"


def report(result: dict, argv: list[str], write: bool) -> None:
    rows = [
        [_case_name(r), f"{r['peak_mb']:,.0f}", f"{r['peak_ratio']:.3f}", f"{r['extra_mb']:+,.0f}",
         f"{r['above_imports_mb']:,.0f}", f"{r['above_imports_ratio']:.3f}", f"{r['vm_hwm_mb']:,.0f}"]
        for r in result["runs"]
    ]  # fmt: skip
    headers = ["case", "peak RSS MiB", "÷ ga_gd", "− ga_gd MiB", "peak above imports MiB", "÷ ga_gd",
               "VmHWM MiB (check)"]  # fmt: skip
    table = _common.markdown_table(headers, rows)
    verdict = "met" if result["max_lora_peak_ratio"] <= GOAL else "NOT met"
    headline = (
        f"**Peak RSS of ga_kl and npo under LoRA: at most {result['max_lora_peak_ratio']:.3f}× that of ga_gd under "
        f"LoRA** (goal ≤ {GOAL}×: {verdict}). The weights alone are {result['weights_mb']:,.0f} MiB, so a second "
        "copy would show as a ratio near "
        f"{(result['runs'][0]['peak_mb'] + result['weights_mb']) / result['runs'][0]['peak_mb']:.2f}×."
    )
    if result["full_ga_kl_extra_mb"] is not None:
        headline += (
            f" For contrast, full-fine-tuning ga_kl, which keeps a frozen copy, peaks "
            f"{result['full_ga_kl_extra_mb']:+,.0f} MiB above full-fine-tuning ga_gd "
            f"({result['full_ga_kl_extra_mb'] / result['weights_mb']:.2f}× the weights)."
        )
    if result["mlp_ga_kl_extra_mb"] is not None:
        headline += (
            f" **Training the MLPs alone, ga_kl peaks {result['mlp_ga_kl_extra_mb']:+,.0f} MiB above ga_gd trained "
            f"alike** ({result['mlp_ga_kl_extra_mb'] / result['mlp_weights_mb']:.2f}× the MLP weights, "
            f"{result['mlp_weights_mb']:,.0f} MiB; {result['mlp_ga_kl_extra_mb'] / result['weights_mb']:.2f}× all "
            "the weights): its reference shares the frozen parameters with the model and copies only the trained "
            "ones."
        )
    if result["full_npo_peak_ratio"] is not None:
        npo_verdict = "met" if result["full_npo_peak_ratio"] <= FULL_NPO_GOAL else "NOT met"
        headline += (
            f" **Full-fine-tuning npo, which caches one reference log-probability per forget row instead of a copy, "
            f"peaks at {result['full_npo_peak_ratio']:.3f}× full-fine-tuning ga_gd** (goal ≤ {FULL_NPO_GOAL}×: "
            f"{npo_verdict})."
        )
    _common.emit("bench_memory", table + "\n\n" + headline, result)
    if write:
        _common.write_section("bench_memory", section(result, table, headline, argv))
        _common.write_readme_line("readme:bench_memory", readme_line(result))


def readme_line(result: dict) -> str:
    """The README's summary bullet: the ratios and what they mean."""
    line = (
        f"- peak memory of `ga_kl` and `npo` under LoRA is at most **{result['max_lora_peak_ratio']:.3f}×** that of "
        f"`ga_gd` (goal ≤ {GOAL}×): the reference is the base model with adapters disabled, not a copy"
    )
    if result["full_npo_peak_ratio"] is not None:
        line += (
            f"; with full fine-tuning `npo` peaks at **{result['full_npo_peak_ratio']:.3f}×** `ga_gd` (goal ≤ "
            f"{FULL_NPO_GOAL}×: it keeps one reference log-probability per forget row, not a frozen copy)"
        )
    if result.get("mlp_ga_kl_extra_mb") is not None:
        line += (
            f"; a frozen copy holds only what the run trains: training the MLPs alone, `ga_kl` peaks "
            f"{result['mlp_ga_kl_extra_mb']:+,.0f} MiB above `ga_gd` "
            f"({result['mlp_ga_kl_extra_mb'] / result['weights_mb']:.2f}× all the weights, against "
            f"{result['full_ga_kl_extra_mb'] / result['weights_mb']:.2f}× under full fine-tuning)"
        )
    return line + ";"


def section(result: dict, table: str, headline: str, argv: list[str]) -> str:
    description = (
        f"OLMo with hidden size {result['hidden']}, {result['layers']} layers, {result['parameters']:,} parameters "
        f"(fp32: {result['weights_mb']:,.0f} MiB of weights), saved once; each case is a fresh subprocess running "
        f"`obliviate.train.run.run_unlearn` (1 epoch, batch {result['batch_size']}, sequence length ≤ "
        f"{result['max_length']}, {result['steps']} optimizer steps on synthetic Task2 rows, no checkpoints, "
        "1 torch thread) and reporting `resource.getrusage(RUSAGE_SELF).ru_maxrss`. Ratios compare with ga_gd in "
        'the same mode (LoRA, full, or MLPs only), which needs no reference model. "Peak above imports" subtracts '
        "the RSS after importing obliviate, torch, transformers and peft (about "
        f"{result['runs'][0]['after_imports_rss_mb']:,.0f} MiB), which otherwise dilutes every ratio. Linux keeps "
        "`ru_maxrss` across `execve`, so the parent never loads torch (its peak: "
        f"{result['parent_rss_mb']:,.0f} MiB) and `VmHWM`, which a new process image resets, is shown as a check."
    )
    notes = (
        "Under LoRA the reference of ga_kl and npo is the same module with its adapters disabled (no copy), so "
        "their peak matches ga_gd's. With full fine-tuning ga_kl deep-copies the model as its frozen reference "
        "(its KL needs the reference's whole next-token distribution at every retain position); npo computes "
        "log π_ref(y|x) for each forget row once, with the starting model, before the first step, and keeps that "
        "vector instead of a copy. A reference copy shares every parameter the run does not train with the model "
        "(`frozen_copy` in `obliviate/train/parallel.py`; outside FSDP and DeepSpeed, which shard each model on "
        "their own): with `--trainable_modules mlp`, contrast's preset, it holds the MLPs alone, at OLMo-7B's "
        f"shape {result['olmo_7b_mlp_parameters'] / 1e9:.2f} of {result['olmo_7b_parameters'] / 1e9:.2f} billion "
        "parameters (counted on the meta device). "
        "The weights are memory-mapped from `model.safetensors` and paged in on first use, so they count in the "
        "RSS once the first forward pass has run."
    )
    command = _common.reproduce_command("bench_memory.py", argv)
    reproduce = (
        f"Reproduce: `{command}` (measured {_common.utc_date()}). `--no_full` skips the full fine-tuning contrast; "
        "`--hidden 2048 --layers 16` runs a bigger model."
    )
    return "\n\n".join(
        ["## Peak memory: no second copy of the weights", description, table, headline, notes, reproduce]
    )


if __name__ == "__main__":
    main()
