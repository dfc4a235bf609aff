"""``finetune --until_memorised T``: train until the model has memorised its training data, up to ``--epochs``.

A target that has not memorised its training data makes every comparison against it meaningless: unlearning cannot
remove what was never learned, and the oracle (trained on fewer rows, so as many epochs reach deeper) can then know
the retain people better than the target does. A fixed epoch count that memorises one data set leaves another
half-learned, so the loop asks :class:`MemorisationCheck` at every epoch end instead.

The check generates greedily, as the evaluation does (:func:`obliviate.evaluate.passes.generate`), for a seeded
sample of the training rows that keeps people whole (:func:`obliviate.evaluate.data.sample_records`), and scores
them as the suite does (``docs/METRICS.md``): exact match on QA rows, ROUGE-L recall on completion rows. The model
counts as memorised when every score the sample has is at least the threshold. Generation stops a few tokens past
the longest answer of the sample: enough to see an answer that does not end where it should (which fails exact
match), and no more.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.data.records import Record
from obliviate.errors import ConfigError
from obliviate.evaluate import scores
from obliviate.evaluate.data import sample_records
from obliviate.evaluate.passes import generate

PAST_ANSWER_TOKENS = 4
"""New tokens generated past the sample's longest answer."""


@dataclass
class MemorisationCheck:
    """Decides at an epoch end whether the model reproduces its training rows (see the module docstring).

    Args:
        records: the training rows checked (``qa`` and ``completion`` rows; documents have no answer to generate).
        threshold: the exact match and ROUGE-L recall both must reach.
        batch_size: rows per generation batch.
        max_length: longest prompt, in tokens (cut from the left, as training does).
    """

    records: Sequence[Record]
    threshold: float
    batch_size: int = 64
    max_length: int = 512
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = [r for r in self.records if r.kind in ("qa", "completion")]
        if not self.records:
            raise ConfigError("--until_memorised needs qa or completion rows to generate from; the data has documents")

    def measure(self, model, tokenizer) -> dict[str, Any]:
        """Exact match over the QA rows and ROUGE-L recall over the completion rows (None where there are none)."""
        longest = max(len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) for r in self.records)
        prompts = [r.input for r in self.records]
        greedy, _ = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=longest + PAST_ANSWER_TOKENS,
            batch_size=self.batch_size,
            max_length=self.max_length,
            show_progress=False,
        )
        matches = [scores.exact_match(g, r.output) for g, r in zip(greedy, self.records) if r.kind == "qa"]
        recalls = [scores.rouge_recall(g, r.output)[1] for g, r in zip(greedy, self.records) if r.kind == "completion"]
        return {
            "exact_match": float(np.mean(matches)) if matches else None,
            "rougeL_recall": float(np.mean(recalls)) if recalls else None,
            "rows": len(self.records),
        }

    def __call__(self, model, tokenizer, epoch: int) -> str | None:
        """Measure after ``epoch``; a reason to stop once memorised, else None. Every check goes to ``history``."""
        was_training = model.training
        measured = self.measure(model, tokenizer)
        model.train(was_training)
        reached = all(v is None or v >= self.threshold for k, v in measured.items() if k != "rows")
        self.history.append({"epoch": epoch, **measured, "threshold": self.threshold, "memorised": reached})
        if not reached:
            return None
        return f"memorised at epoch {epoch}: {describe(measured)} >= {self.threshold:g} on {len(self.records)} rows"


def describe(measured: dict[str, Any]) -> str:
    """``exact match 0.97, ROUGE-L recall 0.99`` (the scores a check has)."""
    parts = [
        f"{label} {measured[key]:.3f}"
        for key, label in (("exact_match", "exact match"), ("rougeL_recall", "ROUGE-L recall"))
        if measured.get(key) is not None
    ]
    return ", ".join(parts)


def memorisation_check_for(config) -> MemorisationCheck:
    """The check behind ``obliviate finetune --until_memorised T`` (a :class:`~obliviate.config.FinetuneConfig`)."""
    from obliviate.data.load import load_training_records

    rows = [r for r in load_training_records(config.data) if r.kind in ("qa", "completion")]
    return MemorisationCheck(
        records=sample_records(rows, config.memorised_sample, config.seed),
        threshold=config.until_memorised,
        batch_size=max(config.micro_batch_size, 16),
        max_length=config.max_length,
    )


def read_memorisation(model_dir) -> dict[str, Any] | None:
    """How memorised a fine-tuned model directory ended, from its ``trainer_state.json``: the last epoch-end check
    (scores, rows, threshold, ``memorised``) with the epochs trained; None for a run without the check."""
    path = Path(model_dir) / "trainer_state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    check = state.get("epoch_check")
    if not isinstance(check, dict):
        return None
    budget = None
    config = path.parent / "config.yaml"
    if config.is_file():
        import yaml

        values = yaml.safe_load(config.read_text(encoding="utf-8"))
        budget = values.get("epochs") if isinstance(values, dict) else None
    return {**check, "epochs": state.get("epoch"), "budget": budget}
