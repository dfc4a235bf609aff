"""``evaluate(model, data) → results``: every metric from one shared forward pass and one generation pass per split.

Per split (forget, retain, holdout) the suite runs :func:`~obliviate.evaluate.passes.forward_pass` once and
:func:`~obliviate.evaluate.passes.generate` once over the unique prompts of the split (the dataset rows and the
PII-leak probes together); every metric below is a pure scorer on those values.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.data.fakes import CandidateSampler
from obliviate.data.load import load_mia_dir, load_split
from obliviate.data.pii import find_pii_json, pii_from_records
from obliviate.data.records import Record
from obliviate.errors import ConfigError, DataError, ModelError
from obliviate.evaluate import exposure, leak, mia, partial, scores, semeval
from obliviate.evaluate.passes import TokenScores, forward_pass, generate
from obliviate.evaluate.results import EvalResult, Metric

EVAL_SPLITS = ("forget", "retain", "holdout")


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate.

    Attributes:
        batch_size: rows per forward / generation batch.
        max_new_tokens: greedy generation length (256 as in the official scorer).
        max_examples: evaluate a fixed, seeded sample of this many rows per split (quick looks).
        leak_samples: sampled generations (temperature 1) per leak probe, on top of greedy.
        chat_template: wrap generation prompts with the tokenizer's chat template (instruct models).
        show_pii: keep PII in generations written out; redacted by default.
        seed: for the sample and the sampled generations.
        max_length: longest tokenised example.
        mia_k: the k of Min-K% and Min-K%++.
        exposure: rank each PII value among ``exposure_k`` fakes of its format (:mod:`~obliviate.evaluate.exposure`).
        exposure_k: candidates per value (Carlini et al. use K ≥ 100; fewer only for quick looks).
        exposure_splits: the splits whose values are ranked (each costs K + 1 continuations per value).
        exposure_attacks: prompts each value is ranked in: ``question`` (the dataset's), ``prefix`` (the biography cut
            before the value); each adds K + 1 scored continuations per value.
    """

    batch_size: int = 32
    max_new_tokens: int = 256
    max_examples: int | None = None
    leak_samples: int = 0
    chat_template: bool = False
    show_pii: bool = False
    seed: int = 0
    max_length: int = 512
    mia_k: float = 0.4
    show_progress: bool = True
    exposure: bool = True
    exposure_k: int = 100
    exposure_attacks: tuple[str, ...] = ("question",)
    exposure_splits: tuple[str, ...] = ("forget", "retain", "holdout")

    def __post_init__(self) -> None:
        if self.exposure_k < 1:
            raise ConfigError(f"exposure_k: expected at least 1 candidate per value, found {self.exposure_k}")
        if not self.exposure_attacks or not set(self.exposure_attacks) <= set(exposure.ATTACKS):
            raise ConfigError(f"exposure_attacks: expected some of {exposure.ATTACKS}, found {self.exposure_attacks}")


@dataclass
class EvalData:
    """The sets to evaluate on, the people whose PII is tracked, and optional SemEval-style MIA documents."""

    splits: dict[str, list[Record]]
    people: list[Any] = field(default_factory=list)
    mia_members: list[Record] | None = None
    mia_nonmembers: list[Record] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class OracleStats:
    """What forget quality and PrivLeak compare against: the oracle's per-example forget NLL and Min-K% AUC."""

    forget_nll: list[float]
    mink_auc: float | None


def load_eval_data(
    forget_dir: str | Path,
    retain_dir: str | Path | None = None,
    holdout_dir: str | Path | None = None,
    mia_dir: str | Path | None = None,
    pii_path: str | Path | None = None,
) -> EvalData:
    """Load the sets and the PII to track: ``pii.json`` (synthetic data) when found, else the Task2 QA answers."""
    splits = {"forget": load_split(forget_dir, split="forget")}
    if retain_dir:
        splits["retain"] = load_split(retain_dir, split="retain")
    if holdout_dir:
        splits["holdout"] = load_split(holdout_dir, split="holdout")
    data = EvalData(splits)
    pii_file = Path(pii_path) if pii_path else find_pii_json(forget_dir)
    if pii_file is not None:
        from obliviate.data.synth import load_pii

        data.people = list(load_pii(pii_file))
    else:
        data.people = [p for name, rows in splits.items() for p in pii_from_records(rows, split=name)]
        if data.people:
            data.notes.append("PII taken from the Task2 QA answers (qa0 birth date … qa4 address)")
    if mia_dir:
        data.mia_members, data.mia_nonmembers = load_mia_dir(mia_dir)
    return data


