"""The demo and benchmark pipeline: synth → target / oracle → unlearn (evaluated every epoch) → report.

Intermediate models are cached under ``runs/cache`` by a hash of everything that determines them, so a re-run
reuses them; ``fresh=True`` ignores the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import FinetuneConfig, UnlearnConfig
from obliviate.data.load import load_split
from obliviate.errors import ConfigError
from obliviate.evaluate.epochs import load_epoch_results, make_epoch_hook, select_best
from obliviate.evaluate.suite import EvalOptions, evaluate_model, load_eval_data, oracle_stats
from obliviate.models.load import load_model
from obliviate.train.run import run_finetune, run_unlearn

DEMO_METHODS = ("ga", "ga_kl", "ga_gd", "npo")

PRESETS: dict[str, dict[str, Any]] = {
    # Chosen for the tiny model on the synthetic data only (benchmarks/SWEEP.md); LUME stays a fair test. A higher
    # retain weight (alpha 4) keeps retain knowledge while the forget set goes; the per-epoch evaluation and the
    # best-epoch rule stop each method before it collapses.
    "ga": {"lr": 1e-4, "epochs": 8, "stop_forget_nll": 8.0},
    "ga_kl": {"lr": 1e-4, "epochs": 8, "stop_forget_nll": 8.0},
    "ga_gd": {"lr": 3e-4, "epochs": 8, "alpha": 4.0, "stop_forget_nll": 8.0},
    "npo": {"lr": 1e-4, "epochs": 8, "alpha": 4.0},
    "simnpo": {"lr": 3e-4, "epochs": 8, "alpha": 4.0},
    "rmu": {"lr": 1e-3, "epochs": 8, "alpha": 100.0, "rmu_c": 6.5},
}
"""Per-method unlearning settings for the tiny model; everything else is the engine's default."""


@dataclass
class PipelineConfig:
    """One end-to-end experiment. ``data_dir`` set → use that data (e.g. LUME); else synthesise."""

    output_dir: str = "runs/demo"
    cache_dir: str = "runs/cache"
    methods: tuple[str, ...] = DEMO_METHODS
    people: int = 200
    forget_fraction: float = 0.1
    holdout_fraction: float = 0.1
    seed: int = 0
    size: str = "tiny"
    finetune_epochs: int = 40
    finetune_lr: float = 3e-3
    finetune_batch_size: int = 16
    unlearn_batch_size: int = 16
    unlearn_epochs: int | None = None
    eval_max_examples: int | None = 120
    max_new_tokens: int = 40
    leak_samples: int = 0
    select: str = "holdout_gap"
    fresh: bool = False
    data_dirs: dict[str, str] | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in PRESETS.items()})


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _dir_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:12]


def prepare_data(config: PipelineConfig, log) -> dict[str, Path]:
    if config.data_dirs:
        return {k: Path(v) for k, v in config.data_dirs.items()}
    from obliviate.data.synth import synthesize, write_synth

    key = _hash(["synth", config.people, config.forget_fraction, config.holdout_fraction, config.seed])
    out = Path(config.cache_dir) / f"data-{key}"
    if config.fresh or not (out / "pii.json").is_file():
        data = synthesize(
            people=config.people,
            forget_fraction=config.forget_fraction,
            holdout_fraction=config.holdout_fraction,
            seed=config.seed,
        )
        write_synth(data, out, overwrite=True)
    log(f"data: {config.people} synthetic people → {out}")
    return {"forget": out / "forget", "retain": out / "retain", "holdout": out / "holdout"}


