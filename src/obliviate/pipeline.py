"""The demo and benchmark pipeline: synth → target / oracle → unlearn (evaluated every epoch) → report.

Intermediate models are cached under ``runs/cache`` by a hash of everything that determines them, so a re-run
reuses them; ``fresh=True`` ignores the cache (:mod:`obliviate.pipeline_cache`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import PIPELINE_ATTACKS, UnlearnConfig
from obliviate.errors import ConfigError
from obliviate.evaluate.data import load_eval_data
from obliviate.evaluate.epochs import (
    EPOCH_EXPOSURE_K,
    EPOCH_EXPOSURE_SPLITS,
    evaluate_epoch,
    make_epoch_hook,
)
from obliviate.evaluate.membership import oracle_stats
from obliviate.evaluate.results import EpochEval, EvalResult, MethodRun
from obliviate.evaluate.selection import select_best
from obliviate.evaluate.stop_rule import read_stop_checks, stop_rule_for
from obliviate.evaluate.suite import EvalOptions
from obliviate.io import MARKER, check_apart, mark_output_dir
from obliviate.jobs import Jobs, available_cpus
from obliviate.losses import get_method
from obliviate.models.load import load_model
from obliviate.models.tiny import SIZES
from obliviate.pipeline_attacks import PipelineAttacks, attack_options, run_pipeline_attacks
from obliviate.pipeline_cache import check_inputs, model_memorisation, pipeline_models, prepare_data
from obliviate.train.forward_count import compute_tokens
from obliviate.train.run import run_unlearn

DEMO_METHODS = ("ga", "ga_kl", "ga_gd", "npo", "contrast")

PRESETS: dict[str, dict[str, Any]] = {}
"""Per-method overrides of ``obliviate unlearn``'s own defaults (none: the demo runs every method as the command
line does, with the method's preset from :mod:`obliviate.losses`, a measured learning rate and the stop rule).
Benchmarks and probes put their changes here."""


@dataclass
class PipelineConfig:
    """One end-to-end experiment. ``data_dirs`` set → use that data (e.g. LUME); else synthesise.

    ``workers`` (0: automatic) runs independent jobs (target and oracle; the methods) side by side: on CPU one
    process per available core, up to the number of jobs, each with an equal share of the cores as torch threads
    (on 2 cores: two one-thread processes, 2.6× the throughput of one two-thread process for the tiny model); on a
    GPU one job at a time. ``group_by_length`` batches similar lengths together in fine-tuning and unlearning; it
    is off, because it slowed memorisation badly in our measurement (BENCHMARKS.md). ``attacks`` (``none``: off)
    attacks the target, the oracle and every method's chosen checkpoint (:mod:`obliviate.pipeline_attacks`).
    """

    output_dir: str = "runs/demo"
    cache_dir: str = "runs/cache"
    methods: tuple[str, ...] = DEMO_METHODS
    people: int = 200
    forget_fraction: float = 0.1
    holdout_fraction: float = 0.1
    seed: int = 0
    size: str = "tiny"
    finetune_epochs: int = 30  # with finetune_until_memorised: the budget
    finetune_until_memorised: float | None = 0.95  # fine-tune until train EM and ROUGE-L reach this; None: fixed
    memorised_sample: int = 64  # training rows the memorisation check generates for, each epoch
    finetune_lr: float | None = None  # None: the size's own (models.tiny.SIZES)
    finetune_batch_size: int = 16
    unlearn_batch_size: int = 32  # obliviate unlearn's default
    unlearn_epochs: int | None = None  # None: obliviate unlearn's step budget, ended by its stop rule
    unlearn_max_steps: int | None = None
    unlearn_checkpoints: int = 8  # checkpoints (each evaluated) per method run, at most
    eval_max_examples: int | None = 120
    eval_batch_size: int = 128
    max_new_tokens: int = 40
    leak_samples: int = 0
    exposure_k: int = EPOCH_EXPOSURE_K  # fakes per PII value at every epoch's evaluation, forget and holdout
    select: str = "last"
    group_by_length: bool = False
    workers: int = 0
    fresh: bool = False
    data_dirs: dict[str, str] | None = None
    target_dir: str | None = None  # a fine-tuned target to start from; None: fine-tune one (size) on forget + retain
    oracle_dir: str | None = None  # a model retrained on retain only; None: train one (train_oracle) or go without
    train_oracle: bool = True  # with target_dir: the oracle follows the target's recipe (its config.yaml)
    attacks: str = PIPELINE_ATTACKS
    report_to: str = "none"  # every method's unlearning run logs to this tracker (its OUTPUT_DIR/tensorboard)
    presets: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in PRESETS.items()})

    def __post_init__(self) -> None:
        if self.finetune_lr is None and self.size in SIZES:
            self.finetune_lr = SIZES[self.size].finetune_lr
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, found {self.workers}")
        attack_options(self)  # a bad --attacks fails before any work


@dataclass
class PipelineOutcome:
    """Everything the report needs (:func:`obliviate.report.demo.write_demo_report`)."""

    config: PipelineConfig
    data_dirs: dict[str, str]
    target_dir: str
    oracle_dir: str | None  # None: no oracle (the report says so; its goals are not computed)
    target_result: EvalResult
    oracle_result: EvalResult | None
    target_tokens: int | None  # None: a given target whose training obliviate did not record
    oracle_tokens: int | None
    runs: list[MethodRun]
    cached: dict[str, bool]  # trained before this run started: taken from the cache
    workers: int
    wall_seconds: float
    memorisation: dict[str, Any] = field(default_factory=dict)  # per model: its train EM / ROUGE-L, epochs, budget
    trained: dict[str, bool] = field(default_factory=dict)  # per model: fine-tuned by the pipeline (else given)
    attacks: PipelineAttacks | None = None  # None: PipelineConfig.attacks is none
    target_compute: float | None = None  # its tokens plus forward-only tokens' share (None: not recorded, or older)
    oracle_compute: float | None = None


class StampedLog:
    """Prints ``[seconds since start] message``; picklable, so that worker processes log the same way."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.time() if started is None else started

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.started:6.0f}s] {message}", flush=True)


