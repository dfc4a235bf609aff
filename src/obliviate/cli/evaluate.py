"""``obliviate evaluate``: every metric for a model, or for every epoch of an unlearning run."""

from __future__ import annotations

import argparse
from pathlib import Path

from obliviate.cli.options import add_arguments, build_config
from obliviate.config import EvaluateConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ROUGE-L, knowledge, perplexity, PII leaks, MIA, forget quality, SemEval score",
        description="Evaluate a model (or every epoch of an unlearning run) on forget / retain / holdout sets.",
    )
    add_arguments(parser, EvaluateConfig)
    parser.set_defaults(func=run)


def read_paths(config: EvaluateConfig) -> list[str]:
    """Every path this evaluation reads, adapter bases and the run's starting model included."""
    from obliviate.evaluate.epochs import run_model_dir
    from obliviate.models.load import model_paths

    paths = [config.forget_dir, config.retain_dir, config.holdout_dir, config.mia_dir, config.pii]
    paths += [config.mmlu_metrics, config.base_model, config.checkpoints]
    for model in (config.model, config.oracle):
        paths += model_paths(model) if model else []
    if config.checkpoints:
        paths += model_paths(run_model_dir(Path(config.checkpoints)))
    return [p for p in paths if p]


def run(args: argparse.Namespace) -> int:
    from obliviate.distributed import process_state
    from obliviate.errors import ConfigError
    from obliviate.evaluate import epochs as epoch_eval
    from obliviate.evaluate.attacks import attack_options
    from obliviate.evaluate.data import load_eval_data
    from obliviate.evaluate.membership import oracle_stats
    from obliviate.evaluate.semeval import load_mmlu_metrics
    from obliviate.evaluate.suite import eval_options
    from obliviate.io import check_output_dir
    from obliviate.models.load import load_model, process_device

    config = build_config(EvaluateConfig, args)
    attack_options(config, config.model or config.checkpoints)  # a bad attack setting fails before any work
    if config.checkpoints and not epoch_eval.list_checkpoints(config.checkpoints):
        epoch_eval.run_model_dir(Path(config.checkpoints))  # names what is wrong with a directory that is no run
        raise ConfigError(f"--checkpoints {config.checkpoints} holds no checkpoints/epoch-N directory")
    inputs = read_paths(config) + ([args.config] if getattr(args, "config", None) else [])
    out = check_output_dir(config.output_dir, inputs, overwrite=config.overwrite)
    mmlu = load_mmlu_metrics(config.mmlu_metrics) if config.mmlu_metrics else None
    data = load_eval_data(config.forget_dir, config.retain_dir, config.holdout_dir, config.mia_dir, config.pii)
    options = eval_options(config)
    dtype = options.load_dtype
    model = tokenizer = None
    device = process_device()
    if config.model:  # loaded before anything is written, so that a bad model leaves no output behind
        model, tokenizer = load_model(config.model, base_model=config.base_model, device=device, dtype=dtype)
        model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model  # plain matmuls
    oracle = None
    if config.oracle:
        oracle_model, oracle_tokenizer = load_model(config.oracle, device=device, dtype=dtype)
        oracle = oracle_stats(oracle_model, oracle_tokenizer, data, options)
        del oracle_model
    code = _evaluate_and_write(config, out, inputs, data, options, oracle, model, tokenizer, mmlu)
    process_state().wait_for_everyone()  # the other processes wait for the main one's writes
    return code


def _evaluate_and_write(config, out, inputs, data, options, oracle, model, tokenizer, mmlu) -> int:
    """Every process evaluates its share of the rows (the passes gather them); only the main one writes."""
    from obliviate.distributed import process_state
    from obliviate.evaluate.suite import evaluate_model
    from obliviate.io import prepare_output_dir
    from obliviate.report.columns import metric_columns
    from obliviate.report.outputs import write_evaluation

    if config.checkpoints:
        return _evaluate_checkpoints(config, out, inputs, data, options, oracle)
    result = evaluate_model(model, tokenizer, data, options, oracle=oracle, mmlu_acc=mmlu)
    attacks = _attacks(config, config.model, model, tokenizer, data, options, result, oracle)
    if process_state().is_main_process:
        prepare_output_dir(out, inputs, overwrite=config.overwrite, command="evaluate")
        extra = {"model": str(config.model), "mode": "official" if config.official else "default"}
        extra["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        write_evaluation(out, result, f"Evaluation of {config.model}", extra=extra, attacks=attacks)
        if config.evidence:
            from obliviate.report.evidence import write_evidence

            write_evidence(out, config, data, options, result, attacks, chosen=None)
        summary, errors = result.summary(), result.stderrs()
        shown = metric_columns("brief", [summary])  # the one-screen columns of obliviate.evaluate.scores.METRICS
        cells = [f"{c.header} {c.cell(summary[c.key])}" + (f" ± {c.cell(errors[c.key])}" if c.key in errors else "")
                 for c in shown]  # fmt: skip
        print("; ".join(cells) + f" → {out}")
    return 0


def _evaluate_checkpoints(config, out, inputs, data, options, oracle) -> int:
    """``--checkpoints``: every epoch, the chosen one, and the attacks on the chosen one."""
    from obliviate.distributed import process_state
    from obliviate.evaluate import epochs as epoch_eval
    from obliviate.evaluate.selection import select_best
    from obliviate.io import prepare_output_dir
    from obliviate.models.load import load_model, process_device
    from obliviate.report.outputs import write_checkpoint_evaluation

    epochs = epoch_eval.evaluate_checkpoints(config.checkpoints, data, options, oracle)
    best = select_best(epochs, config.select)
    chosen = next(e for e in epochs if e.epoch == best["epoch"])
    attacks = []
    if config.attacks:
        base = epoch_eval.run_model_dir(Path(config.checkpoints))
        model, tokenizer = load_model(
            chosen.path, base_model=base if chosen.epoch else None, device=process_device(), dtype=options.load_dtype
        )
        model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        attacks = _attacks(config, config.checkpoints, model, tokenizer, data, options, chosen.result, oracle)
        del model
    if process_state().is_main_process:
        prepare_output_dir(out, inputs, overwrite=config.overwrite, command="evaluate")
        title = f"Evaluation of {config.checkpoints}"
        write_checkpoint_evaluation(out, epochs, best, Path(config.checkpoints), title, attacks=attacks)
        if config.evidence:
            from obliviate.report.evidence import write_evidence

            write_evidence(out, config, data, options, chosen.result, attacks, chosen=(chosen, best))
        print(f"evaluated {len(epochs)} epochs; best: epoch {best['epoch']} ({best['reason']}) → {out}")
    return 0


def _attacks(config, model_path, model, tokenizer, data, options, unattacked, oracle) -> list:
    """``--attacks`` on copies of ``model``, one progress line each (none when the flag is empty)."""
    from obliviate.distributed import process_state
    from obliviate.evaluate.attacks import attack_options, describe, run_attacks

    attack = attack_options(config, str(model_path))
    if attack is None:
        return []
    main = process_state().is_main_process
    report = (lambda result: print(describe(result), flush=True)) if main else None
    return run_attacks(model, tokenizer, data, options, attack, unattacked, oracle, on_result=report)
