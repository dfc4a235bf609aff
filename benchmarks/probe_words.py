"""Issue 9 probe: how likely a model finds the forget people's completions, words and values apart.

For the completion rows of the forget and holdout splits (the first ``--rows`` of each), the mean NLL in nats per
token of the answer's PII values (every surface form of the person's values, as ``--forget_tokens pii`` marks them)
and of its other words (the template, the name), teacher-forced, eos left out. A model that never saw the forget
people gives both splits about the same figures; one that still holds them gives the forget rows lower ones. Prints
one line per model; PII is never printed.

With ``--mia N`` it also prints, for the first N rows of each split (the benchmarks evaluate the first 60), the ROC
AUC of the loss attack (mean token log-probability, higher: member) on forget against holdout, per row kind (QA,
completion) and per part (whole text, prompt, answer), as ``docs/METRICS.md`` scores the whole text.

With ``--parts N`` it also prints, for the first N completion rows of each split, the mean NLL of five parts of the
whole text, forget / holdout: ``head`` (the prompt before its first PII value, which no objective scores),
``prompt_values`` and ``prompt_words`` (the prompt from its first value on, which contrast scores after re-cutting
the record there), ``answer_values`` and ``answer_words``; values also per field (``prompt_values:phone``). It
shows where an unlearned model's text is less likely for the forget people than for never-seen ones.

    python benchmarks/probe_words.py --data runs/lume/data --model target=runs/lume/cache/target-… \\
        --model contrast=runs/lume/report/methods/contrast
"""

from __future__ import annotations

import argparse
import json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a directory with forget/ and holdout/")
    parser.add_argument("--model", action="append", required=True, help="name=path of a model directory (repeat)")
    parser.add_argument("--rows", type=int, default=80, help="completion rows per split (default: 80)")
    parser.add_argument("--mia", type=int, default=0, help="also the loss attack's AUC per row kind on N rows")
    parser.add_argument("--parts", type=int, default=0, help="also the NLL per part of N completion rows' text")
    return parser


def split_rows(data: str, split: str, rows: int):
    from obliviate.data.load import load_split
    from obliviate.data.pii import mark_pii_spans, pii_from_records

    records = load_split(f"{data}/{split}", split=split)
    people = pii_from_records(records, split)
    marked, _ = mark_pii_spans([r for r in records if r.kind == "completion"][:rows], people)
    return marked


