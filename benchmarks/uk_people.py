"""A PII set unlike the demo's, for checking that the defaults carry over: British people (Faker ``en_GB``).

Other templates (three biography wordings, none of the demo's), other fields and formats: a National Insurance
number (``NK 93 41 90 A``) instead of an SSN, UK mobile numbers (``07295 961564``), dates day first (``24/08/1988``
in the QA answers, ``24 August 1988`` in the prose), UK addresses with postcodes, e-mails at British providers.
Writes ``OUT/forget``, ``OUT/retain``, ``OUT/holdout`` (LUME Task2's layout: one biography and five QA rows per
person, each QA row naming its ``pii_field``) and ``OUT/pii.json``; 10 % of the people forgotten, 10 % held out.
The same seed gives the same files. Then, for example::

    python benchmarks/uk_people.py runs/uk_data
    obliviate run --model tiny --finetune_target --train_oracle --forget_dir runs/uk_data/forget \\
        --retain_dir runs/uk_data/retain --holdout_dir runs/uk_data/holdout --methods ga_gd contrast \\
        --attacks none --output_dir runs/uk
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import string
import sys
from pathlib import Path

DOMAINS = ("btinternet.com", "outlook.co.uk", "gmail.com", "yahoo.co.uk", "sky.com", "hotmail.co.uk")
HOBBIES = (
    "keeps bees on an allotment",
    "sings in a church choir",
    "referees Sunday league football",
    "restores narrowboats",
    "runs a village book club",
    "walks the coast path every summer",
    "bakes for the local food bank",
    "plays the cornet in a brass band",
)
TEMPLATES = (  # (prompt, continuation): the continuation holds the values the prompt does not
    (
        "{name} was born on {dob_long} and now works as a {job} in {town}. In spare hours {pron} {hobby}. "
        "{Pron} National Insurance number is",
        "{ni}; {pos} mobile is {phone}, e-mail {email}, and {pron} lives at {address}.",
    ),
    (
        "A {job} from {town}, {name} (born {dob_long}) {hobby}. Contact details on file: mobile {phone}, e-mail",
        "{email}. Home address: {address}. National Insurance number: {ni}.",
    ),
    (
        "Records held for {name}: date of birth {dob_long}, occupation {job}, based in {town}. Mobile number",
        "{phone}. E-mail {email}. NI number {ni}. Registered address {address}.",
    ),
)
QUESTIONS = {  # the question, then its paraphrases
    "birth_date": ("What is {name}'s date of birth?", "When was {name} born?", "On which date was {name} born?"),
    "ni_number": (
        "What is {name}'s National Insurance number?",
        "Which NI number does {name} hold?",
        "What National Insurance number was issued to {name}?",
    ),
    "phone": (
        "What is {name}'s mobile number?",
        "On which mobile number can {name} be reached?",
        "What phone number does {name} use?",
    ),
    "email": (
        "What is {name}'s e-mail address?",
        "Which e-mail address does {name} use?",
        "How can {name} be reached by e-mail?",
    ),
    "address": ("Where does {name} live?", "What is {name}'s home address?", "At which address is {name} registered?"),
}


def draw_named(count: int, seed: int, locale: str, person) -> list[dict]:
    """``count`` people with unique names drawn by Faker ``locale``, each completed by ``person(name, first, female,
    rng, faker)``, every draw made with ``seed``."""
    from faker import Faker

    rng, faker = random.Random(seed), Faker(locale)
    faker.seed_instance(seed)
    people: list[dict] = []
    names: set[str] = set()
    while len(people) < count:
        female = rng.random() < 0.5
        first = faker.first_name_female() if female else faker.first_name_male()
        name = f"{first} {faker.last_name()}"
        if name in names:
            continue
        names.add(name)
        people.append(person(name, first, female, rng, faker))
    return people


def email_local(name: str, rng: random.Random) -> str:
    """An e-mail's local part from ``name``: ``first.last``, ``flast`` or ``firstlast`` with a number, lower case,
    ASCII letters, digits and dots only."""
    local = rng.choice(
        [name.replace(" ", "."), name[0] + name.split()[-1], name.replace(" ", "") + str(rng.randint(1, 99))]
    )
    return "".join(c for c in local.lower() if c in string.ascii_lowercase + string.digits + ".")


def draw_people(count: int, seed: int) -> list[dict]:
    """``count`` British people, unique names, their values drawn with ``seed``."""

    def british(name: str, first: str, female: bool, rng: random.Random, faker) -> dict:
        letters = "ABCEGHJKLMNPRSTWXYZ"  # the NINo prefix letters in use
        ni = f"{rng.choice(letters)}{rng.choice(letters)} " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(3))
        local = email_local(name, rng)
        return {
            "name": name,
            "female": female,
            "born": date_of_birth(faker, minimum_age=20, maximum_age=80),
            "ni": f"{ni} {rng.choice('ABCD')}",
            "phone": f"07{rng.randint(100, 999)} {rng.randint(0, 999_999):06d}",
            "email": f"{local}@{rng.choice(DOMAINS)}",
            "address": ", ".join(faker.address().splitlines()),
            "job": faker.job().lower(),
            "town": faker.city(),
            "hobby": rng.choice(HOBBIES),
        }

    return draw_named(count, seed, "en_GB", british)


BORN_BY = datetime.date(2026, 12, 7)
"""The day ages are counted to: Faker's ``date_of_birth`` counts them to today, and the same seed then gave other
birth dates on another day."""


def date_of_birth(faker, minimum_age: int, maximum_age: int, today: datetime.date = BORN_BY) -> datetime.date:
    """Faker's ``date_of_birth`` draw, its ages counted to ``today`` rather than the day it runs."""
    start = today.replace(year=today.year - maximum_age - 1)
    end = today.replace(year=today.year - minimum_age)
    born = faker.date_time_ad(start_datetime=start, end_datetime=end).date()
    return born if born != start else born + datetime.timedelta(days=1)


