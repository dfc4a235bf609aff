"""Membership inference and the oracle comparison of the suite.

Which documents are members and non-members (the ``--mia_dir`` documents, else forget against holdout), the attacks'
AUCs as metrics, and what forget quality and PrivLeak compare against: the oracle's per-example forget NLL and Min-K%
AUC (:func:`oracle_stats`, one forward pass on forget and holdout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from obliviate.data.records import Record, owner_id
from obliviate.evaluate import mia, scores
from obliviate.evaluate.data import EvalData, sample_records
from obliviate.evaluate.passes import TokenScores, forward_pass
from obliviate.evaluate.results import Metric

if TYPE_CHECKING:
    from obliviate.evaluate.suite import EvalOptions


@dataclass
class OracleStats:
    """What forget quality and PrivLeak compare against: the oracle's per-example forget NLL and Min-K% AUC."""

    forget_nll: list[float]
    mink_auc: float | None


def mia_examples(records: list[Record], token_scores: list[TokenScores]) -> list[mia.ExampleLogProbs]:
    """What the attacks read of each record: its text's token log-probs and the next-token mean and spread."""
    return [
        mia.ExampleLogProbs(
            ts.text_logp, ts.mu[: ts.text_positions], ts.sigma[: ts.text_positions], r.text, owner_id(r), r.id
        )
        for r, ts in zip(records, token_scores)
    ]


def mia_metrics(
    members, nonmembers, options: EvalOptions, metrics: list[Metric], units: dict | None = None
) -> float | None:
    """Each attack's AUC and the MIA score, added to ``metrics`` (and each AUC's units to ``units``, where given,
    under its summary key); returns the Min-K% AUC (None: no MIA sets)."""
    if not (members and nonmembers):
        return None
    found: dict = {}
    aucs = mia.mia_aucs_with_stderr(members, nonmembers, k=options.mia_k, units=found)
    for attack, (auc, stderr) in aucs.items():
        metrics.append(Metric.of(f"mia_auc_{attack}", "forget", auc, stderr=stderr))
        if units is not None:
            units[f"forget/mia_auc_{attack}"] = found[attack]
    metrics.append(Metric.of("mia_score", "forget", scores.mia_score(aucs["loss"][0])))
    return aucs["mink"][0]


def oracle_metrics(forget_nll: list[float], mink_auc: float | None, oracle: OracleStats | None) -> list[Metric]:
    """Forget quality and PrivLeak, which compare against the oracle."""
    if oracle is None or not forget_nll:
        return []
    out = [
        Metric.of(
            "forget_quality",
            "forget",
            scores.ks_forget_quality(forget_nll, oracle.forget_nll),
            statistic="per-example forget answer NLL (no paraphrased/perturbed answers)",
        )
    ]
    if mink_auc is not None and oracle.mink_auc is not None:
        out.append(Metric.of("privleak", "forget", scores.privleak(mink_auc, oracle.mink_auc)))
    return out


def mia_sets(model, tokenizer, data, records_by_split, token_scores, options, notes):
    """Members and non-members: the ``--mia_dir`` documents (one more forward pass each), else the forget split's
    passes against the holdout's; ``(None, None)`` without either, with a note saying so."""
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
                official=options.official,
            )
            docs[name] = mia_examples(records, ts)
        notes.append("membership inference: member.jsonl against nonmember.jsonl")
        return docs["member"], docs["nonmember"]
    if "forget" in token_scores and "holdout" in token_scores:
        return (
            mia_examples(records_by_split["forget"], token_scores["forget"]),
            mia_examples(records_by_split["holdout"], token_scores["holdout"]),
        )
    notes.append("membership inference skipped: it needs --holdout_dir or --mia_dir")
    return None, None


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
            official=options.official,
        )

    forget, ts_forget = scored("forget")
    mink_auc = None
    if "holdout" in data.splits:
        holdout, ts_holdout = scored("holdout")
        aucs = mia.mia_aucs(mia_examples(forget, ts_forget), mia_examples(holdout, ts_holdout), k=options.mia_k)
        mink_auc = aucs["mink"]
    return OracleStats([ts.answer_nll for ts in ts_forget], mink_auc)
