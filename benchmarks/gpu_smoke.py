"""GPU smoke test for the first device session (issue 14): does the 7B path run, how fast, and is step 1 exact.

Offline and self-contained: a tokenizer is trained on synthetic people, and the models are random OLMo weights of
the OLMo-7B shape (hidden 4096, MLP 11008, 32 layers, 32 heads, vocabulary 50304) and an 8-layer twin. Stages, each
recorded in one JSON (a failing stage records its error and the next one runs):

- ``lora_npo``: the real loop (:func:`obliviate.train.loop.setup` + ``train_epoch``) runs LoRA NPO on the bf16 7B
  base: tokens/s, achieved TFLOP/s and MFU against ``--peak_tflops`` (790 bf16), peak memory, step-1 log-ratio
  (0 when the disabled-adapter reference is the model).
- ``ga_kl``: full fine-tuning of the twin with a frozen bf16 reference: step-1 KL (0 when the reference computes
  what the model computes) and the reference's ``inv_freq`` dtype (fp32: RoPE phases unrounded).
- ``sharded``: the same ga_kl steps on the twin under ``configs/accelerate/fsdp.yaml`` and
  ``deepspeed_zero3.yaml`` with one process (ZeRO-3 only where deepspeed imports). On a CPU machine accelerate runs
  neither, so the worker runs unsharded and the stage says ``skipped``.
- ``eval``: the suite's forward pass and greedy generation of 64 prompts on the 7B model, on the device.

FLOPs per token use the usual dense count: a forward is ``2·N`` (N = non-embedding parameters + ``lm_head``) plus
``2·layers·seq·hidden`` of causal attention; the backward costs one forward for activation gradients and one more
for weight gradients when the weights train (not under LoRA); a reference pass is one forward.

    .venv/bin/python benchmarks/gpu_smoke.py                       # on the GPU: JSON to $OUT/gpu_smoke.json
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu --tiny   # every stage at toy size (the test suite runs it)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.quiet()

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import OlmoConfig, OlmoForCausalLM  # noqa: E402

from obliviate.config import UnlearnConfig  # noqa: E402
from obliviate.data.records import Record  # noqa: E402
from obliviate.data.synth import synthesize  # noqa: E402
from obliviate.losses import get_method  # noqa: E402
from obliviate.models.tiny import train_tokenizer  # noqa: E402
from obliviate.models.trainable import apply_lora  # noqa: E402
from obliviate.train import epoch, loop, parallel  # noqa: E402

SHAPES = {
    # hidden, MLP, layers, heads, vocabulary, sequence length, examples per step, steps, new tokens when generating
    "7b": dict(hidden=4096, mlp=11008, layers=32, heads=32, vocab=50304, seq=512, batch=8, steps=6, new_tokens=32),
    "tiny": dict(hidden=64, mlp=128, layers=2, heads=4, vocab=512, seq=64, batch=4, steps=3, new_tokens=4),
}
TWIN_LAYERS = {"7b": 8, "tiny": 1}
PROMPTS = 64


def build_model(shape: dict, layers: int, device: str, dtype: torch.dtype, tokenizer) -> OlmoForCausalLM:
    """A random OLMo of ``shape`` with ``layers`` blocks, made on ``device``; parameters in ``dtype``, buffers fp32."""
    config = OlmoConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = OlmoForCausalLM(config)
    return parallel.cast_parameters(model, dtype)


def make_data(shape: dict) -> tuple[Any, list[Record], list[Record]]:
    """A tokenizer trained on synthetic people, and forget / retain records long enough to fill ``seq`` tokens."""
    data = synthesize(40, forget_fraction=0.4, holdout_fraction=0.1, seed=0)
    tokenizer = train_tokenizer((r.text for r in data.forget + data.retain), vocab_size=min(shape["vocab"], 4096))
    texts = [r.text for r in data.forget + data.retain]

    def long_records(prefix: str, count: int) -> list[Record]:
        # prompts of many biographies, cut from the left at --max_length: every example is seq tokens long
        return [
            Record(f"{prefix}{i}", " ".join(texts[(i + j) % len(texts)] for j in range(12)), texts[i % len(texts)])
            for i in range(count)
        ]

    count = shape["batch"] * shape["steps"]
    return tokenizer, long_records("f", count), long_records("r", count)


def train_config(shape: dict, out: Path, **overrides) -> UnlearnConfig:
    values = dict(
        output_dir=str(out),
        model_dir=str(out),
        forget_dir=str(out),
        epochs=1,
        lr=1e-5,
        batch_size=shape["batch"],
        micro_batch_size=shape["batch"],
        max_length=shape["seq"],
        save_checkpoints=False,
        mixed_precision="bf16",
    )
    return UnlearnConfig.build(**{**values, **overrides})


def step_flops(model, shape: dict, tokens: int, policy_passes: int, reference_passes: int, lora: bool) -> float:
    """Dense FLOPs of one optimizer step (see the module docstring); ``tokens`` per pass."""
    embedding = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - embedding
    if model.config.tie_word_embeddings:
        dense += embedding  # the tied lm_head still multiplies
    forward = 2 * dense + 2 * model.config.num_hidden_layers * shape["seq"] * model.config.hidden_size
    per_policy = forward * (2 if lora else 3)  # forward, activation gradients, weight gradients unless LoRA
    return tokens * (policy_passes * per_policy + reference_passes * forward)


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak RSS on Linux (KiB)


def run_steps(model, tokenizer, method_name: str, config: UnlearnConfig, forget, retain, device: str) -> dict:
    """Build the run with the real ``setup`` and time every optimizer step of one epoch through ``train_epoch``."""
    method = get_method(method_name)
    params = method.params()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = loop.setup(model, tokenizer, method, params, forget, retain, config)
    records, stamps = [], [time.perf_counter()]

    def log(record: dict) -> None:
        records.append(record)  # the loop has already copied this step's figures to the host: the step is done
        stamps.append(time.perf_counter())

    distributed_type = str(run.accelerator.distributed_type)
    try:
        run.log = log
        epoch.train_epoch(run, 1)
        reference = run.reference
    finally:
        from accelerate.state import AcceleratorState

        run.accelerator.free_memory()
        AcceleratorState._reset_state()
    # step 1 builds kernels and warms the allocator: it is timed apart when there are later steps
    step_seconds = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    timed = step_seconds[1:] or step_seconds
    timed_tokens = records[-1]["tokens_seen"] - (records[0]["tokens_seen"] if len(records) > 1 else 0)
    return {
        "steps": len(records),
        "tokens": records[-1]["tokens_seen"],
        "first_step_s": step_seconds[0],
        "tokens_per_s": timed_tokens / max(sum(timed), 1e-9),
        "seconds_per_step": sum(timed) / len(timed),
        "peak_memory_gib": peak_memory_gib(device),
        "first_step": records[0],
        "reference": reference,
        "distributed_type": distributed_type,
    }


def stage_lora_npo(args, shape: dict, tokenizer, forget, retain) -> dict:
    model = build_model(shape, shape["layers"], args.device, torch.bfloat16, tokenizer)
    model.requires_grad_(False)
    model = apply_lora(model, r=16, alpha=32.0, dropout=0.0)
    config = train_config(shape, args.work / "lora_npo", lora_r=16, lora_alpha=32.0, lora_dropout=0.0)
    result = run_steps(model, tokenizer, "npo", config, forget, retain, args.device)
    result.pop("reference")
    # per step: forget and retain through the policy (LoRA), forget through the reference (adapters off)
    flops = step_flops(model, shape, shape["batch"] * shape["seq"], 2, 1, lora=True)
    achieved = flops / max(result["seconds_per_step"], 1e-9) / 1e12
    result.update(
        step1_log_ratio=result["first_step"]["log_ratio"],
        achieved_tflops=achieved,
        mfu=achieved / args.peak_tflops,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    return result


def stage_ga_kl(args, shape: dict, tokenizer, forget, retain) -> dict:
    model = build_model(shape, TWIN_LAYERS[args.size], args.device, torch.float32, tokenizer)
    config = train_config(shape, args.work / "ga_kl")
    result = run_steps(model, tokenizer, "ga_kl", config, forget, retain, args.device)
    reference = result.pop("reference")
    inner = getattr(reference, "module", reference)  # a DeepSpeed engine or FSDP wrapper holds the model inside
    inv_freq = [b.dtype for name, b in inner.named_buffers() if name.endswith("inv_freq")]
    result.update(step1_kl=result["first_step"]["kl"], reference_inv_freq_dtype=str(inv_freq[0]) if inv_freq else None)
    return result


def stage_eval(args, shape: dict, tokenizer, forget, _retain) -> dict:
    from obliviate.evaluate.passes import forward_pass, generate

    model = build_model(shape, shape["layers"], args.device, torch.bfloat16, tokenizer).eval()
    records = (forget * (PROMPTS // len(forget) + 1))[:PROMPTS]
    started = time.perf_counter()
    scores = forward_pass(model, tokenizer, records, batch_size=16, max_length=shape["seq"], show_progress=False)
    _sync(args.device)
    forward_s = time.perf_counter() - started
    prompts = [r.input[-400:] for r in records]
    started = time.perf_counter()
    greedy, _ = generate(model, tokenizer, prompts, max_new_tokens=shape["new_tokens"], batch_size=PROMPTS,
                         show_progress=False)  # fmt: skip
    generate_s = time.perf_counter() - started
    generated = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in greedy)
    return {
        "prompts": len(prompts),
        "forward_s": forward_s,
        "forward_tokens": sum(len(s.token_logp) + 1 for s in scores),
        "generate_s": generate_s,
        "generated_tokens": generated,
        "device": str(next(model.parameters()).device),
        "peak_memory_gib": peak_memory_gib(args.device),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def launch_env(kind: str, device: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file configs/accelerate/<kind>.yaml`` would export."""
    if not device.startswith("cuda"):
        return {"CUDA_VISIBLE_DEVICES": ""}
    file = "fsdp.yaml" if kind == "fsdp" else "deepspeed_zero3.yaml"
    spec = yaml.safe_load((_common.REPO_ROOT / "configs" / "accelerate" / file).read_text())
    env = {"ACCELERATE_MIXED_PRECISION": spec["mixed_precision"]}
    if kind == "fsdp":
        env["ACCELERATE_USE_FSDP"] = "true"
        env.update({f"FSDP_{k.removeprefix('fsdp_').upper()}": str(v) for k, v in spec["fsdp_config"].items()})
    else:
        env["ACCELERATE_USE_DEEPSPEED"] = "true"
        env.update({f"ACCELERATE_DEEPSPEED_{k.upper()}": str(v) for k, v in spec["deepspeed_config"].items()})
        env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = env.pop("ACCELERATE_DEEPSPEED_ZERO3_INIT_FLAG", "false")
    return env


