"""``evaluate(model, data) → results``: every metric from one shared forward pass and one generation pass per split.

Per split (forget, retain, holdout) the suite runs :func:`~obliviate.evaluate.passes.forward_pass` once and
:func:`~obliviate.evaluate.passes.generate` once over the unique prompts of the split (the dataset rows and the
PII-leak probes together); every metric below is a pure scorer on those values.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obliviate.data.fakes import CandidateSampler
from obliviate.data.records import Record, owner_id
from obliviate.errors import ConfigError, DataError
from obliviate.evaluate import exposure, leak, official, partial, scores, semeval, uncertainty
from obliviate.evaluate.data import EVAL_SPLITS, EvalData, people_of, sample_records
from obliviate.evaluate.decode import continuous_supported
from obliviate.evaluate.generation import generate_split
from obliviate.evaluate.membership import OracleStats, mia_metrics, mia_sets, oracle_metrics
from obliviate.evaluate.passes import TokenScores, forward_and_generate, forward_pass
from obliviate.evaluate.results import EvalResult, Metric


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
        leak_probes: generate the PII-leak probes (leak rate, partial leaks); off, generation covers only the rows.
        official: the SemEval organisers' recipe (:mod:`~obliviate.evaluate.official`): the model must be bfloat16,
            prompts are ``tokenizer(input)`` untouched, and the NLL is scored on ``tokenizer(input + output)``.
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
    leak_probes: bool = True
    official: bool = False

    @property
    def load_dtype(self):
        """The dtype models are loaded in for these options: bfloat16 in official mode, else the device's default."""
        return official.DTYPE if self.official else None

    def __post_init__(self) -> None:
        if self.official and self.chat_template:
            raise ConfigError("official: the organisers' script generates from the raw prompt, with no chat template")
        if self.exposure_k < 1:
            raise ConfigError(f"exposure_k: expected at least 1 candidate per value, found {self.exposure_k}")
        if not self.exposure_attacks or not set(self.exposure_attacks) <= set(exposure.ATTACKS):
            raise ConfigError(f"exposure_attacks: expected some of {exposure.ATTACKS}, found {self.exposure_attacks}")


def eval_options(config) -> EvalOptions:
    """The options of an ``EvaluateConfig`` (``obliviate evaluate`` and the Python API build them alike)."""
    return EvalOptions(
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        max_examples=config.max_examples,
        leak_samples=config.leak_samples,
        exposure=not config.no_exposure,
        exposure_k=config.exposure_k,
        chat_template=config.chat_template,
        show_pii=config.show_pii,
        seed=config.seed,
        leak_probes=not getattr(config, "no_probes", False),
        official=getattr(config, "official", False),
    )


def evaluate_split(
    model,
    tokenizer,
    split: str,
    records: list[Record],
    people: list[Any],
    options: EvalOptions,
    redactor: leak.Redactor | None,
    distribution: bool = True,
) -> tuple[list[dict], list[Metric], list[TokenScores], Any, dict[str, uncertainty.Units]]:
    """Rows, aggregates, token scores, the leak report and the overall means' units of one split, from one forward
    and one generation pass.

    ``distribution``: whether membership inference will read this split's per-position vocabulary mean and spread
    (Min-K%++); without it the forward pass skips them."""
    common = dict(
        batch_size=options.batch_size,
        max_length=options.max_length,
        show_progress=options.show_progress,
        distribution=distribution and split in ("forget", "holdout"),  # only membership inference reads them
    )
    generated: dict[str, str] = {}
    if not options.official and not options.chat_template and continuous_supported(model):
        token_scores, generated = forward_and_generate(  # generation's prefill taken from the forward pass
            model, tokenizer, records, max_new_tokens=options.max_new_tokens, desc=f"{split} score+generate", **common
        )
    else:
        token_scores = forward_pass(
            model, tokenizer, records, desc=f"{split} forward", official=options.official, **common
        )
    scored = [r for r in records if r.kind in ("completion", "qa")]
    split_people = people_of(people, split)
    probes = leak.build_probes(records, split_people, split) if split_people and options.leak_probes else []
    greedy_by_prompt, samples_by_prompt = generate_split(
        model, tokenizer, split, scored, probes, options, generated=generated
    )
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
            # known values (any surface form), then anything shaped like one: a partial reproduction too
            row["generation"] = leak.redact_formats(redactor.redact(generation)) if redactor else generation
        rows.append(row)
    report = None
    if probes:
        greedy = [greedy_by_prompt[p.prompt] for p in probes]
        report = leak.score_leaks(
            probes, greedy, [samples_by_prompt.get(p.prompt, []) for p in probes] if options.leak_samples else None
        )
        report = dataclasses.replace(report, partial=partial.score_partial_leaks(probes, greedy, report.leaked_pairs))
    owners = [owner_id(record) for record in records]
    aggregates = _aggregates(split, rows, token_scores, report, owners)
    return rows, aggregates, token_scores, report, _units(split, rows, owners, report)


