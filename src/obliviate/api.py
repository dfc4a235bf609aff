"""The Python API: :func:`unlearn`, :func:`evaluate` and :func:`run`, the library behind the commands of the same
names, exported as ``obliviate.unlearn`` and so on (imported on first use, so ``import obliviate`` stays light).

Each takes the model and the data the way a notebook has them, and every other option by the name of its
command-line flag (the fields of :class:`~obliviate.config.UnlearnConfig`, :class:`~obliviate.config.EvaluateConfig`
and :class:`~obliviate.pipeline.PipelineConfig`), checked exactly as the command checks them: an unknown name or a
value out of range is a :class:`~obliviate.errors.ConfigError` naming the valid ones.

- ``model``: a local directory or hub id, or a ``transformers`` model in memory with its ``tokenizer``. An in-memory
  model is never changed: ``unlearn`` trains a copy (saved to a temporary directory first, as ``obliviate unlearn``
  would read it from disk); ``evaluate`` runs it as it is.
- ``forget`` / ``retain`` / ``holdout``: a file or directory in any layout ``obliviate inspect`` accepts, or a list
  of records (:class:`~obliviate.data.records.Record` or dicts with LUME's keys ``id``, ``input``, ``output``,
  ``task``), written to a temporary JSON-lines file and validated like one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.errors import ConfigError

if TYPE_CHECKING:
    from obliviate.evaluate.results import EvalResult
    from obliviate.pipeline import PipelineOutcome
    from obliviate.train.state import RunResult


@dataclass
class Unlearned:
    """What :func:`unlearn` returns: the unlearned ``model`` (a PEFT model under LoRA) and its ``tokenizer``, loaded
    from ``run_dir`` (the model directory, with ``checkpoints/``, ``metrics.jsonl``, ``config.yaml`` and its model
    card), and the run's :class:`~obliviate.train.state.RunResult` (steps, the rate trained with, why it stopped,
    seconds per phase, each epoch's evaluation)."""

    model: Any
    tokenizer: Any
    run_dir: Path
    result: RunResult