def stage_sharded(args, *_ignored) -> dict:
    """Each wrapper in its own one-process launch, running :func:`stage_ga_kl` there.

    The launch sets what torchrun would for one process (rank 0 of 1) and what ``accelerate launch`` exports for the
    config, without the launcher's own start-up.
    """
    results = {}
    for kind in ("fsdp", "zero3"):
        if kind == "zero3" and importlib.util.find_spec("deepspeed") is None:
            results[kind] = {"status": "skipped", "reason": "deepspeed is not installed: pip install '.[deepspeed]'"}
            continue
        out = args.work / f"{kind}.json"
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--out", str(out),
                   "--work", str(args.work / kind)] + (["--tiny"] if args.tiny else [])  # fmt: skip
        rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        env = {**os.environ, **rank, "MASTER_PORT": str(29400 + os.getpid() % 500), **launch_env(kind, args.device)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.stage_timeout)
        if done.returncode != 0:
            results[kind] = {"status": "failed", "stderr": done.stderr[-3000:]}
            continue
        result = json.loads(out.read_text())
        wanted = "FSDP" if kind == "fsdp" else "DEEPSPEED"
        sharded = wanted in result.get("distributed_type", "")
        reason = None if sharded else f"accelerate ran {result.get('distributed_type')} here (no accelerator)"
        results[kind] = {"status": "ok" if sharded else "skipped", "reason": reason, **result}
    return results