def sample_records(records: list[Record], max_examples: int | None, seed: int) -> list[Record]:
    """A fixed, seeded sample that keeps whole people together (a person's biography and QA rows)."""
    if max_examples is None or len(records) <= max_examples:
        return records
    from obliviate.data.records import person_key

    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[str(record.meta.get("person_id") or person_key(record.id))].append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    chosen: list[Record] = []
    for key in keys:
        if len(chosen) >= max_examples:
            break
        chosen.extend(groups[key])
    return chosen


def _prompt(tokenizer, text: str, chat_template: bool) -> str:
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("--chat_template was given but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def evaluate_split(
    model,
    tokenizer,
    split: str,
    records: list[Record],
    people: list[Any],
    options: EvalOptions,
    redactor: leak.Redactor | None,
) -> tuple[list[dict], list[Metric], list[TokenScores], Any]:
    """Rows, aggregates, token scores and the leak report of one split, from one forward and one generation pass."""
    token_scores = forward_pass(
        model,
        tokenizer,
        records,
        batch_size=options.batch_size,
        max_length=options.max_length,
        desc=f"{split} forward",
        show_progress=options.show_progress,
        distribution=split in ("forget", "holdout"),  # only membership inference reads mu / sigma
    )
    scored = [r for r in records if r.kind in ("completion", "qa")]
    split_people = _people_of(people, split)
    probes = leak.build_probes(records, split_people, split) if split_people else []
    greedy_by_prompt, samples_by_prompt = _generate_all(model, tokenizer, split, scored, probes, options)
    rows = []
    for record, ts in zip(records, token_scores):
        row: dict[str, Any] = {
            "id": record.id,
            "split": split,
            "task": record.task,
            "kind": record.kind,
            "answer_nll": ts.answer_nll,
            "answer_tokens": ts.answer_tokens,
            "perplexity": float(np.exp(ts.answer_nll)),
        }
        if record.kind in ("completion", "qa"):
            generation = greedy_by_prompt[record.input]
            if record.kind == "completion":
                row["rouge1_recall"], row["rougeL_recall"] = scores.rouge_recall(generation, record.output)
                row["score"] = row["rougeL_recall"]
            else:
                row["exact_match"] = row["score"] = scores.exact_match(generation, record.output)
            row["generation"] = redactor.redact(generation) if redactor else generation
        rows.append(row)
    report = None
    if probes:
        greedy = [greedy_by_prompt[p.prompt] for p in probes]
        report = leak.score_leaks(
            probes, greedy, [samples_by_prompt.get(p.prompt, []) for p in probes] if options.leak_samples else None
        )
        report = dataclasses.replace(report, partial=partial.score_partial_leaks(probes, greedy))
    return rows, _aggregates(split, rows, token_scores, report), token_scores, report


def _people_of(people: list[Any], split: str) -> list[Any]:
    return [p for p in people if getattr(p, "split", split) in (split, "")]


def _generate_all(model, tokenizer, split: str, scored: list[Record], probes: list, options: EvalOptions):
    """Greedy (and sampled) continuations of every unique prompt of a split, each generated once.

    Prompts whose answers are short (questions, paraphrases) and prompts whose answers are long (completion
    prefixes) are generated in separate passes: a batch runs until its longest row ends, so mixing them would make
    every short row wait for the long ones.
    """
    long = {r.input for r in scored if r.kind == "completion"} | {p.prompt for p in probes if p.attack == "prefix"}
    prompts = list(dict.fromkeys([r.input for r in scored] + [p.prompt for p in probes]))
    probe_prompts = {p.prompt for p in probes}
    greedy_by_prompt: dict[str, str] = {}
    samples_by_prompt: dict[str, list[str]] = {}
    for group in ([p for p in prompts if p not in long], [p for p in prompts if p in long]):
        if not group:
            continue
        common = dict(
            max_new_tokens=options.max_new_tokens,
            batch_size=options.batch_size,
            max_length=options.max_length,
            show_progress=options.show_progress,
        )
        shown = [_prompt(tokenizer, p, options.chat_template) for p in group]
        greedy, _ = generate(model, tokenizer, shown, desc=f"{split} generate", **common)
        greedy_by_prompt.update(zip(group, greedy))
        sampled = [p for p in group if p in probe_prompts]
        if options.leak_samples and sampled:
            _, samples = generate(
                model,
                tokenizer,
                [_prompt(tokenizer, p, options.chat_template) for p in sampled],
                num_samples=options.leak_samples,
                seed=options.seed,
                desc=f"{split} sample",
                **common,
            )
            samples_by_prompt.update(zip(sampled, samples))
    return greedy_by_prompt, samples_by_prompt


