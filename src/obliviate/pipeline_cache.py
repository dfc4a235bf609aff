"""What the pipeline caches under ``runs/cache``: the synthetic data, the freshly initialised model, target and oracle.

Each entry is named by a hash of everything that determines it (settings and the bytes of the data it is trained on),
so a re-run reuses it; ``PipelineConfig.fresh`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.config import FinetuneConfig
from obliviate.data.load import load_training_records
from obliviate.train.run import run_finetune

if TYPE_CHECKING:
    from obliviate.pipeline import PipelineConfig


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _dir_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:12]


def prepare_data(config: PipelineConfig, log) -> dict[str, Path]:
    """The data directories: ``config.data_dirs`` when given, else the cached synthetic people (made once)."""
    if config.data_dirs:
        return {k: Path(v) for k, v in config.data_dirs.items()}
    from obliviate.data.synth import synthesize, write_synth

    key = _hash(["synth", config.people, config.forget_fraction, config.holdout_fraction, config.seed])
    out = Path(config.cache_dir) / f"data-{key}"
    if config.fresh or not (out / "pii.json").is_file():
        shutil.rmtree(out, ignore_errors=True)  # the pipeline's own cache entry, named by its settings' hash
        data = synthesize(
            people=config.people,
            forget_fraction=config.forget_fraction,
            holdout_fraction=config.holdout_fraction,
            seed=config.seed,
        )
        write_synth(data, out, overwrite=True)
    log(f"data: {config.people} synthetic people → {out}")
    return {"forget": out / "forget", "retain": out / "retain", "holdout": out / "holdout"}


def _finetune_settings(config: PipelineConfig) -> dict[str, Any]:
    return dict(
        size=config.size,
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        batch_size=config.finetune_batch_size,
        seed=config.seed,
    )


def cached_init(config: PipelineConfig, tokenizer_data: list[Path]) -> Path:
    """The tokenizer trained on ``tokenizer_data`` and the freshly initialised model, shared by target and oracle."""
    key = _hash([_finetune_settings(config), [_dir_hash(p) for p in tokenizer_data]])
    init = Path(config.cache_dir) / f"init-{key}"
    if config.fresh or not (init / "config.json").is_file():
        from obliviate.models.tiny import init_model

        init_model(load_training_records(tokenizer_data), init, size=config.size, seed=config.seed)
    return init


def cached_finetune(
    name: str, data: list[Path], config: PipelineConfig, tokenizer_data: list[Path], log, init: Path | None = None
) -> Path:
    """Fine-tune (or reuse) a model on ``data``, starting from ``init`` (default: :func:`cached_init` of
    ``tokenizer_data``; pass it when several jobs start from one model, so that none rebuilds it under ``fresh``)."""
    settings = _finetune_settings(config)
    grouped = config.group_by_length
    key_parts: list[Any] = [name, settings, [_dir_hash(p) for p in data], [_dir_hash(p) for p in tokenizer_data]]
    if grouped:  # appended only when on, so that models cached before the option existed keep their key
        key_parts.append("group_by_length")
    out = Path(config.cache_dir) / f"{name}-{_hash(key_parts)}"
    if not config.fresh and (out / "trainer_state.json").is_file():
        log(f"{name}: cached → {out}")
        return out
    init = init if init is not None else cached_init(config, tokenizer_data)
    shutil.rmtree(out, ignore_errors=True)  # the pipeline's own cache entry: stale, or refreshed under --fresh
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
            group_by_length=grouped,
            seed=config.seed,
            overwrite=True,
        )
    )
    seconds = time.perf_counter() - started
    log(
        f"{name}: {result.epochs_completed} epochs, {result.tokens_seen:,} tokens in {seconds:.0f}s "
        f"({result.tokens_seen / max(seconds, 1e-9):,.0f} tokens/s) → {out}"
    )
    return out