STAGES = {"lora_npo": stage_lora_npo, "ga_kl": stage_ga_kl, "sharded": stage_sharded, "eval": stage_eval}


def run_stage(name: str, args, *data) -> dict:
    started = time.perf_counter()
    try:
        result = STAGES[name](args, *data)
    except Exception as exc:  # noqa: BLE001 - one failing stage must not hide the others
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        gc.collect()  # the stage's model goes before the next one is built
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if isinstance(result, dict) and "first_step" in result:
        result["first_step"] = {k: v for k, v in result["first_step"].items() if isinstance(v, (int, float))}
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return {"wall_s": time.perf_counter() - started, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for the CPU and the test suite")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: $OUT/gpu_smoke.json)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run")
    parser.add_argument("--stage_timeout", type=int, default=240, help="seconds for each sharded launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = "tiny" if args.tiny else "7b"
    args.out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_smoke.json"
    args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_smoke-"))
    shape = SHAPES[args.size]
    if args.device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    data = make_data(shape)
    if args.worker:  # one sharded launch: ga_kl on the twin, wrapped as the launch's environment says
        result = run_stage("ga_kl", args, shape, *data)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        return 0
    report = {
        "device": args.device,
        "tiny": args.tiny,
        "shape": shape,
        "twin_layers": TWIN_LAYERS[args.size],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for name in args.stages.split(","):
        report[name] = run_stage(name, args, shape, *data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "shape"}, default=str)[:4000])
    return 1 if any(_failed(report[name]) for name in args.stages.split(",")) else 0


def _failed(result: dict) -> bool:
    """A stage, or one of the sharded launches inside it, says ``status: failed``."""
    return result.get("status") == "failed" or any(_failed(v) for v in result.values() if isinstance(v, dict))


if __name__ == "__main__":
    raise SystemExit(main())