def resolve_workers(config: PipelineConfig, jobs: int) -> int:
    """Processes for ``jobs`` independent jobs: ``config.workers``, or on CPU one per core; on a GPU one."""
    if config.workers > 0:
        return min(config.workers, jobs)
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(available_cpus(), jobs))


def _portable(log: Callable[[str], None]) -> Callable[[str], None]:
    try:
        pickle.dumps(log)
        return log
    except Exception:  # a closure or lambda: workers print plainly
        return print


def interleaves(method: str, config: PipelineConfig) -> bool:
    """Whether ``method`` runs with ``--schedule interleaved`` (its preset or the pipeline's): retain steps after
    every forget step, the longest runs, which the worker pool starts first."""
    from obliviate.losses import get_method

    schedule = config.presets.get(method, {}).get("schedule") or get_method(method).preset.get("schedule")
    return schedule == "interleaved"


def pipeline_preset(method: str, config: PipelineConfig) -> dict[str, Any]:
    """The options the pipeline sets for ``method`` beyond its common settings: its entry in ``config.presets`` and
    the pipeline's epoch or step budget."""
    preset = dict(config.presets.get(method, {}))
    if config.unlearn_epochs is not None:
        preset["epochs"] = config.unlearn_epochs
    if config.unlearn_max_steps is not None:
        preset["max_steps"] = config.unlearn_max_steps
    return preset


def unlearn_config(method: str, target: Path, dirs: dict[str, Path], config: PipelineConfig) -> UnlearnConfig:
    """What ``obliviate unlearn`` runs for ``method`` in the pipeline: the pipeline's settings, then the method's
    entry in ``config.presets`` (a benchmark's ``--set``), which wins over them."""
    preset = pipeline_preset(method, config)
    settings = dict(
        output_dir=str(Path(config.output_dir) / "methods" / method),
        model_dir=str(target),
        forget_dir=str(dirs["forget"]),
        retain_dir=str(dirs["retain"]),
        method=method,
        batch_size=config.unlearn_batch_size,
        micro_batch_size=config.unlearn_batch_size,
        holdout_dir=str(dirs["holdout"]) if dirs.get("holdout") else None,
        group_by_length=config.group_by_length,
        max_checkpoints=config.unlearn_checkpoints,
        report_to=config.report_to,
        seed=config.seed,
        overwrite=True,
    )
    return UnlearnConfig.build(**{**settings, **preset})  # a probe's setting wins, e.g. contrast.seed=1


