"""``obliviate evaluate``: every metric for a model, or for every epoch of an unlearning run."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = {
    "--model": "a full model directory, a hub id or a PEFT adapter directory",
    "--base_model": "base model of an adapter whose adapter_config.json names none",
    "--forget_dir": "the forget set",
    "--retain_dir": "the retain set",
    "--holdout_dir": "people never trained on: the leak floor and MIA non-members",
    "--oracle": "a model retrained on retain only: enables forget quality and PrivLeak",
    "--mia_dir": "SemEval MIA sets: member.jsonl and nonmember.jsonl (a 'document' field each)",
    "--mmlu_metrics": 'a JSON file {"average_acc": x}: enables the SemEval final score',
    "--checkpoints": "an unlearning run directory: evaluate epoch 0 (its model_dir) and every checkpoints/epoch-N",
    "--output_dir": "where results.json, per_example.jsonl and report.md go",
    "--pii": "a pii.json side file (default: found next to the forget set; else the Task2 QA answers)",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ROUGE-L, knowledge, perplexity, PII leaks, MIA, forget quality, SemEval score",
        description="Evaluate a model (or every epoch of an unlearning run) on forget / retain / holdout sets.",
    )
    for flag, text in HELP.items():
        parser.add_argument(
            flag, default=None, help=text + (" (required)" if flag in ("--forget_dir", "--output_dir") else "")
        )
    parser.add_argument("--max_examples", type=int, default=None, help="evaluate a seeded sample of N rows per split")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per batch (default: 32)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="generation length (default: 256, official)")
    parser.add_argument("--leak_samples", type=int, default=0, help="sampled generations per leak probe (default: 0)")
    parser.add_argument("--chat_template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    parser.add_argument("--show_pii", action="store_true", help="keep PII values in generations and reports")
    parser.add_argument(
        "--select",
        choices=("task_aggregate", "holdout_gap"),
        default="task_aggregate",
        help="best-checkpoint rule with --checkpoints (default: task_aggregate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sample and sampling seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obliviate.errors import ConfigError
    from obliviate.evaluate import epochs as epoch_eval
    from obliviate.evaluate.semeval import load_mmlu_metrics
    from obliviate.evaluate.suite import EvalOptions, evaluate_model, load_eval_data, oracle_stats
    from obliviate.models.load import load_model
    from obliviate.report.outputs import write_checkpoint_evaluation, write_evaluation
    from obliviate.train.run import prepare_output_dir

    if not args.forget_dir or not args.output_dir:
        raise ConfigError("--forget_dir and --output_dir are required")
    if bool(args.model) == bool(args.checkpoints):
        raise ConfigError("pass exactly one of --model and --checkpoints")
    mmlu = load_mmlu_metrics(args.mmlu_metrics) if args.mmlu_metrics else None
    data = load_eval_data(args.forget_dir, args.retain_dir, args.holdout_dir, args.mia_dir, args.pii)
    options = EvalOptions(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        max_examples=args.max_examples,
        leak_samples=args.leak_samples,
        chat_template=args.chat_template,
        show_pii=args.show_pii,
        seed=args.seed,
    )
    inputs = [p for p in (args.model, args.forget_dir, args.retain_dir, args.holdout_dir, args.checkpoints) if p]
    out = Path(args.output_dir)
    if args.checkpoints:
        epoch_eval.run_model_dir(Path(args.checkpoints))  # fail early on a directory that is not a run
        if not epoch_eval.list_checkpoints(args.checkpoints):
            raise ConfigError(f"--checkpoints {args.checkpoints} holds no checkpoints/epoch-N directory")
    oracle = None
    if args.oracle:
        oracle_model, oracle_tokenizer = load_model(args.oracle)
        oracle = oracle_stats(oracle_model, oracle_tokenizer, data, options)
        del oracle_model
    if args.checkpoints:
        prepare_output_dir(out, inputs, overwrite=args.overwrite, resume=False)
        epochs = epoch_eval.evaluate_checkpoints(args.checkpoints, data, options, oracle)
        best = epoch_eval.select_best(epochs, args.select)
        write_checkpoint_evaluation(out, epochs, best, Path(args.checkpoints), f"Evaluation of {args.checkpoints}")
        print(f"evaluated {len(epochs)} epochs; best: epoch {best['epoch']} ({best['reason']}) → {out}")
        return 0
    model, tokenizer = load_model(args.model, base_model=args.base_model)
    prepare_output_dir(out, inputs, overwrite=args.overwrite, resume=False)
    result = evaluate_model(model, tokenizer, data, options, oracle=oracle, mmlu_acc=mmlu)
    write_evaluation(out, result, f"Evaluation of {args.model}", extra={"model": str(args.model)})
    summary = result.summary()
    shown = {
        k: summary[k]
        for k in ("forget/rougeL_recall", "retain/rougeL_recall", "forget/leak_rate", "all/task_aggregate")
        if k in summary
    }
    print("; ".join(f"{k} {v:.3f}" for k, v in shown.items()) + f" → {out}")
    return 0