def unlearn(
    model: Any,
    forget: Any,
    retain: Any = None,
    *,
    method: str = "auto",
    output_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> Unlearned:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``, as ``obliviate unlearn`` does.

    Args:
        model: a model directory or hub id, or an in-memory model (then ``tokenizer`` is required).
        forget, retain: paths, or lists of records.
        method: ``auto`` or a registered method (``obliviate.losses.LOSSES``).
        output_dir: the run directory; None: a new temporary directory (kept, and returned as ``run_dir``).
        options: any other :class:`~obliviate.config.UnlearnConfig` field (``lr=1e-5``, ``lora_r=8``,
            ``eval_every_epoch=True``, ``holdout_dir=...``, ``report_to="tensorboard"``), or a loss weight of the
            method (``alpha=2``).

    Raises:
        ConfigError: an unknown option (the message lists the valid ones) or a value out of range.
    """
    from obliviate.config import UnlearnConfig
    from obliviate.losses import weight_options

    taken = ("model_dir", "forget_dir", "retain_dir", "output_dir", "method")
    _check_options(UnlearnConfig, options, taken, "unlearn", extra=tuple(weight_options()))
    with ExitStack() as stack:
        model_dir = _model_path(model, tokenizer, stack, "unlearn")
        run_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="obliviate-unlearn-"))
        config = UnlearnConfig.build(  # loss weights by name (alpha=2) go to loss_params
            model_dir=model_dir,
            forget_dir=_data_path(forget, "forget", stack),
            retain_dir=_data_path(retain, "retain", stack),
            output_dir=str(run_dir),
            method=method,
            **options,
        )
        result = _unlearn(config)
        if not isinstance(model, (str, os.PathLike)):
            _rebase(run_dir, getattr(model, "name_or_path", "") or "")
        trained, trained_tokenizer = _load_result(run_dir)
    return Unlearned(trained, trained_tokenizer, run_dir, result)


def _unlearn(config) -> RunResult:
    """What ``obliviate unlearn`` runs: the stop rule, and each epoch evaluated where ``eval_every_epoch`` asks."""
    from obliviate.evaluate.stop_rule import stop_rule_for
    from obliviate.train.run import run_unlearn

    hook = None
    if config.eval_every_epoch:
        from obliviate.evaluate.epochs import epoch_evaluator

        hook = epoch_evaluator(config)
    return run_unlearn(config, epoch_hook=hook, stop_rule=stop_rule_for)


def _load_result(run_dir: Path):
    from obliviate.models.load import load_model, process_device

    return load_model(run_dir, device=process_device())


def _rebase(run_dir: Path, base: str) -> None:
    """An in-memory model was trained from a temporary copy: adapters and cards name the model's own source
    (``name_or_path``, as peft records it), not the copy that is about to be removed."""
    from obliviate.io import write_text_atomic
    from obliviate.model_card import CARD, read_card, update_model_card

    for directory in [run_dir, *sorted((run_dir / "checkpoints").glob("epoch-*"))]:
        adapter = directory / "adapter_config.json"
        if adapter.is_file():
            values = json.loads(adapter.read_text())
            values["base_model_name_or_path"] = base or None
            write_text_atomic(adapter, json.dumps(values, indent=2, sort_keys=True))
        if (directory / CARD).is_file():
            config = dict(read_card(directory / CARD)[0].get("obliviate", {}).get("config") or {})
            config["model_dir"] = base or None  # the card says where the model came from, not the temporary copy
            update_model_card(directory, base_model=base or None, config=config)


def evaluate(
    model: Any,
    forget: Any,
    retain: Any = None,
    *,
    holdout: Any = None,
    oracle: Any = None,
    tokenizer: Any = None,
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> EvalResult:
    """Every metric of ``obliviate evaluate`` for one model; returns the typed
    :class:`~obliviate.evaluate.results.EvalResult` (``result.value("rougeL_recall", "forget")``, ``summary()``).

    Args:
        model: a model or adapter directory, a hub id, or an in-memory model (then ``tokenizer`` is required).
        forget, retain, holdout: paths, or lists of records.
        oracle: a model retrained without the forget set (a path, or a ``(model, tokenizer)`` pair): enables forget
            quality and PrivLeak.
        output_dir: where to write ``results.json``, ``per_example.jsonl`` and ``report.md`` as the command does;
            None: nothing is written.
        options: any other :class:`~obliviate.config.EvaluateConfig` field (``max_examples=50``, ``show_pii=True``,
            ``batch_size=64``, ``max_new_tokens=64``, ``no_exposure=True``, ``pii="pii.json"``).
    """
    from obliviate.config import EvaluateConfig

    taken = ("model", "forget_dir", "retain_dir", "holdout_dir", "oracle", "output_dir", "checkpoints", "select")
    _check_options(EvaluateConfig, options, taken, "evaluate")
    with ExitStack() as stack:
        in_memory = not isinstance(model, (str, os.PathLike))
        if in_memory and tokenizer is None:
            raise ConfigError("obliviate.evaluate: an in-memory model needs its tokenizer: pass tokenizer=...")
        config = EvaluateConfig(
            output_dir=str(output_dir or ""),
            forget_dir=_data_path(forget, "forget", stack),
            retain_dir=_data_path(retain, "retain", stack),
            holdout_dir=_data_path(holdout, "holdout", stack),
            model="<in-memory model>" if in_memory else str(model),
            **options,
        )
        return _evaluate(config, model if in_memory else None, tokenizer, oracle)


def _evaluate(config, model, tokenizer, oracle) -> EvalResult:
    """``obliviate evaluate --model``: load what is on disk, evaluate, and write only where ``output_dir`` is set."""
    from obliviate.evaluate.data import load_eval_data
    from obliviate.evaluate.membership import oracle_stats
    from obliviate.evaluate.semeval import load_mmlu_metrics
    from obliviate.evaluate.suite import eval_options, evaluate_model
    from obliviate.models.load import load_model, process_device

    out = None
    if config.output_dir:
        from obliviate.io import check_output_dir

        read = [config.forget_dir, config.retain_dir, config.holdout_dir, config.mia_dir, config.pii]
        read += [config.model if model is None else None, oracle if isinstance(oracle, (str, os.PathLike)) else None]
        out = check_output_dir(config.output_dir, read, overwrite=config.overwrite)
    mmlu = load_mmlu_metrics(config.mmlu_metrics) if config.mmlu_metrics else None
    data = load_eval_data(config.forget_dir, config.retain_dir, config.holdout_dir, config.mia_dir, config.pii)
    options = eval_options(config)  # as `obliviate evaluate` builds them (--official, --no_probes included)
    dtype = options.load_dtype
    if model is None:
        model, tokenizer = load_model(config.model, base_model=config.base_model, device=process_device(), dtype=dtype)
        model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    stats = None
    if oracle is not None:
        oracle_model, oracle_tokenizer = (
            oracle if isinstance(oracle, tuple) else load_model(oracle, device=process_device(), dtype=dtype)
        )
        stats = oracle_stats(oracle_model, oracle_tokenizer, data, options)
    result = evaluate_model(model, tokenizer, data, options, oracle=stats, mmlu_acc=mmlu)
    if out is not None:
        _write_evaluation(config, out, result)
    return result


def _write_evaluation(config, out: Path, result) -> None:
    from obliviate.io import prepare_output_dir
    from obliviate.report.outputs import write_evaluation

    prepare_output_dir(out, [config.forget_dir, config.retain_dir], overwrite=config.overwrite, command="evaluate")
    write_evaluation(out, result, f"Evaluation of {config.model}", extra={"model": str(config.model)})


def run(
    forget: Any = None,
    retain: Any = None,
    *,
    holdout: Any = None,
    output_dir: str | os.PathLike = "runs/obliviate",
    write_report: bool = True,
    **options: Any,
) -> PipelineOutcome:
    """The whole experiment (target and oracle, every method evaluated each epoch, the report), as the demo runs it
    (:func:`obliviate.pipeline.run_pipeline`); without ``forget`` and ``retain``, on synthetic people.

    Independent jobs run in worker processes, which under ``spawn`` re-import the calling script. Called from a
    script's top level without ``if __name__ == "__main__":`` the jobs run one after another in this process (with
    a warning saying what to add), and ``workers > 1`` is refused with that message.

    Args:
        options: any :class:`~obliviate.pipeline.PipelineConfig` field (``methods=("ga_gd", "npo")``,
            ``unlearn_max_steps=40``, ``eval_max_examples=50``, ``workers=2``).
    """
    options = _guard_workers(dict(options))  # before the heavy imports: a refused call costs nothing
    from obliviate.pipeline import PipelineConfig, run_pipeline

    _check_options(PipelineConfig, options, ("output_dir", "data_dirs"), "run")
    if (forget is None) != (retain is None):
        raise ConfigError("obliviate.run: pass both forget and retain (or neither, for synthetic people)")
    with ExitStack() as stack:
        dirs = None
        if forget is not None:
            dirs = {"forget": _data_path(forget, "forget", stack), "retain": _data_path(retain, "retain", stack)}
            if holdout is not None:
                dirs["holdout"] = _data_path(holdout, "holdout", stack)
        config = PipelineConfig(output_dir=str(output_dir), data_dirs=dirs, **options)
        if not write_report:
            return run_pipeline(config)
        from obliviate.cli.run import run_experiment

        return run_experiment(config, log=print)


def _guard_workers(options: dict[str, Any]) -> dict[str, Any]:
    if not unguarded_main_call():
        return options
    advice = 'put the call under `if __name__ == "__main__":` in your script'
    if options.get("workers", 0) > 1:
        raise ConfigError(
            f"obliviate.run(workers={options['workers']}) starts worker processes, which re-import your script "
            f"and would run it again: {advice} (or pass workers=1)"
        )
    warnings.warn(
        f"obliviate.run was called from a script's top level without a __main__ guard: its jobs run one after "
        f"another in this process; {advice} to run them side by side",
        stacklevel=3,
    )
    return {**options, "workers": 1}


def unguarded_main_call() -> bool:
    """True while the ``__main__`` script's own top-level code (outside ``if __name__ == "__main__":``) calls us.

    Then a ``spawn``-ed worker, which imports the script again, would run that code again. A REPL, ``python -c``
    and notebooks have no script file to re-import, so nothing is unguarded there."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return False
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_globals.get("__name__") == "__main__" and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    if frame is None:
        return False
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    line = frame.f_lineno
    guards = (n for n in ast.walk(tree) if isinstance(n, ast.If) and _is_main_test(n.test))
    return not any(g.lineno <= line <= (g.end_lineno or g.lineno) for g in guards)


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    constants = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and constants == ["__main__"]