def unlearn_method(
    method: str,
    target: Path,
    dirs: dict[str, Path],
    config: PipelineConfig,
    hook_args,
    log,
    start: EvalResult | None = None,
) -> MethodRun:
    """Unlearn with ``method``'s preset, evaluating every epoch; ``start`` is the target's result (epoch 0),
    evaluated here when not given."""
    preset = pipeline_preset(method, config)
    unlearn = unlearn_config(method, target, dirs, config)
    out = Path(unlearn.output_dir)
    data, options, oracle = hook_args
    started = time.perf_counter()
    start = start if start is not None else evaluate_epoch(0, str(target), data, options, oracle)
    hook = make_epoch_hook(data, options, out / "eval", str(target), oracle, start=start)
    result = run_unlearn(unlearn, epoch_hook=hook, stop_rule=stop_rule_for)
    wall_seconds = time.perf_counter() - started  # training and the per-epoch evaluations
    # the hook's EpochEval per checkpoint; epoch 0 is `start`, which the hook wrote to eval/epoch-0 beside them
    epochs = [EpochEval.of(0, out / "eval" / "epoch-0", start), *result.epoch_results]
    best = select_best(epochs, config.select)
    log(
        f"{method}: {result.epochs_completed} epochs{' (stopped: ' + result.stopped + ')' if result.stopped else ''}, "
        f"best epoch {best['epoch']} ({best['reason']})"
    )
    return MethodRun(
        method=method,
        run_dir=out,
        epochs=epochs,
        best=best,
        tokens=result.cost_tokens,
        lr_probe_tokens=result.lr_probe_tokens,
        forward_tokens=result.forward_tokens,
        wall_seconds=wall_seconds,
        preset={**get_method(method).preset, **_declared_weights(method), **preset},
        lr=result.lr,
        steps=result.global_step,
        stopped=result.stopped,
        step_budget=result.step_budget,
        stop_checks=read_stop_checks(out / "metrics.jsonl"),
    )


def eval_options(config: PipelineConfig) -> EvalOptions:
    """How every model of the pipeline is evaluated (each epoch's exposure on forget and holdout only)."""
    return EvalOptions(
        batch_size=config.eval_batch_size,
        max_examples=config.eval_max_examples,
        max_new_tokens=config.max_new_tokens,
        leak_samples=config.leak_samples,
        exposure_k=config.exposure_k,
        exposure_splits=EPOCH_EXPOSURE_SPLITS,
        seed=config.seed,
        show_progress=False,
    )


def run_pipeline(config: PipelineConfig, log=print, replace: bool = True) -> PipelineOutcome:
    """The whole experiment; returns everything the report needs (see :mod:`obliviate.report.demo`).

    ``replace``: the output's earlier report is kept aside until the run ends and given back if it fails
    (:func:`replacing_report`); False where the caller does that around more work (writing the report)."""
    with replacing_report(config) if replace else contextlib.nullcontext():
        return _run_pipeline(config, log)


PARTIAL = ".partial"
"""In an output whose report is being written: removed once the report is whole."""


