"""Which rows an unlearning run broke, by field: teacher-forced exact match of a seeded sample of one split's rows
under the starting model and under the unlearned one, counted per (kind, PII field).

A row counts as kept when every answer token is the model's most likely next token (what greedy decoding reproduces
word for word), as the stop rule's ``retain_exact`` reads it. Prints, per key, how many of the rows the starting
model reproduced the unlearned model no longer does. On the retain split that is collateral damage; on the forget
split, rows whose answer moved. Prints counts only, never a row's text.

    python benchmarks/probe_fields.py --before runs/lume/cache/target-… --after runs/x/methods/contrast \\
        --data runs/lume/data/retain [--rows 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from collections import Counter


def kept_rows(model_dir: str, records: list, batch_size: int = 32) -> list[bool]:
    """Teacher-forced exact match of each record under the model in ``model_dir`` (fp32, eval mode)."""
    import torch

    from obliviate.models.load import load_model

    model, tokenizer = load_model(model_dir, dtype=torch.float32)
    return kept_by(model, tokenizer, records, batch_size)


def kept_by(model, tokenizer, records: list, batch_size: int = 32) -> list[bool]:
    """Teacher-forced exact match of each record under ``model`` (put in eval mode)."""
    import torch

    from obliviate.data.batching import collate, encode_record
    from obliviate.losses.common import answer_exact

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kept: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = collate([encode_record(tokenizer, r, 512) for r in records[start : start + batch_size]], pad)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            kept += answer_exact(logits, batch.labels).tolist()
    return kept


def main(argv: list[str] | None = None) -> dict[tuple, tuple[int, int]]:
    import torch

    from obliviate.data.batching import retain_match_key
    from obliviate.data.load import load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the starting model's directory")
    parser.add_argument("--after", required=True, help="the unlearned model's directory")
    parser.add_argument("--data", required=True, help="the split to read (file or directory)")
    parser.add_argument("--rows", type=int, default=400, help="seeded sample size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = [r for r in load_split(args.data) if r.output]
    random.Random(args.seed).shuffle(records)
    records = records[: args.rows]
    before, after = kept_rows(args.before, records), kept_rows(args.after, records)
    reproduced, lost = Counter(), Counter()
    for record, was, now in zip(records, before, after):
        key = retain_match_key(record)[1:]
        reproduced[key] += was
        lost[key] += was and not now
    counts = {key: (lost[key], reproduced[key]) for key in sorted(reproduced, key=str)}
    for (kind, field), (gone, had) in counts.items():
        print(f"{kind:>10} {field or '-':>10}: {gone} of {had} rows no longer reproduced")
    print(f"{'all':>21}: {sum(lost.values())} of {sum(reproduced.values())}")
    return counts


if __name__ == "__main__":
    main()