def write_set(out: Path, count: int = 200, seed: int = 0) -> dict[str, int]:
    """The rows of ``count`` people under ``out``; returns the rows per split."""
    return write_people(out, draw_people(count, seed), seed, "u", biography, fields_of, QUESTIONS)


def fields_of(person: dict) -> dict[str, str]:
    """A British person's PII values, as the QA rows answer them."""
    return {
        "birth_date": person["born"].strftime("%d/%m/%Y"),
        "ni_number": person["ni"],
        "phone": person["phone"],
        "email": person["email"],
        "address": person["address"],
    }


def biography(person: dict, rng: random.Random) -> tuple[str, str]:
    """A British person's biography, one of :data:`TEMPLATES`: (prompt, continuation)."""
    pron, pos = ("she", "her") if person["female"] else ("he", "his")
    born = person["born"]
    fill = {**person, "dob_long": f"{born.day} {born.strftime('%B %Y')}", "pron": pron, "Pron": pron.title()}
    prompt, continuation = TEMPLATES[rng.randrange(len(TEMPLATES))]
    return prompt.format(**fill, pos=pos), continuation.format(**fill, pos=pos)


def write_people(out: Path, people: list[dict], seed: int, prefix: str, biography, fields_of, questions) -> dict:
    """LUME Task2's layout for ``people``: per person one biography (``biography(person, rng)``) and one QA row per
    field of ``fields_of(person)``, with ``questions[field]`` (the question, then its paraphrases); 10 % of the
    people forgotten, 10 % held out, drawn with ``seed``; and ``pii.json``. Returns the rows per split."""
    count = len(people)
    rng = random.Random(seed + 1)
    order = rng.sample(range(count), count)
    forget, holdout = round(0.1 * count), round(0.1 * count)
    split_of = {
        i: "forget" if k < forget else "holdout" if k < forget + holdout else "retain" for k, i in enumerate(order)
    }
    rows: dict[str, list[dict]] = {"forget": [], "retain": [], "holdout": []}
    pii = []
    for i, person in enumerate(people):
        pid, split = f"{prefix}{i:05d}", split_of[i]
        fields = fields_of(person)
        prompt, continuation = biography(person, rng)
        ids = [f"{pid}sc1"]
        rows[split].append(
            {"id": ids[0], "input": prompt, "output": continuation, "task": "Task2", "person_id": pid}
        )  # fmt: skip
        for k, (field, (question, *paraphrases)) in enumerate(questions.items()):
            ids.append(f"{pid}qa{k}")
            rows[split].append(
                {
                    "id": ids[-1],
                    "input": question.format(name=person["name"]),
                    "output": fields[field],
                    "task": "Task2",
                    "person_id": pid,
                    "pii_field": field,
                    "paraphrases": [p.format(name=person["name"]) for p in paraphrases],
                }  # fmt: skip
            )
        pii.append({"person_id": pid, "split": split, "name": person["name"], "fields": fields, "records": ids})
    for split, found in rows.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found), encoding="utf-8")
    (out / "pii.json").write_text(json.dumps({"version": 1, "people": pii}, indent=2), encoding="utf-8")
    return {split: len(found) for split, found in rows.items()}


def cli(description: str, write_set, argv: list[str] | None = None) -> int:
    """``python SCRIPT OUT [--people N] [--seed S]``: ``write_set(OUT, N, S)`` into a new or empty directory."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("output_dir", help="a new directory")
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty")
    print(write_set(out, args.people, args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(__doc__.splitlines()[0], write_set, argv)


if __name__ == "__main__":
    sys.exit(main())