@contextlib.contextmanager
def replacing_report(config: PipelineConfig) -> Iterator[None]:
    """The output directory for a new report, the earlier one kept until the new one is whole.

    The output is checked first (:func:`check_output_dir`; a symbolic link is refused, since moving it would move
    the link and not the report). An earlier report is moved aside (``.NAME.previous`` beside it; where the output
    cannot be renamed, a mount point or the working directory, its contents are moved) and the new one is made in its
    place, flagged :data:`PARTIAL` until it is whole. When the block fails or is interrupted, what it wrote is removed
    and the earlier report put back; when it ends, the flag goes and the earlier report is renamed out of the way and
    deleted. After a run killed outright, the next run finds the aside report and keeps whichever of the two is whole:
    the output unless it is still flagged. Two runs writing one output at the same time are not supported."""
    out = Path(config.output_dir)
    check_output_dir(out, pipeline_inputs(config), config.cache_dir)
    if out.is_symlink():
        raise ConfigError(f"--output_dir {out} is a symbolic link: give the folder it points to")
    out = out.resolve()
    previous = out.parent / f".{out.name}.previous"
    if previous.exists() and not _is_report(previous):
        raise ConfigError(f"{previous} is in the way: the earlier report would be kept there while the run goes on")
    if previous.exists() and out.exists():  # a run killed outright: keep whichever report is whole
        if (out / PARTIAL).exists() or not _is_report(out):
            shutil.rmtree(out)
        else:
            _discard(previous)
    if out.exists() and any(out.iterdir()):
        _move(out, previous)
    try:
        mark_output_dir(out, "demo")
        (out / PARTIAL).touch()
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if previous.exists():
            _move(previous, out)
        raise
    (out / PARTIAL).unlink()
    if previous.exists():
        _discard(previous)


def _move(source: Path, target: Path) -> None:
    """``source`` renamed ``target`` (absent or an empty folder), else its contents moved into ``target``."""
    try:
        source.rename(target)
    except OSError:
        target.mkdir(exist_ok=True)
        for child in source.iterdir():
            child.rename(target / child.name)
        with contextlib.suppress(OSError):
            source.rmdir()


def _discard(folder: Path) -> None:
    """Delete ``folder`` after renaming it to a name of its own, so that a kill during the deletion leaves no
    half-deleted report where a later run would look for one."""
    gone = folder.with_name(f"{folder.name}.discarded-{os.getpid()}-{time.time_ns()}")
    folder.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)


def _run_pipeline(config: PipelineConfig, log) -> PipelineOutcome:
    started, started_at = time.perf_counter(), time.time()
    dirs = prepare_data(config, log)
    check_inputs(config, dirs)
    worker_log = _portable(log)
    workers = resolve_workers(config, max(2, len(config.methods)))
    with Jobs(workers) as jobs:
        target, oracle_dir = pipeline_models(jobs, config, dirs, worker_log)
        hook_args, oracle_result, target_result = _evaluate_references(jobs, config, dirs, target, oracle_dir)
        log(f"target{' and oracle' if oracle_dir else ''}: evaluated")
        if workers > 1 and len(config.methods) > 1:
            log(f"unlearning with {', '.join(config.methods)}: {workers} at a time, one process each")
        runs = jobs.run(
            [
                (unlearn_method, (m, target, dirs, config, hook_args, worker_log, target_result))
                for m in config.methods
            ],
            first=[i for i, m in enumerate(config.methods) if interleaves(m, config)],
        )
        references = [(target, target_result), (oracle_dir, oracle_result)]
        attacks = run_pipeline_attacks(jobs, config, dirs, hook_args, references, runs, log)
    return PipelineOutcome(
        config=config,
        data_dirs={k: str(v) for k, v in dirs.items()},
        target_dir=str(target),
        oracle_dir=str(oracle_dir) if oracle_dir is not None else None,
        target_result=target_result,
        oracle_result=oracle_result,
        target_tokens=_tokens_seen(target),
        oracle_tokens=_tokens_seen(oracle_dir),
        target_compute=_compute(target),
        oracle_compute=_compute(oracle_dir),
        runs=runs,
        cached=_cached(config, target, oracle_dir, started_at),
        workers=workers,
        wall_seconds=time.perf_counter() - started,
        memorisation=model_memorisation(config, dirs, target, oracle_dir),
        trained={"target": config.target_dir is None, "oracle": oracle_dir is not None and config.oracle_dir is None},
        attacks=attacks,
    )


def pipeline_inputs(config: PipelineConfig) -> list[str | None]:
    """Every path a pipeline reads: its output may not touch any of them."""
    return [*(config.data_dirs or {}).values(), config.target_dir, config.oracle_dir]


