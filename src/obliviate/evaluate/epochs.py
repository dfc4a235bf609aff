"""Evaluate every epoch of an unlearning run and pick the best checkpoint.

Epoch 0 is the model before unlearning (the run's ``model_dir``); epoch N is ``checkpoints/epoch-N``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from obliviate.errors import ConfigError, DataError
from obliviate.evaluate.results import EpochEval, EvalResult
from obliviate.evaluate.suite import EvalData, EvalOptions, OracleStats, evaluate_model
from obliviate.models.load import load_model, process_device
from obliviate.train.checkpoint import list_checkpoints

SELECT_RULES = ("last", "task_aggregate", "holdout_gap")
EPOCH_EXPOSURE_K = 20
"""Fakes per PII value when every epoch is evaluated (the demo's too), forget and holdout only: measured on the demo
target, an evaluation of 60 rows per split took 14.0 s of CPU without exposure, 20.8 s with K = 20 on every split
and 28.0 s with K = 50. The full K = 100 is ``obliviate evaluate``'s."""
EPOCH_EXPOSURE_SPLITS = ("forget", "holdout")
RETAIN_FLOOR = 0.9
"""A candidate epoch must keep retain ROUGE-L recall at ≥ 90 % of epoch 0's."""


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
    model, tokenizer = load_model(path, base_model=base_model, device=process_device())
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


def select_best(epochs: Sequence[EpochEval], rule: str = "task_aggregate") -> dict[str, Any]:
    """The best epoch under ``rule``, among epochs that keep retain ROUGE-L ≥ 90 % of epoch 0.

    Rules:
        ``last``: the run's last checkpoint, where its stop rule (or step budget) ended it; no evaluation chooses,
            so nothing about the forget set's answers leaks into the choice. The retain floor does not apply.
        ``task_aggregate``: the highest SemEval task aggregate (the default of the issue and of the official score;
            it rewards over-forgetting, since forget regurgitation 0 beats any reference).
        ``holdout_gap``: the smallest gap to never-seen people, ``|forget − holdout|`` of ROUGE-L recall plus that of
            the leak rate: a forget person should look like a person the model never saw. Needs a holdout set, and
            also keeps retain exact match ≥ 90 % of epoch 0.
    """
    if rule not in SELECT_RULES:
        raise ConfigError(f"--select {rule!r}: expected one of {', '.join(SELECT_RULES)}")
    if rule == "last" and len(epochs) > 1:
        last = epochs[-1]
        return {"epoch": last.epoch, "path": last.path, "rule": rule, "reason": "the run's last checkpoint"}
    if rule == "last":
        return {"epoch": 0, "rule": rule, "reason": "the run wrote no checkpoint: the starting model"}
    start = epochs[0].summary
    floor = RETAIN_FLOOR * (start.get("retain/rougeL_recall") or 0.0)
    candidates = [e for e in epochs[1:] if (e.summary.get("retain/rougeL_recall") or 0.0) >= floor]
    kept = f"retain ROUGE-L >= {floor:.3f}"
    if rule == "holdout_gap" and start.get("retain/exact_match") is not None:
        # Forgetting a person must not cost other people's facts: retain knowledge keeps the same floor.
        em_floor = RETAIN_FLOOR * start["retain/exact_match"]
        candidates = [e for e in candidates if (e.summary.get("retain/exact_match") or 0.0) >= em_floor]
        kept += f" and retain EM >= {em_floor:.3f}"
    if not candidates:
        return {
            "epoch": 0,
            "rule": rule,
            "reason": f"no epoch kept {kept} ({RETAIN_FLOOR:.0%} of epoch 0): keeping the starting model",
        }
    if rule == "task_aggregate":
        best = max(candidates, key=lambda e: e.summary.get("all/task_aggregate") or 0.0)
        score = best.summary.get("all/task_aggregate")
        reason = f"highest task aggregate ({score:.3f}) with {kept}"
    else:
        if not any("holdout/rougeL_recall" in e.summary for e in candidates):
            raise ConfigError("--select holdout_gap needs a holdout set (--holdout_dir)")
        best = min(candidates, key=_holdout_gap)
        reason = f"smallest gap to holdout people ({_holdout_gap(best):.3f}) with {kept}"
    return {"epoch": best.epoch, "path": best.path, "rule": rule, "reason": reason}


def _holdout_gap(epoch: EpochEval) -> float:
    s = epoch.summary
    gap = abs(s.get("forget/rougeL_recall", 0.0) - s.get("holdout/rougeL_recall", 0.0))
    return gap + abs(s.get("forget/leak_rate", 0.0) - s.get("holdout/leak_rate", 0.0))


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
    from obliviate.evaluate.suite import load_eval_data

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
        found.append(EpochEval(data["epoch"], str(path.parent), data["summary"]))
    return sorted(found, key=lambda e: e.epoch)