def _aggregates(
    split: str, rows: list[dict], token_scores: list[TokenScores], report, owners: list[str] | None = None
) -> list[Metric]:
    """Each split's means over its rows (per task where there are several) and its leak rates, each with its
    standard error, the rows of one person (``owners[i]``, the row's person) counted as one draw."""
    out = []
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_task["all"].append(i)
        by_task[row["task"]].append(i)
    tasks = sorted(by_task)
    for task in tasks if len(tasks) > 2 else ["all"]:
        idx = by_task[task]
        for name in ("rougeL_recall", "rouge1_recall", "exact_match"):
            kept = [i for i in idx if name in rows[i]]
            if kept:
                values = [rows[i][name] for i in kept]
                stderr = uncertainty.clustered_se(values, [owners[i] for i in kept] if owners else None)
                out.append(Metric.of(name, split, float(np.mean(values)), task, n=len(values), stderr=stderr))
        ppl = scores.perplexity(
            [token_scores[i].answer_nll_sum for i in idx], [token_scores[i].answer_tokens for i in idx]
        )
        out.append(Metric.of("perplexity", split, ppl, task, n=len(idx)))
    if report is not None:
        out.append(Metric.of("leak_rate", split, report.rate, n=report.n_pairs, stderr=report.stderr))
        if (part := report.partial) is not None:
            out.append(Metric.of("partial_leak_rate", split, part.rate, n=part.n_pairs, stderr=part.stderr))
            if part.digits_in_place is not None:
                out.append(
                    Metric.of("digits_in_place", split, part.digits_in_place, n=part.n_digit_pairs,
                              stderr=part.digits_stderr)
                )  # fmt: skip
    return out


def _units(split: str, rows: list[dict], owners: list[str], report) -> dict[str, uncertainty.Units]:
    """The units behind the split's overall means (:data:`~obliviate.evaluate.uncertainty.Units`): its rows for
    ROUGE and exact match, its (person, field) pairs for the leak rates and digits in place. Two models evaluated on
    the same rows have the same units, so a goal comparing them takes the error of their per-unit differences."""
    out = {}
    for name in ("rougeL_recall", "rouge1_recall", "exact_match"):
        kept = [i for i, row in enumerate(rows) if name in row]
        if kept:
            out[f"{split}/{name}"] = uncertainty.mean_units(
                [rows[i]["id"] for i in kept], [owners[i] for i in kept], [rows[i][name] for i in kept]
            )
    if report is not None:
        for key, found in (
            ("leak_rate", report.units),
            ("digits_in_place", getattr(report.partial, "digit_units", None)),
        ):
            if found:
                out[f"{split}/{key}"] = {"all": found}
    return out


def _exposure_metrics(report: exposure.ExposureReport) -> list[Metric]:
    """Mean exposure overall and per PII field, and the mean NLL gap, of one split."""
    n = len(report.pairs)
    people = [pair["person_id"] for pair in report.pairs]
    stderr = uncertainty.clustered_se([pair["exposure"] for pair in report.pairs], people)
    out = [Metric.of("exposure", report.split, report.mean, n=n, k=report.k, chance=report.chance, stderr=stderr)]
    out += [
        Metric.of(f"exposure_{name}", report.split, stats["mean"], n=stats["n"], stderr=stats.get("stderr"))
        for name, stats in report.by_field.items()
        if f"exposure_{name}" in scores.METRICS
    ]
    return out + [Metric.of("exposure_nll_gap", report.split, report.nll_gap, n=n)]