def check_output_dir(
    out: str | Path, inputs: Iterable[str | Path | None] = (), cache_dir: str | Path | None = None
) -> None:
    """The demo replaces only its own earlier report: a non-empty ``out`` must hold one (its :data:`MARKER`, or the
    layout an older one left: ``report.md``, ``results.json`` and ``methods/``); and ``out`` may not equal, contain
    or lie inside any of ``inputs`` (the data, the target and oracle) nor overlap ``cache_dir``, which may not exist
    yet: replacing the report would delete them."""
    check_apart(out, inputs)
    if cache_dir is not None:
        report, cache = Path(out).expanduser().resolve(), Path(cache_dir).expanduser().resolve()
        if report == cache or cache in report.parents or report in cache.parents:
            raise ConfigError(
                f"--output_dir {out} and --cache_dir {cache_dir} overlap: replacing the report would delete the cache"
            )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not _is_report(out):
            raise ConfigError(f"--output_dir {out} is not empty and holds no earlier demo report: not replacing it")


def _is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a report obliviate wrote: its :data:`MARKER`, or an older report's whole layout."""
    older = all((folder / name).exists() for name in ("report.md", "results.json", "methods"))
    return (folder / MARKER).is_file() or older


def _evaluate_references(
    jobs: Jobs, config: PipelineConfig, dirs: dict[str, Path], target: Path, oracle_dir: Path | None
):
    """The evaluation data, options and oracle statistics every method's hook shares, and the oracle's (None
    without one) and the target's results (epoch 0 of every method)."""
    data = load_eval_data(dirs["forget"], dirs["retain"], dirs.get("holdout"))
    options = eval_options(config)
    if oracle_dir is None:
        return (data, options, None), None, evaluate_epoch(0, str(target), data, options, None)
    oracle_model, oracle_tok = load_model(oracle_dir)
    oracle = oracle_stats(oracle_model, oracle_tok, data, options)
    del oracle_model
    oracle_result, target_result = jobs.run(
        [
            (evaluate_epoch, (0, str(oracle_dir), data, options, oracle)),
            (evaluate_epoch, (0, str(target), data, options, oracle)),
        ]
    )
    return (data, options, oracle), oracle_result, target_result


def _trainer_state(model_dir: Path | None) -> dict[str, Any]:
    """A model directory's ``trainer_state.json``; empty where there is none (a given model)."""
    state = Path(model_dir) / "trainer_state.json" if model_dir is not None else None
    return json.loads(state.read_text()) if state is not None and state.is_file() else {}


def _tokens_seen(model_dir: Path | None) -> int | None:
    return _trainer_state(model_dir).get("tokens_seen")


def _compute(model_dir: Path | None) -> float | None:
    """A fine-tuned model's arithmetic in trained-token equivalents
    (:func:`~obliviate.train.forward_count.compute_tokens`); None where it was not recorded (a given model, or one
    trained before forward-only passes were counted)."""
    facts = _trainer_state(model_dir)
    if "forward_tokens" not in facts:
        return None
    return compute_tokens(facts["tokens_seen"] + facts.get("lr_probe_tokens", 0), facts["forward_tokens"])


def _cached(config: PipelineConfig, target: Path, oracle: Path | None, started_at: float) -> dict[str, bool]:
    """Per model the pipeline fine-tuned: whether it was trained before this run started (taken from the cache)."""
    trained = {"target": target if config.target_dir is None else None}
    trained["oracle"] = oracle if config.oracle_dir is None else None
    return {name: _older_than(path, started_at) for name, path in trained.items() if path is not None}


def _older_than(model_dir: Path, started_at: float) -> bool:
    """Trained before this run started: taken from the cache."""
    return (model_dir / "trainer_state.json").stat().st_mtime < started_at


def _declared_weights(method: str) -> dict[str, float]:
    """The loss weights ``method`` runs with by default (its file's ``WEIGHTS``; one resolved per run, RMU's
    adaptive c, is left out)."""
    return {k: v for k, v in get_method(method).params().as_dict().items() if v is not None}
