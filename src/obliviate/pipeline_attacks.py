"""Does the PII come back? The demo's and the LUME benchmark's attacks (``PipelineConfig.attacks``).

After every method has run, the pipeline attacks the target, the oracle and every method's chosen checkpoint the
same way, each on an in-memory copy (:func:`obliviate.evaluate.attacks.run_attacks`, as ``evaluate --attacks``
does): ``relearn`` fine-tunes the copy for :data:`RELEARN_STEPS` steps on half of each forget person's records
(source ``forget_half``) and probes the other half; ``quantize`` rounds its weights to :data:`QUANTIZE_BITS` bits.
The attacked oracle is the reference a method is held to: a relearned oracle shows what k steps teach a model that
never saw the forget people, so leaking no more than it after the same attack is the goal (issue 11). Both run at
the pipeline's cheap settings (one k, one source, one bit width; ``evaluate --attacks`` runs the full grid).

Every model of one pipeline is relearned at one rate, so that "the same attack" means the same optimiser on every
model: :data:`RELEARN_LR_FRACTION` of the pipeline's fine-tuning rate (``finetune_lr``, the rate the target memorised
the data at, under a schedule). The fraction was measured on the fast demo (50 people, tiny OLMo, 10 steps of 8 rows
on ``forget_half``): at the full 3e-3 a fresh constant-rate AdamW wrecks the target (retain ROUGE-L 0.96 → 0.12,
forget leak 1.0 → 0), which is no attack; at 1e-3 the oracle loses retain ROUGE-L 0.96 → 0.72; at 3e-4 target and
oracle keep their leak rates and retain ROUGE-L (retain exact match dips, the oracle's 0.98 → 0.80) while the default
method's held-back leak rises 0 → 0.20: relearning shows what it brings back more than what it breaks. The
unlearning runs' own rates (range test) lay between 3e-4 and 6e-4 there, GA's aside.

The unattacked numbers of a method's checkpoint are read back from its ``eval/epoch-N/results.json``; nothing is
re-evaluated.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import pipeline_attack_names
from obliviate.evaluate.attacks import AttackOptions, describe, run_attacks
from obliviate.evaluate.results import AttackResult, EvalResult, MethodRun

TARGET, ORACLE = "target", "oracle (retrain)"
"""The references' names, as the demo's summary table names them."""
RELEARN_STEPS = (10,)
RELEARN_SOURCES = ("forget_half",)
QUANTIZE_BITS = (4,)
RELEARN_LR_FRACTION = 0.1
"""The relearning rate as a share of the pipeline's fine-tuning rate (see the module docstring for why)."""


@dataclass
class PipelineAttacks:
    """The attacks of one pipeline run.

    Attributes:
        models: model name (:data:`TARGET`, :data:`ORACLE`, then each method) → its attacks, in the order run.
        options: the settings every model was attacked with.
        wall_seconds: the attacks' share of the pipeline's wall time.
        default_method: what ``obliviate unlearn --method auto`` chooses on this data (the issue's goal is stated
            for it; the report gives it for every method).
        checkpoints: model name → the directory attacked.
    """

    models: dict[str, list[AttackResult]]
    options: AttackOptions
    wall_seconds: float
    default_method: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)

    def entries(self) -> list[dict[str, Any]]:
        """``results.json["attacks"]``: one entry per model and attack, ``model`` naming whose it is."""
        return [{"model": name, **result.to_json()} for name, found in self.models.items() for result in found]


def attack_options(config) -> AttackOptions | None:
    """The pipeline's :class:`AttackOptions` from ``config.attacks`` (None: ``none``, the attacks are off)."""
    names = pipeline_attack_names(config.attacks)
    if not names:
        return None
    return AttackOptions(
        attacks=names,
        relearn_steps=RELEARN_STEPS,
        relearn_sources=RELEARN_SOURCES,
        relearn_lr=config.finetune_lr * RELEARN_LR_FRACTION,
        quantize_bits=QUANTIZE_BITS,
    )


