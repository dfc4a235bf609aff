"""People and their PII read off LUME-style records, for data that has no ``pii.json`` side file."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from obliviate.data.records import PII_FIELDS, PersonPII, Record, owner_id, qa_index


def pii_field(record: Record) -> str | None:
    """The PII field a QA record asks for: ``meta["pii_field"]`` (any name), else LUME Task2's qa0..qa4 order."""
    if record.kind != "qa":
        return None
    if isinstance(named := record.meta.get("pii_field"), str) and named.strip():  # any field the data names
        return named.strip()
    index = qa_index(record.id)
    return PII_FIELDS[index] if record.task == "Task2" and index is not None and index < len(PII_FIELDS) else None


def _name_from_questions(questions: list[str]) -> str:
    """The longest capitalised run (not sentence-initial) that every question about the person contains."""
    common: set[str] | None = None
    for question in questions:
        question = re.sub(r"'s\b", ",", question)  # "Tiffi Magenta's Social Security Number" → two runs
        runs = {m[0] for m in re.finditer(r"\b[A-Z][\w.-]*(?:\s+[A-Z][\w.-]*)*", question) if m.start() > 0}
        common = runs if common is None else common & runs
    return max(sorted(common or ()), key=len, default="")


def pii_from_records(records: Iterable[Record], split: str = "") -> list[PersonPII]:
    """People and their PII read from LUME-style records, for data without a ``pii.json``.

    The person is ``meta["person_id"]`` or the id without its ``sc``/``qa`` suffix; the QA answers give the fields
    (Task2 qa0..qa4 = birth_date, ssn, phone, email, address, or ``meta["pii_field"]``); ``records`` lists all the
    person's ids (the biography included). The name is ``meta["name"]`` or read off the person's questions.
    """
    ids: dict[str, list[str]] = defaultdict(list)
    fields: dict[str, dict[str, str]] = defaultdict(dict)
    questions: dict[str, list[str]] = defaultdict(list)
    names: dict[str, str] = {}
    for record in records:
        key = owner_id(record)
        ids[key].append(record.id)
        if record.meta.get("name"):
            names[key] = str(record.meta["name"])
        if field := pii_field(record):
            fields[key][field] = record.output.strip()
            questions[key].append(record.input)
    return [
        PersonPII(key, split, names.get(key) or _name_from_questions(questions[key]), fields[key], tuple(ids[key]))
        for key in ids
        if fields[key]
    ]


def values_in_answers(records: Iterable[Record], people: Iterable[PersonPII]) -> list[Record]:
    """Each record re-cut so that every PII value of its person it holds lies in its answer, where a forget term
    scored on PII values can reach it: the prompt ends at the whitespace before the first value in it.

    A LUME biography row's prompt holds the birth date, the phone and the e-mail (its answer only the SSN and the
    address); an attacker continues the biography there (the leak measure's ``prefix`` probe), and a value the forget
    term never scores in that context stays as memorised there as it was (``docs/METHODS.md``, *The e-mails*). A
    document is cut the same way into a prompt and a continuation. The text is unchanged (``Record.text``); records
    whose prompt holds no value, QA rows (whose prompt is a question) and records of unknown people are returned as
    they are.
    """
    from obliviate.data.pii_match import find_value

    by_id = {p.person_id: p for p in people}
    out = []
    for record in records:
        person = by_id.get(owner_id(record))
        if record.kind == "qa" or person is None:
            out.append(record)
            continue
        text = record.text
        prompt_end = len(record.input) if record.kind != "document" else len(text)
        starts = [span[0] for f, v in person.fields.items() if (span := find_value(f, v, text[:prompt_end]))]
        # the prompt ends at the last whitespace before the first value
        cut = max((i for i in range(min(starts)) if text[i].isspace()), default=-1) if starts else -1
        if cut <= 0 or not text[:cut].strip():
            out.append(record)
            continue
        rest = text[cut + 1 :] if text[cut] == " " and not text[cut + 1 : cut + 2].isspace() else text[cut:]
        out.append(dataclasses.replace(record, input=text[:cut], output=rest, kind="completion"))
    return out


def mark_pii_spans(records: Iterable[Record], people: Iterable[PersonPII]) -> tuple[list[Record], int]:
    """Each record with ``meta["score_spans"]``: the character spans of its person's PII values in its output, in
    order, and ``meta["score_fields"]``: the field of each span.

    ``--forget_tokens pii`` scores only those tokens, so the forget term leaves the template words every person
    shares alone. Returns the records and how many hold at least one span (the rest score nothing).
    """
    from obliviate.data.pii_match import find_value

    by_id = {p.person_id: p for p in people}
    out, marked = [], 0
    for record in records:
        person = by_id.get(owner_id(record))
        spans: list[tuple[int, int, str]] = []
        for field, value in person.fields.items() if person else ():
            start = 0
            while (found := find_value(field, value, record.output[start:])) is not None:
                spans.append((start + found[0], start + found[1], field))
                start += found[1]
        marked += bool(spans)
        spans.sort()
        meta = {**record.meta, "score_spans": [(a, b) for a, b, _ in spans], "score_fields": [f for *_, f in spans]}
        out.append(dataclasses.replace(record, meta=meta))
    return out, marked


def find_pii_json(forget_dir) -> Path | None:
    """The ``pii.json`` side file of a data set: beside the forget set, or one level up (``obliviate synth``)."""
    base = Path(forget_dir) if Path(forget_dir).is_dir() else Path(forget_dir).parent
    for candidate in (base / "pii.json", base.parent / "pii.json"):
        if candidate.is_file():
            return candidate
    return None