def words_and_values(model, tokenizer, records) -> dict[str, float]:
    """Mean NLL per answer token of the values and of the other words, over ``records`` (teacher-forced)."""
    import torch

    from obliviate.data.batching import encode_record

    sums = {"values": [0.0, 0], "words": [0.0, 0]}
    for record in records:
        encoded = encode_record(tokenizer, record, 512)
        ids = torch.tensor([encoded.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
        for t in range(encoded.prompt_len, len(encoded.ids) - 1):  # the answer's tokens, eos left out
            kind = "values" if encoded.scored[t] else "words"
            sums[kind][0] += float(nll[t - 1])
            sums[kind][1] += 1
    return {kind: round(total / max(count, 1), 3) for kind, (total, count) in sums.items()}


def mia_by_kind(model, tokenizer, splits: dict) -> dict[str, float]:
    """ROC AUC of the loss attack, forget (members) against holdout, per row kind and text part."""
    import torch
    from sklearn.metrics import roc_auc_score

    from obliviate.data.batching import encode_record

    scores: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for split, records in splits.items():
        for record in records:
            encoded = encode_record(tokenizer, record, 512)
            ids = torch.tensor([encoded.ids[:-1]])  # the appended eos is not scored
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            token = logp.gather(-1, ids[0, 1:, None])[:, 0]
            cut = max(encoded.prompt_len - 1, 1)
            parts = (token.mean(), token[:cut].mean(), token[cut:].mean() if len(token) > cut else token[-1:].mean())
            scores.setdefault((split, record.kind), []).append(tuple(float(p) for p in parts))
    out = {}
    for kind in ("qa", "completion"):
        members, others = scores.get(("forget", kind), []), scores.get(("holdout", kind), [])
        if not (members and others):
            continue
        labels = [1] * len(members) + [0] * len(others)
        for i, part in enumerate(("text", "prompt", "answer")):
            out[f"{kind}/{part}"] = round(roc_auc_score(labels, [row[i] for row in members + others]), 3)
        out[f"{kind}/rows"] = f"{len(members)}+{len(others)}"
    return out


def field_name(code: int) -> str:
    """The PII field of a token's field code (``data/batching.py`` ``field_code``): one of the five, or ``other``."""
    from obliviate.data.records import PII_FIELDS

    return PII_FIELDS[code - 1] if 1 <= code <= len(PII_FIELDS) else "other"


def part_of(position: int, prompt_len: int, char: int, bound: int, coded: bool) -> str:
    """The part of the whole text a token of a re-cut completion is in: ``head`` before the re-cut record's answer
    (``position < prompt_len``), then ``prompt_`` or ``answer_`` by whether its last character (``char``, in the
    re-cut answer) is before ``bound`` (where the original answer starts in it), and ``values`` or ``words`` by
    ``coded`` (a PII value's token)."""
    if position < prompt_len:
        return "head"
    return ("answer_" if char >= bound else "prompt_") + ("values" if coded else "words")


def nll_by_part(model, tokenizer, data: str, rows: int) -> dict[str, str]:
    """Mean NLL per part of the first ``rows`` completions' whole text (eos left out), ``forget/holdout``."""
    sums = part_sums(model, tokenizer, data, rows)
    parts = sorted({name for _, name in sums})
    return {
        name: "/".join(f"{sums[(s, name)][0] / sums[(s, name)][1]:.3f}" for s in ("forget", "holdout"))
        for name in parts
        if ("forget", name) in sums and ("holdout", name) in sums
    }


def part_sums(model, tokenizer, data: str, rows: int) -> dict[tuple[str, str], list[float]]:
    """``(split, part) → [NLL sum, tokens]`` over the first ``rows`` completions of forget and holdout; the five
    parts of :func:`part_of` hold every scored token once, and ``part:field`` again the values of each field."""
    import torch

    from obliviate.data.batching import encode_record
    from obliviate.data.load import load_split
    from obliviate.data.pii import mark_pii_spans, pii_from_records, values_in_answers
    from obliviate.data.records import answer_prefix

    sums: dict[tuple[str, str], list[float]] = {}
    for split in ("forget", "holdout"):
        records = load_split(f"{data}/{split}", split=split)
        people = pii_from_records(records, split)
        originals = [r for r in records if r.kind == "completion"][:rows]
        marked, _ = mark_pii_spans(values_in_answers(originals, people), people)
        for record, original in zip(marked, originals):
            bound = len(record.output) - len(original.output)
            encoded = encode_record(tokenizer, record, 512)
            separator = answer_prefix(record)
            offsets = tokenizer(separator + record.output, add_special_tokens=False, return_offsets_mapping=True)
            ids = torch.tensor([encoded.ids[:-1]])  # the appended eos is not scored
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
            for t in range(1, len(encoded.ids) - 1):
                a = t - encoded.prompt_len
                char = offsets["offset_mapping"][a][1] - 1 - len(separator) if a >= 0 else -1
                coded = bool(encoded.scored and encoded.scored[t])
                part = part_of(t, encoded.prompt_len, char, bound, coded)
                names = [part]
                if coded:  # the field the batch gives the token (every field outside the five shares one code)
                    names.append(part + ":" + field_name(encoded.scored[t]))
                for name in names:
                    total = sums.setdefault((split, name), [0.0, 0])
                    total[0] += float(nll[t - 1])
                    total[1] += 1
    return sums


def main(argv=None) -> None:
    import _common

    _common.quiet()
    args = build_parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from obliviate.data.load import load_split

    splits = {split: split_rows(args.data, split, args.rows) for split in ("forget", "holdout")}
    first = {split: load_split(f"{args.data}/{split}", split=split)[: args.mia] for split in splits}
    for spec in args.model:
        name, _, path = spec.partition("=")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        figures = {split: words_and_values(model, tokenizer, rows) for split, rows in splits.items()}
        figures["rows"] = {split: len(rows) for split, rows in splits.items()}
        if args.mia:
            figures["mia_auc"] = mia_by_kind(model, tokenizer, first)
        if args.parts:
            figures["nll_by_part"] = nll_by_part(model, tokenizer, args.data, args.parts)
        print(name, json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
