"""The one internal record type every data layout is turned into."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

KINDS = ("completion", "qa", "document")
"""``completion``: ``input`` is a prefix and ``output`` its continuation (regurgitation).
``qa``: ``input`` is a question and ``output`` a short answer (knowledge).
``document``: ``input`` is a whole text and ``output`` is empty (perplexity, membership inference)."""

PII_FIELDS = ("birth_date", "ssn", "phone", "email", "address")
"""PII fields in the order of the LUME Task2 QA suffixes qa0..qa4."""

NAME_BUILT_FIELDS = ("email",)
"""Fields whose values the data builds from the person's name (an e-mail's local part): contrast's stranger copies
build theirs from the stranger's name (``train/relabel.py`` ``fake_pairs``)."""

TEMPLATE_CODE = len(PII_FIELDS) + 2
"""The field code (``TokenBatch.spans``) of an answer token outside every PII value: the words a person's record
shares with the template, its name included. Scored only where a record asks with ``meta["score_template"]``
(``contrast --stranger``); eos never is one. Codes ``1..len(PII_FIELDS)`` are the fields, the next any other."""

_SUFFIX = re.compile(r"(sc|qa)(\d+)$")


@dataclass(frozen=True)
class Record:
    """One example of a forget, retain or holdout set.

    Args:
        id: unique inside its set.
        input: the prompt (prefix, question) or, for documents, the whole text.
        output: the continuation or answer; empty for documents.
        task: a task name such as ``Task2``; ``default`` when the data has none.
        kind: one of :data:`KINDS`.
        meta: optional extras, e.g. ``person_id``, ``pii_field``, ``paraphrases``.
    """

    id: str
    input: str
    output: str
    task: str = "default"
    kind: str = "completion"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def text(self) -> str:
        """The full training text: prompt, a separating space where needed, then the answer."""
        return self.input + answer_prefix(self) + self.output if self.output else self.input

    def to_json(self) -> dict[str, Any]:
        row = {"id": self.id, "input": self.input, "output": self.output, "task": self.task}
        row.update(self.meta)
        return row


def answer_prefix(record: Record) -> str:
    """The separator between prompt and answer: one space unless either side already has whitespace.

    Generation starts right after the raw prompt (as the official SemEval scorer does), so the answer the model
    learns must begin with the space a continuation would naturally begin with.
    """
    if not record.output or not record.input or record.input[-1].isspace() or record.output[0].isspace():
        return ""
    return " "


def kind_from_id(record_id: str) -> str | None:
    """LUME / SemEval ids end in ``sc<digit>`` (completion) or ``qa<digit>`` (question)."""
    match = _SUFFIX.search(record_id)
    if match is None:
        return None
    return "completion" if match.group(1) == "sc" else "qa"


def qa_index(record_id: str) -> int | None:
    """The digit of a ``qa<digit>`` id suffix, or None."""
    match = _SUFFIX.search(record_id)
    return int(match.group(2)) if match and match.group(1) == "qa" else None


def person_key(record_id: str) -> str:
    """The id with its ``sc<d>`` / ``qa<d>`` suffix removed: the person (or document) the row belongs to."""
    return _SUFFIX.sub("", record_id)


def owner_id(record: Record) -> str:
    """The person (or document) ``record`` is about: ``meta["person_id"]``, else its id without the suffix."""
    return str(record.meta.get("person_id") or person_key(record.id))


@dataclass(frozen=True)
class PersonPII:
    """One person whose PII is tracked (synthetic ``pii.json``, or read back from LUME-style QA rows).

    ``fields`` maps each of :data:`PII_FIELDS` the person has to its QA answer form; ``records`` lists the ids of
    the person's rows.
    """

    person_id: str
    split: str
    name: str
    fields: dict[str, str]
    records: tuple[str, ...]
