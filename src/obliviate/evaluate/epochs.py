"""Evaluate every epoch of an unlearning run (the rules that pick one: :mod:`obliviate.evaluate.selection`).

Epoch 0 is the model before unlearning (the run's ``model_dir``); epoch N is ``checkpoints/epoch-N``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from obliviate.errors import DataError
from obliviate.evaluate.data import EvalData
from obliviate.evaluate.membership import OracleStats
from obliviate.evaluate.results import EpochEval, EvalResult
from obliviate.evaluate.suite import EvalOptions, evaluate_model
from obliviate.models.load import load_model, process_device
from obliviate.train.checkpoint import list_checkpoints

EPOCH_EXPOSURE_K = 20
"""Fakes per PII value when every epoch is evaluated (the demo's too), forget and holdout only: measured on the demo
target, an evaluation of 60 rows per split took 14.0 s of CPU without exposure, 20.8 s with K = 20 on every split
and 28.0 s with K = 50. The full K = 100 is ``obliviate evaluate``'s."""
EPOCH_EXPOSURE_SPLITS = ("forget", "holdout")


def run_model_dir(run_dir: Path) -> str:
    """The model a run started from, read from its resolved ``config.yaml``."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{run_dir} has no config.yaml: expected an obliviate unlearning run directory")
    config = yaml.safe_load(config_file.read_text()) or {}
    if not config.get("model_dir"):
        raise DataError(f"{config_file} names no model_dir")
    return str(config["model_dir"])


def evaluate_epoch(
    epoch: int,
    path: str | Path,
    data: EvalData,
    options: EvalOptions,
    oracle: OracleStats | None,
    base_model: str | None = None,
) -> EvalResult:
    """One model's evaluation on this process's device; an adapter is merged into its base first, so that generation
    runs plain matmuls. The model is freed before returning: the next epoch, or training, needs the memory."""
    model, tokenizer = load_model(path, base_model=base_model, device=process_device(), dtype=options.load_dtype)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    try:
        return evaluate_model(model, tokenizer, data, options, oracle=oracle)
    finally:
        del model
        release_memory()


def release_memory() -> None:
    """Return freed tensors to the device: a model dropped between epochs must not stay reserved by the allocator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_checkpoints(
    run_dir: str | Path,
    data: EvalData,
    options: EvalOptions,
    oracle: OracleStats | None = None,
    on_epoch: Callable[[int, EvalResult], None] | None = None,
) -> list[EpochEval]:
    """Evaluate epoch 0 and every complete checkpoint; each :class:`EpochEval` keeps its whole result (to write)."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise DataError(f"{run_dir} holds no checkpoints/epoch-N directory: expected an unlearning run directory")
    base = run_model_dir(run_dir)
    epochs = []
    for epoch, path in [(0, Path(base)), *checkpoints]:
        result = evaluate_epoch(epoch, path, data, options, oracle, base_model=base if epoch else None)
        epochs.append(EpochEval.of(epoch, path, result, keep=True))
        if on_epoch is not None:
            on_epoch(epoch, result)
    return epochs


def write_epoch_result(out_dir: Path, epoch: int, result: EvalResult) -> None:
    """``eval/epoch-N/results.json`` and ``per_example.jsonl`` (generations already redacted)."""
    from obliviate.io import write_text_atomic

    target = out_dir / f"epoch-{epoch}"
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "results.json", json.dumps({"epoch": epoch, **result.to_json()}, indent=1))
    write_text_atomic(target / "per_example.jsonl", "".join(json.dumps(r) + "\n" for r in result.per_example))


def make_epoch_hook(
    data: EvalData,
    options: EvalOptions,
    out_dir: Path,
    model_dir: str,
    oracle: OracleStats | None = None,
    lora: bool = False,
    start: EvalResult | None = None,
):
    """An engine epoch hook that evaluates each checkpoint (and, first, the starting model as epoch 0).

    Results go to ``out_dir/epoch-N/``; the hook returns epoch N's :class:`EpochEval` (its ``path`` that folder),
    which the training loop collects in ``RunResult.epoch_results``. Under several processes every process evaluates
    its share of the rows (the passes gather them, a collective each process must join) and only the main one writes.
    ``start`` is the starting model's result when it is already known (several runs from one model share it).
    """
    from obliviate.distributed import process_state

    def hook(epoch: int, path: Path) -> EpochEval:
        state = process_state()
        if not (out_dir / "epoch-0" / "results.json").is_file():
            first = start if start is not None else evaluate_epoch(0, model_dir, data, options, oracle)
            if state.is_main_process:
                write_epoch_result(out_dir, 0, first)
        result = evaluate_epoch(epoch, path, data, options, oracle, base_model=model_dir if lora else None)
        if state.is_main_process:
            write_epoch_result(out_dir, epoch, result)
        state.wait_for_everyone()  # every process sees the same files at the next epoch
        return EpochEval.of(epoch, out_dir / f"epoch-{epoch}", result)

    return hook


def epoch_evaluator(config) -> Callable[[int, Path], EpochEval]:
    """The hook behind ``obliviate unlearn --eval_every_epoch``: writes ``OUTPUT_DIR/eval/epoch-N/``."""
    from obliviate.evaluate.data import load_eval_data

    data = load_eval_data(config.forget_dir, config.retain_dir, config.holdout_dir)
    options = EvalOptions(
        max_examples=config.eval_max_examples,
        exposure_k=EPOCH_EXPOSURE_K,
        exposure_splits=EPOCH_EXPOSURE_SPLITS,
        show_progress=False,
        seed=config.seed,
    )
    model_dir = str(Path(config.model_dir).resolve()) if Path(config.model_dir).exists() else config.model_dir
    return make_epoch_hook(data, options, Path(config.output_dir) / "eval", model_dir, lora=config.lora_r > 0)


def load_epoch_results(eval_dir: Path) -> list[EpochEval]:
    """The epochs written to ``eval/epoch-N/results.json`` (by an earlier run), sorted by epoch."""
    found = []
    for path in eval_dir.glob("epoch-*/results.json"):
        data = json.loads(path.read_text())
        stderr, units = data.get("stderr") or {}, data.get("units") or {}
        found.append(EpochEval(data["epoch"], str(path.parent), data["summary"], stderr=stderr, units=units))
    return sorted(found, key=lambda e: e.epoch)


def run_of_model(path: str | Path) -> dict | None:
    """What an obliviate unlearning run says about a model directory: the run's final model (``RUN``) or one of its
    checkpoints (``RUN/checkpoints/epoch-N``). None for any other model (a hub id, a model from elsewhere).

    Returns:
        ``{"run_dir", "config_file", "config" (the resolved config.yaml), "epoch" (None for the final model)}``.
    """
    model = Path(str(path)).expanduser()
    candidates = [(model, None)]
    if model.parent.name == "checkpoints" and model.name.startswith("epoch-") and model.name[6:].isdigit():
        candidates.append((model.parent.parent, int(model.name[6:])))
    for run_dir, epoch in candidates:
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            continue
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(config, dict) and config.get("method"):
            return {"run_dir": str(run_dir), "config_file": str(config_file), "config": config, "epoch": epoch}
    return None
