"""Issue 9 probe: how likely is a name-built e-mail under each model, for whom?

LUME's e-mails are ``first_last@me.com``, given by the name in the prompt. The stop rule cannot read them by rank (a
never-seen person's ranks first among its fakes too), and contrast's hinge pushes a true e-mail only until it is no
likelier than the e-mail of its stranger copy (:class:`~obliviate.train.relabel.RecombinedNames`). This prints,
under each model given, the mean token NLL of the e-mail after the LUME QA prompt (``What is NAME's email
address?``) for up to ``--people`` forget and holdout people, and for the stranger contrast's copies would put in
their place (``RecombinedNames``, with the first model's tokenizer); and of the e-mail as their biography writes it
after the leak measure's prefix probe (the biography cut just before it), where most of contrast's leaked e-mails
are found, with how many of those e-mails have every token the model's first choice there (teacher-forced: the
e-mails a greedy continuation of the prefix would write), and how many greedy decoding writes there through any
tokens. Means and counts only; no name or value is printed. ``--people 400`` reads every forget person.

    python benchmarks/probe_email_nll.py --data runs/lume/data MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def email_of(name: str) -> str:
    """LUME's e-mail format: the name's words, lower case, joined by ``_``, at ``me.com``."""
    return "_".join(name.lower().split()) + "@me.com"


def mean_nll(model, tokenizer, names_and_emails) -> float:
    """Mean over people of the e-mail's mean token NLL after the LUME QA prompt."""
    import numpy as np

    from obliviate.evaluate.exposure import continuation_nll

    return float(
        np.mean(
            [
                continuation_nll(model, tokenizer, f"What is {name}'s email address?", [email])[0]
                for name, email in names_and_emails
            ]
        )
    )


def _prefix_cuts(records, people, split: str) -> list[tuple[str, str]]:
    """``(prefix, rest)`` per person: the leak measure's ``prefix`` probe for the e-mail (the first biography holding
    it, cut just before its first occurrence in any surface form; ``evaluate/leak.py`` ``build_probes``) and the text
    from there to the end of that occurrence, as the biography writes it (``first\\_last@me.com`` in LUME's links)."""
    from obliviate.data.pii_match import find_value

    by_id = {r.id: r for r in records}
    cuts = []
    for person in people:
        if person.split != split or "email" not in person.fields:
            continue
        for record in (by_id[i] for i in person.records if i in by_id and by_id[i].kind == "completion"):
            span = find_value("email", person.fields["email"], record.text)
            if span and (prefix := record.text[: span[0]].rstrip()):
                cuts.append((prefix, record.text[len(prefix) : span[1]]))
                break
    return cuts


def _surface_nll(model, tokenizer, prefix: str, rest: str) -> tuple[float, bool]:
    """Mean NLL of the tokens of ``prefix + rest`` past ``prefix``'s own tokens (the boundary as the tokenizer cuts
    the prefix alone), and whether every one of them is the model's most likely next token (teacher-forced: what a
    greedy continuation of the prefix writes, up to the tokenizer's boundary)."""
    import torch

    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    ids = tokenizer(prefix + rest, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    target = torch.tensor(ids[1:])
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return float(nll[start - 1 :].mean()), bool((logits.argmax(-1) == target)[start - 1 :].all())


def _greedy_writes(model, tokenizer, prefix: str, rest: str) -> bool:
    """Whether greedy decoding after ``prefix`` writes ``rest`` (the e-mail as the biography writes it), through any
    tokens: the leak measure's prefix probe, without its other probes and its surface forms."""
    import torch

    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    budget = len(tokenizer(rest, add_special_tokens=False)["input_ids"]) + 6
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
        )
    return rest.strip() in tokenizer.decode(out[0, len(ids) :])


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from obliviate.data.load import load_split
    from obliviate.models.load import load_model
    from obliviate.train.relabel import RecombinedNames, known_people

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories (target, oracle, an unlearned run, ...)")
    parser.add_argument("--data", required=True, help="a directory with forget/, retain/ and holdout/ (LUME Task2)")
    parser.add_argument("--people", type=int, default=40, help="people per split (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    splits = {s: load_split(f"{args.data}/{s}", split=s) for s in ("forget", "retain", "holdout")}
    people = known_people(f"{args.data}/forget", splits)
    chosen = {
        split: [p for p in people if p.split == split and p.name and p.fields.get("email") == email_of(p.name)]
        for split in ("forget", "holdout")
    }
    from transformers import AutoTokenizer

    names = RecombinedNames(people, seed=args.seed, tokenizer=AutoTokenizer.from_pretrained(args.models[0]))
    strangers = {split: [names.draw(p.name) for p in group[: args.people]] for split, group in chosen.items()}
    ids = {p.person_id for group in chosen.values() for p in group[: args.people]}
    prefixes = {s: _prefix_cuts(splits[s], [p for p in people if p.person_id in ids], s) for s in chosen}
    print(
        "| model | forget e-mail NLL | holdout e-mail NLL | stranger e-mail NLL (forget / holdout draws) "
        "| after the prefix probe: forget / holdout | there, every token the first choice: forget / holdout "
        "| written by greedy decoding there: forget / holdout |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in args.models:
        model, tokenizer = load_model(path)

        true = {
            s: mean_nll(model, tokenizer, [(p.name, p.fields["email"]) for p in group[: args.people]])
            for s, group in chosen.items()
        }
        fake = {s: mean_nll(model, tokenizer, [(n, email_of(n)) for n in drawn]) for s, drawn in strangers.items()}
        scored = {s: [_surface_nll(model, tokenizer, *cut) for cut in cuts] for s, cuts in prefixes.items()}
        prefix = {s: float(np.mean([nll for nll, _ in rows])) for s, rows in scored.items()}
        first = {s: f"{sum(top for _, top in rows)} of {len(rows)}" for s, rows in scored.items()}
        greedy = {
            s: f"{sum(_greedy_writes(model, tokenizer, *cut) for cut in cuts)} of {len(cuts)}"
            for s, cuts in prefixes.items()
        }
        print(
            f"| {path} | {true['forget']:.3f} | {true['holdout']:.3f} | {fake['forget']:.3f} / {fake['holdout']:.3f} "
            f"| {prefix['forget']:.3f} / {prefix['holdout']:.3f} | {first['forget']} / {first['holdout']} "
            f"| {greedy['forget']} / {greedy['holdout']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