def cached_finetune(name: str, data: list[Path], config: PipelineConfig, tokenizer_data: list[Path], log) -> Path:
    """Fine-tune (or reuse) a model on ``data``; the tokenizer is trained on ``tokenizer_data`` for both models."""
    settings = dict(
        size=config.size,
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        batch_size=config.finetune_batch_size,
        seed=config.seed,
    )
    key = _hash([name, settings, [_dir_hash(p) for p in data], [_dir_hash(p) for p in tokenizer_data]])
    out = Path(config.cache_dir) / f"{name}-{key}"
    if not config.fresh and (out / "trainer_state.json").is_file():
        log(f"{name}: cached → {out}")
        return out
    from obliviate.models.tiny import init_model

    init = Path(config.cache_dir) / f"init-{_hash([settings, [_dir_hash(p) for p in tokenizer_data]])}"
    if config.fresh or not (init / "config.json").is_file():
        records = [r for p in tokenizer_data for r in load_split(p)]
        init_model(records, init, size=config.size, seed=config.seed)
    started = time.perf_counter()
    result = run_finetune(
        FinetuneConfig(
            output_dir=str(out),
            model=str(init),
            data=[str(p) for p in data],
            epochs=config.finetune_epochs,
            lr=config.finetune_lr,
            batch_size=config.finetune_batch_size,
            micro_batch_size=config.finetune_batch_size,
            seed=config.seed,
            overwrite=True,
        )
    )
    log(
        f"{name}: {result.epochs_completed} epochs, {result.tokens_seen:,} tokens in "
        f"{time.perf_counter() - started:.0f}s → {out}"
    )
    return out


def unlearn_method(
    method: str, target: Path, dirs: dict[str, Path], config: PipelineConfig, hook_args, log
) -> dict[str, Any]:
    preset = dict(config.presets.get(method, {}))
    if config.unlearn_epochs is not None:
        preset["epochs"] = config.unlearn_epochs
    out = Path(config.output_dir) / "methods" / method
    unlearn = UnlearnConfig(
        output_dir=str(out),
        model_dir=str(target),
        forget_dir=str(dirs["forget"]),
        retain_dir=str(dirs["retain"]),
        method=method,
        batch_size=config.unlearn_batch_size,
        micro_batch_size=config.unlearn_batch_size,
        seed=config.seed,
        overwrite=True,
        **preset,
    )
    data, options, oracle = hook_args
    hook = make_epoch_hook(data, options, out / "eval", str(target), oracle)
    started = time.perf_counter()
    result = run_unlearn(unlearn, epoch_hook=hook)
    wall_seconds = time.perf_counter() - started  # training and the per-epoch evaluations
    epochs = load_epoch_results(out / "eval")
    best = select_best(epochs, config.select)
    log(
        f"{method}: {result.epochs_completed} epochs{' (stopped: ' + result.stopped + ')' if result.stopped else ''}, "
        f"best epoch {best['epoch']} ({best['reason']})"
    )
    return {
        "method": method,
        "run_dir": out,
        "epochs": epochs,
        "best": best,
        "tokens": result.tokens_seen,
        "wall_seconds": wall_seconds,
        "preset": preset,
    }


def run_pipeline(config: PipelineConfig, log=print) -> dict[str, Any]:
    """The whole experiment; returns everything the report needs (see :mod:`obliviate.report.demo`)."""
    started = time.perf_counter()
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "methods").is_dir() and not (out / "report.md").is_file():
            raise ConfigError(f"--output_dir {out} is not empty and holds no earlier demo report: not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = prepare_data(config, log)
    train_dirs = [dirs["forget"], dirs["retain"]]
    target = cached_finetune("target", train_dirs, config, train_dirs, log)
    oracle_dir = cached_finetune("oracle", [dirs["retain"]], config, train_dirs, log)
    data = load_eval_data(dirs["forget"], dirs["retain"], dirs.get("holdout"))
    options = EvalOptions(
        max_examples=config.eval_max_examples,
        max_new_tokens=config.max_new_tokens,
        leak_samples=config.leak_samples,
        seed=config.seed,
        show_progress=False,
    )
    oracle_model, oracle_tok = load_model(oracle_dir)
    oracle = oracle_stats(oracle_model, oracle_tok, data, options)
    oracle_result = evaluate_model(oracle_model, oracle_tok, data, options, oracle=oracle)
    del oracle_model
    log("oracle: evaluated")
    runs = [unlearn_method(m, target, dirs, config, (data, options, oracle), log) for m in config.methods]
    target_state = json.loads((target / "trainer_state.json").read_text())
    oracle_state = json.loads((oracle_dir / "trainer_state.json").read_text())
    return {
        "config": dataclasses.asdict(config),
        "data_dirs": {k: str(v) for k, v in dirs.items()},
        "target_dir": str(target),
        "oracle_dir": str(oracle_dir),
        "oracle_result": oracle_result,
        "target_tokens": target_state["tokens_seen"],
        "oracle_tokens": oracle_state["tokens_seen"],
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
    }
