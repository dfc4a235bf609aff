"""Issue 9 probe: does the offline tokenizer alone tell forget rows from holdout rows?

A fresh named-size model gets a BPE tokenizer trained on the data itself. Trained on the fine-tuning data
(forget + retain), it learns merges for the forget people's names and values and none for the holdout people's, so a
forget row is cut into fewer tokens. A membership attack that scores mean log-probability per token then sees the
forget rows as members even under a model that never saw them. This prints, for a tokenizer trained on each choice
of splits, the mean characters per token of the forget and holdout rows and the ROC AUC of telling them apart by
characters per token alone (0.5: the tokenizer cannot tell them apart). No text is printed.

    python benchmarks/probe_tokenizer.py --data runs/cache/data-d605a7e0430f
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHOICES = {"forget+retain": ("forget", "retain"), "forget+retain+holdout": ("forget", "retain", "holdout")}


def chars_per_token(tokenizer, texts) -> list[float]:
    return [len(t) / max(len(tokenizer(t)["input_ids"]), 1) for t in texts]


def separation(tokenizer, forget: list[str], holdout: list[str]) -> dict[str, float]:
    """Mean characters per token of each split and the AUC of forget (label 1) against holdout by that figure."""
    from sklearn.metrics import roc_auc_score

    f, h = chars_per_token(tokenizer, forget), chars_per_token(tokenizer, holdout)
    auc = roc_auc_score([1] * len(f) + [0] * len(h), f + h)
    return {"forget": round(sum(f) / len(f), 3), "holdout": round(sum(h) / len(h), 3), "auc": round(float(auc), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a directory with forget/, retain/ and holdout/")
    parser.add_argument("--vocab_size", type=int, default=4096)
    args = parser.parse_args(argv)
    from obliviate.data.load import load_split
    from obliviate.models.tiny import train_tokenizer

    splits = {s: [r.text for r in load_split(f"{args.data}/{s}", split=s)] for s in ("forget", "retain", "holdout")}
    for name, used in CHOICES.items():
        tokenizer = train_tokenizer((t for s in used for t in splits[s]), vocab_size=args.vocab_size)
        print(name, json.dumps(separation(tokenizer, splits["forget"], splits["holdout"])))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
