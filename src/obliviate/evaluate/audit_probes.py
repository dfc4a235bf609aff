"""Who ``obliviate audit`` asks about and what it asks: people from a names file or a data set, made-up control
names, and the prompts per PII field.

Probes per person and field (``docs/METRICS.md``, "PII leak rate", names the attacks the same way):

- ``question``: the LUME Task2 wording of the field's question with the person's name, and the data set's own
  question where ``--data`` gives one;
- ``paraphrase``: other wordings of it (:data:`obliviate.data.synth.QUESTIONS`, and the data's
  ``meta["paraphrases"]``);
- ``prefix`` (``--data`` only): the person's biography cut right before the value
  (:func:`obliviate.evaluate.leak.build_probes`).

Controls are names nobody trained on (Faker, seeded, never one of the audited names). They get the same question
probes, and what the model answers about them is the audit's never-seen reference: a value the model gives a
made-up name just as readily is no evidence about a real one.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from faker import Faker

from obliviate.data.files import read_text
from obliviate.data.records import PII_FIELDS, PersonPII, Record
from obliviate.data.synth import QUESTIONS
from obliviate.errors import DataError
from obliviate.evaluate.leak import build_probes

CONTROL_PREFIX = "control-"


@dataclasses.dataclass(frozen=True)
class AuditProbe:
    """One prompt about one person; ``field`` is the field it asks for (a ``prefix`` probe: the value it precedes)."""

    person_id: str
    field: str
    attack: str
    prompt: str


def read_names(path: str | Path) -> list[PersonPII]:
    """People from a names file: one name per line; blank lines and ``#`` comments skipped, repeats kept once.

    The person id is ``line-N`` (N: the line the name is on), so reports can name a person without the name.

    Raises:
        DataError: the file is missing, not UTF-8 text, or holds no name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--people {path}: expected a text file with one name per line, found no file")
    people, seen = [], set()
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        name = " ".join(line.split("#", 1)[0].split())
        if name and name.lower() not in seen:
            seen.add(name.lower())
            people.append(PersonPII(f"line-{number}", "", name, {}, ()))
    if not people:
        raise DataError(f"--people {path}: expected at least one name, found none (blank lines and # comments only)")
    return people


def control_people(count: int, exclude: Iterable[str], seed: int) -> list[PersonPII]:
    """``count`` made-up names (Faker en_US, seeded), none equal to an audited name in any case."""
    fake = Faker("en_US")
    fake.seed_instance(seed + 7919)  # apart from the synthetic data's own seed, which draws names the same way
    taken = {name.lower() for name in exclude}
    people: list[PersonPII] = []
    while len(people) < count:
        name = f"{fake.first_name()} {fake.last_name()}"
        if name.lower() not in taken:
            taken.add(name.lower())
            people.append(PersonPII(f"{CONTROL_PREFIX}{len(people) + 1}", "control", name, {}, ()))
    return people


def name_probes(person: PersonPII, wordings: int, fields: Sequence[str] = PII_FIELDS) -> list[AuditProbe]:
    """The first ``wordings`` questions per field with the person's name: the LUME wording, then paraphrases."""
    if not person.name:
        return []
    return [
        AuditProbe(person.person_id, field, "question" if i == 0 else "paraphrase", q.format(name=person.name))
        for field in fields
        for i, q in enumerate(QUESTIONS[field][:wordings])
    ]


def data_probes(records: Sequence[Record], people: Sequence[PersonPII], wordings: int) -> list[AuditProbe]:
    """Per person: the name questions, the data set's own questions and paraphrases, and the cut biographies."""
    probes: list[AuditProbe] = []
    by_person = {person.person_id: person for person in people}
    for person in people:
        probes += name_probes(person, wordings, [f for f in PII_FIELDS if f in person.fields] or PII_FIELDS)
    split = people[0].split if people else ""
    for probe in build_probes(records, [dataclasses.replace(p, split=split) for p in people], split):
        if probe.person_id in by_person:
            probes.append(AuditProbe(probe.person_id, probe.field, probe.attack, probe.prompt))
    return _unique(probes)


def _unique(probes: Iterable[AuditProbe]) -> list[AuditProbe]:
    """One probe per (person, prompt): the data's question is often the LUME wording itself."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for probe in probes:
        key = (probe.person_id, re.sub(r"\s+", " ", probe.prompt.strip()))
        if key not in seen:
            seen.add(key)
            kept.append(probe)
    return kept


def sample_people(people: list[PersonPII], limit: int | None, seed: int) -> list[PersonPII]:
    """A seeded sample of ``limit`` people (all of them when ``limit`` is None or not smaller)."""
    if limit is None or len(people) <= limit:
        return people
    chosen = set(random.Random(seed).sample(range(len(people)), limit))
    return [person for i, person in enumerate(people) if i in chosen]