def attack_checkpoint(path: str, data, options, attack: AttackOptions, unattacked: EvalResult, oracle):
    """One job: every attack on copies of the model at ``path`` (loaded on this process's device)."""
    from obliviate.evaluate.epochs import release_memory
    from obliviate.models.load import load_model, process_device

    model, tokenizer = load_model(path, device=process_device())
    try:
        return run_attacks(model, tokenizer, data, options, attack, unattacked, oracle)
    finally:
        del model
        release_memory()


def stored_result(eval_dir: str | Path) -> EvalResult:
    """An epoch's evaluation as the epoch hook wrote it (``eval/epoch-N/results.json``): its metrics and leak report
    (the per-example rows and the leaked pairs stay on disk or were never written)."""
    data = json.loads((Path(eval_dir) / "results.json").read_text())
    return EvalResult(
        metrics=data["metrics"],
        per_example=[],
        semeval=data.get("semeval") or {},
        leak=data.get("leak") or {},
        notes=data.get("notes") or [],
        forget_nll=[],
        mink_auc=None,
        exposure=data.get("exposure") or {},
    )


def chosen_checkpoint(run: MethodRun, target: Path, target_result: EvalResult) -> tuple[str, EvalResult]:
    """The directory of ``run``'s chosen checkpoint and its unattacked evaluation (epoch 0: the target)."""
    from obliviate.errors import DataError
    from obliviate.train.checkpoint import list_checkpoints

    epoch = run.best["epoch"]
    if epoch == 0:
        return str(target), target_result
    found = dict(list_checkpoints(run.run_dir))
    if epoch not in found:
        raise DataError(f"{run.run_dir}: the chosen checkpoint epoch-{epoch} is missing, so it cannot be attacked")
    return str(found[epoch]), stored_result(run.best_epoch.path)


def default_method(dirs: dict[str, Path]) -> str | None:
    """``--method auto``'s choice on the pipeline's data, asked of :func:`obliviate.train.resolve.auto_method`
    itself (its printed line is swallowed)."""
    from obliviate.config import UnlearnConfig
    from obliviate.data.load import load_split
    from obliviate.train.resolve import auto_method

    if not dirs.get("retain"):
        return "ga_gd"
    config = UnlearnConfig.build(
        output_dir="unused", model_dir="unused", forget_dir=str(dirs["forget"]), retain_dir=str(dirs["retain"])
    )
    forget = load_split(config.forget_dir, split="forget")
    retain = load_split(config.retain_dir, split="retain")
    with contextlib.redirect_stdout(io.StringIO()):
        return auto_method(config, forget, retain)


def run_pipeline_attacks(
    jobs,
    config,
    dirs: dict[str, Path],
    hook_args: tuple,
    references: Sequence[tuple[Path, EvalResult]],
    runs: Sequence[MethodRun],
    log: Callable[[str], None] = print,
) -> PipelineAttacks | None:
    """Attack the target and the oracle (``references``, in that order; no oracle, none attacked) and every run's
    chosen checkpoint, one job per model on ``jobs``; None when ``config.attacks`` is ``none``."""
    attack = attack_options(config)
    if attack is None:
        return None
    data, options, oracle = hook_args
    (target, target_result), (oracle_dir, oracle_result) = references
    models = {TARGET: (str(target), target_result)}
    if oracle_dir is not None:
        models[ORACLE] = (str(oracle_dir), oracle_result)
    for run in runs:
        models[run.method] = chosen_checkpoint(run, Path(target), target_result)
    log(f"attacks ({', '.join(attack.attacks)}) on {', '.join(models)}")
    started = time.perf_counter()
    found = jobs.run(
        [(attack_checkpoint, (path, data, options, attack, result, oracle)) for path, result in models.values()]
    )
    seconds = time.perf_counter() - started
    results = dict(zip(models, found, strict=True))
    for name, attacked in results.items():
        for result in attacked:
            log(f"{name}: {describe(result)}")
    checkpoints = {name: path for name, (path, _) in models.items()}
    return PipelineAttacks(results, attack, seconds, default_method(dirs), checkpoints)