def _check_options(
    config_class, options: dict[str, Any], taken: tuple[str, ...], api: str, extra: tuple[str, ...] = ()
) -> None:
    """Refuse an option that is not a field of ``config_class`` or one of ``extra`` (the loss weights), or is one
    the function takes as an argument."""
    valid = [f.name for f in dataclasses.fields(config_class) if f.name not in taken] + list(extra)
    unknown = [name for name in options if name not in valid]
    if not unknown:
        return
    name = unknown[0]
    if name in taken:
        raise ConfigError(f"obliviate.{api}: {name!r} is set by the function's own arguments, not as an option")
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"obliviate.{api}: unknown option {name!r}{hint}; valid options: {', '.join(valid)}")


def _model_path(model: Any, tokenizer: Any, stack: ExitStack, api: str) -> str:
    """A path to read the model from: as given, or an in-memory model saved (safetensors) to a temporary copy."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"obliviate.{api}: model must be a path, a hub id or a transformers model, found {type(model).__name__}"
        )
    if tokenizer is None:
        raise ConfigError(f"obliviate.{api}: an in-memory model needs its tokenizer: pass tokenizer=...")
    copy = stack.enter_context(tempfile.TemporaryDirectory(prefix="obliviate-model-"))
    model.save_pretrained(copy, safe_serialization=True)
    tokenizer.save_pretrained(copy)
    return copy


def _data_path(value: Any, split: str, stack: ExitStack) -> str | None:
    """A path to read a split from: as given, or a list of records written to a temporary JSON-lines file."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{split}: expected a file or directory path, or a list of records, found {type(value).__name__}"
        )
    from obliviate.data.load import write_jsonl
    from obliviate.data.records import Record

    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"obliviate-{split}-")))
    if all(isinstance(r, Record) for r in value):
        write_jsonl(value, directory / f"{split}.jsonl")
    else:  # rows as a data file holds them: validated (and any error placed) when the split is read
        rows = [r.to_json() if isinstance(r, Record) else r for r in value]
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(directory)
