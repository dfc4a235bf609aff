"""How many of relabel's stranger answers hold another person's real value: the answers the pipeline's
``relabelled_draws`` generates, each checked by today's rule (every person's values, any surface form) and by the rule
before the ninth session of 2026-12-05 (the owner's values, and digit runs equal to a real SSN or phone).

Prints counts and the fields of the values found, never a value:

    python benchmarks/probe_relabel_check.py --model runs/cache/target-… --data runs/cache/data-… [--draws 4]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter


def main() -> None:
    from obliviate.data.load import load_split
    from obliviate.models.load import load_model
    from obliviate.train import relabel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the starting model (the target)")
    parser.add_argument("--data", required=True, help="a directory with forget/ and retain/")
    parser.add_argument("--draws", type=int, default=4, help="--relabel_draws (default 4, the option's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    forget = load_split(f"{args.data}/forget", split="forget")
    retain = load_split(f"{args.data}/retain", split="retain")
    people = relabel.known_people(f"{args.data}/forget", {"forget": forget, "retain": retain})
    digit_values = {re.sub(r"\D", "", v) for p in people for f, v in p.fields.items() if f in ("ssn", "phone")}
    today = relabel.holds_real_value
    counts: Counter[str] = Counter()
    fields: Counter[str] = Counter()

    def both(text, person, known) -> bool:
        own = any(relabel.contains_value(f, v, text) for f, v in person.fields.items())
        runs = re.findall(r"\d[\d\s().-]{5,}\d", text)
        before = own or any(re.sub(r"\D", "", run) in digit_values for run in runs)
        refused = today(text, person, known)
        counts.update(
            checked=1, refused_before=before, refused_today=refused, refused_only_today=refused and not before
        )
        if refused and not before:
            fields.update(known.fields_in(text))
        return refused

    relabel.holds_real_value = both
    _, stats = relabel.relabelled_draws(model, tokenizer, forget, people, draws=args.draws, seed=args.seed)
    print(dict(counts), "fields in the answers refused only today (answers holding one):", dict(fields), stats)


if __name__ == "__main__":
    main()