def evaluate_model(
    model,
    tokenizer,
    data: EvalData,
    options: EvalOptions = EvalOptions(),
    oracle: OracleStats | None = None,
    mmlu_acc: float | None = None,
) -> EvalResult:
    """Every metric of the suite on every split present in ``data``."""
    if options.official:
        official.check_model(model)
    passes = _SplitPasses(notes=list(data.notes))
    redactor = None if options.show_pii or not data.people else leak.Redactor(data.people)
    sampler = CandidateSampler(data.people, seed=options.seed) if options.exposure and data.people else None
    for split in EVAL_SPLITS:
        if split in data.splits:
            _evaluate_split_into(passes, model, tokenizer, split, data, options, redactor, sampler)
    members, nonmembers = mia_sets(model, tokenizer, data, passes.records, passes.token_scores, options, passes.notes)
    mink_auc = mia_metrics(members, nonmembers, options, passes.metrics, passes.units)
    forget_nll = [ts.answer_nll for ts in passes.token_scores.get("forget", [])]
    passes.metrics += oracle_metrics(forget_nll, mink_auc, oracle)
    semeval_json = _semeval(passes.per_example, passes.metrics, mmlu_acc, passes.notes)
    return EvalResult(
        passes.metrics,
        passes.per_example,
        semeval_json,
        passes.leak_reports,
        passes.notes,
        forget_nll,
        mink_auc,
        passes.exposure_reports,
        leaked=passes.leaked,
        units=passes.units,
    )


@dataclass
class _SplitPasses:
    """What :func:`evaluate_model` gathers split by split, in split order."""

    notes: list[str]
    metrics: list[Metric] = field(default_factory=list)
    per_example: list[dict] = field(default_factory=list)
    leak_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    exposure_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaked: dict[str, list[tuple[str, str, tuple[str, ...]]]] = field(default_factory=dict)
    token_scores: dict[str, list[TokenScores]] = field(default_factory=dict)
    records: dict[str, list[Record]] = field(default_factory=dict)
    units: dict[str, uncertainty.Units] = field(default_factory=dict)


def _evaluate_split_into(
    passes: _SplitPasses,
    model,
    tokenizer,
    split: str,
    data: EvalData,
    options: EvalOptions,
    redactor: leak.Redactor | None,
    sampler: CandidateSampler | None,
) -> None:
    """One split's rows, aggregates, leak report and exposure, added to ``passes``."""
    records = sample_records(data.splits[split], options.max_examples, options.seed)
    passes.records[split] = records
    mia_reads = "holdout" in data.splits and data.mia_members is None  # forget against holdout (membership.mia_sets)
    rows, aggregates, passes.token_scores[split], report, units = evaluate_split(
        model, tokenizer, split, records, data.people, options, redactor, distribution=mia_reads
    )
    passes.per_example += rows
    passes.metrics += aggregates
    passes.units.update(units)
    if report is not None:
        passes.leak_reports[split] = {
            k: v for k, v in report.to_dict().items() if k not in ("leaked_pairs", "leaked_by")
        }
        passes.leaked[split] = report.leaked_by
    if sampler is not None and split in options.exposure_splits and (people := people_of(data.people, split)):
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
            passes.exposure_reports[split] = found.to_dict()
            passes.metrics += _exposure_metrics(found)
            pairs = found.pairs
            passes.units[f"{split}/exposure"] = uncertainty.mean_units(
                [f"{p['person_id']}|{p['field']}" for p in pairs],
                [p["person_id"] for p in pairs],
                [p["exposure"] for p in pairs],
            )
    if not any(r["kind"] in ("completion", "qa") for r in rows):
        passes.notes.append(f"{split}: no completion or QA rows, so ROUGE-L, exact match and leak rate are skipped")


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