def _aggregates(split: str, rows: list[dict], token_scores: list[TokenScores], report) -> list[Metric]:
    out = []
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_task["all"].append(i)
        by_task[row["task"]].append(i)
    tasks = sorted(by_task)
    for task in tasks if len(tasks) > 2 else ["all"]:
        idx = by_task[task]
        for name in ("rougeL_recall", "rouge1_recall", "exact_match"):
            values = [rows[i][name] for i in idx if name in rows[i]]
            if values:
                out.append(Metric.of(name, split, float(np.mean(values)), task, n=len(values)))
        ppl = scores.perplexity(
            [token_scores[i].answer_nll_sum for i in idx], [token_scores[i].answer_tokens for i in idx]
        )
        out.append(Metric.of("perplexity", split, ppl, task, n=len(idx)))
    if report is not None:
        out.append(Metric.of("leak_rate", split, report.rate, n=report.n_pairs))
        if report.partial is not None:
            out.append(Metric.of("partial_leak_rate", split, report.partial.rate, n=report.partial.n_pairs))
            if report.partial.digits_in_place is not None:
                out.append(Metric.of("digits_in_place", split, report.partial.digits_in_place))
    return out


def _exposure_metrics(report: exposure.ExposureReport) -> list[Metric]:
    """Mean exposure overall and per PII field, and the mean NLL gap, of one split."""
    n = len(report.pairs)
    out = [Metric.of("exposure", report.split, report.mean, n=n, k=report.k, chance=report.chance)]
    out += [
        Metric.of(f"exposure_{name}", report.split, stats["mean"], n=stats["n"])
        for name, stats in report.by_field.items()
        if f"exposure_{name}" in scores.METRICS
    ]
    return out + [Metric.of("exposure_nll_gap", report.split, report.nll_gap, n=n)]


def _mia_examples(records: list[Record], token_scores: list[TokenScores]) -> list[mia.ExampleLogProbs]:
    return [
        mia.ExampleLogProbs(ts.text_logp, ts.mu[: ts.text_positions], ts.sigma[: ts.text_positions], r.text)
        for r, ts in zip(records, token_scores)
    ]


def evaluate_model(
    model,
    tokenizer,
    data: EvalData,
    options: EvalOptions = EvalOptions(),
    oracle: OracleStats | None = None,
    mmlu_acc: float | None = None,
) -> EvalResult:
    """Every metric of the suite on every split present in ``data``."""
    redactor = None if options.show_pii or not data.people else leak.Redactor(data.people)
    sampler = CandidateSampler(data.people, seed=options.seed) if options.exposure and data.people else None
    metrics, per_example, notes, leak_reports, exposure_reports = [], [], list(data.notes), {}, {}
    token_scores: dict[str, list[TokenScores]] = {}
    records_by_split: dict[str, list[Record]] = {}
    for split in EVAL_SPLITS:
        if split not in data.splits:
            continue
        records = sample_records(data.splits[split], options.max_examples, options.seed)
        records_by_split[split] = records
        rows, aggregates, token_scores[split], report = evaluate_split(
            model, tokenizer, split, records, data.people, options, redactor
        )
        per_example += rows
        metrics += aggregates
        if report is not None:
            leak_reports[split] = {k: v for k, v in report.to_dict().items() if k != "leaked_pairs"}
        if sampler is not None and split in options.exposure_splits and (people := _people_of(data.people, split)):
            found = exposure.measure_exposure(
                model,
                tokenizer,
                records,
                people,
                split,
                sampler,
                k=options.exposure_k,
                attacks=options.exposure_attacks,
                max_length=options.max_length,
            )
            if found is not None:
                exposure_reports[split] = found.to_dict()
                metrics += _exposure_metrics(found)
        if not any(r["kind"] in ("completion", "qa") for r in rows):
            notes.append(f"{split}: no completion or QA rows, so ROUGE-L, exact match and leak rate are skipped")
    members, nonmembers = _mia_sets(model, tokenizer, data, records_by_split, token_scores, options, notes)
    mink_auc = None
    if members and nonmembers:
        aucs = mia.mia_aucs(members, nonmembers, k=options.mia_k)
        for attack, auc in aucs.items():
            metrics.append(Metric.of(f"mia_auc_{attack}", "forget", auc))
        metrics.append(Metric.of("mia_score", "forget", scores.mia_score(aucs["loss"])))
        mink_auc = aucs["mink"]
    forget_nll = [ts.answer_nll for ts in token_scores.get("forget", [])]
    if oracle is not None and forget_nll:
        metrics.append(
            Metric.of(
                "forget_quality",
                "forget",
                scores.ks_forget_quality(forget_nll, oracle.forget_nll),
                statistic="per-example forget answer NLL (no paraphrased/perturbed answers)",
            )
        )
        if mink_auc is not None and oracle.mink_auc is not None:
            metrics.append(Metric.of("privleak", "forget", scores.privleak(mink_auc, oracle.mink_auc)))
    semeval_json = _semeval(per_example, metrics, mmlu_acc, notes)
    return EvalResult(metrics, per_example, semeval_json, leak_reports, notes, forget_nll, mink_auc, exposure_reports)


def _mia_sets(model, tokenizer, data, records_by_split, token_scores, options, notes):
    if data.mia_members is not None:
        docs = {}
        for name, records in (("member", data.mia_members), ("nonmember", data.mia_nonmembers)):
            ts = forward_pass(
                model,
                tokenizer,
                records,
                batch_size=options.batch_size,
                max_length=options.max_length,
                desc=f"MIA {name}",
                show_progress=options.show_progress,
            )
            docs[name] = _mia_examples(records, ts)
        notes.append("membership inference: member.jsonl against nonmember.jsonl")
        return docs["member"], docs["nonmember"]
    if "forget" in token_scores and "holdout" in token_scores:
        return (
            _mia_examples(records_by_split["forget"], token_scores["forget"]),
            _mia_examples(records_by_split["holdout"], token_scores["holdout"]),
        )
    notes.append("membership inference skipped: it needs --holdout_dir or --mia_dir")
    return None, None


def _semeval(per_example, metrics, mmlu_acc, notes) -> dict[str, Any]:
    rows = [r for r in per_example if r["split"] in ("forget", "retain") and "score" in r]
    if not rows:
        notes.append("SemEval task aggregate skipped: no forget/retain completion or QA rows")
        return {}
    try:
        result = semeval.task_aggregate(rows)
    except DataError as exc:
        notes.append(f"SemEval task aggregate skipped: {exc}")
        return {}
    metrics.append(Metric.of("task_aggregate", "all", result.aggregate))
    out: dict[str, Any] = {"task_aggregate": result.aggregate, "terms": result.terms, "notes": result.notes}
    mia_value = next((m.value for m in metrics if m.name == "mia_score"), None)
    out["mia_score"] = mia_value
    if mmlu_acc is not None and mia_value is not None:
        out["mmlu_acc"] = mmlu_acc
        out["final_score"] = semeval.final_score(result.aggregate, mia_value, mmlu_acc)
        metrics.append(Metric.of("final_score", "all", out["final_score"]))
    return out


def oracle_stats(model, tokenizer, data: EvalData, options: EvalOptions) -> OracleStats:
    """The oracle's per-example forget NLL and Min-K% AUC, from one forward pass on forget and holdout."""

    def scored(split: str) -> tuple[list[Record], list[TokenScores]]:
        records = sample_records(data.splits[split], options.max_examples, options.seed)
        return records, forward_pass(
            model,
            tokenizer,
            records,
            batch_size=options.batch_size,
            max_length=options.max_length,
            desc="oracle forward",
            show_progress=options.show_progress,
        )

    forget, ts_forget = scored("forget")
    mink_auc = None
    if "holdout" in data.splits:
        holdout, ts_holdout = scored("holdout")
        aucs = mia.mia_aucs(_mia_examples(forget, ts_forget), _mia_examples(holdout, ts_holdout), k=options.mia_k)
        mink_auc = aucs["mink"]
    return OracleStats([ts.answer_nll for ts in ts_forget], mink_auc)
