"""The relearning attack: a few steps of plain fine-tuning on a copy of the model, then the same probes.

Unlearning that only hides knowledge comes undone quickly: fine-tuning on unrelated text restored most of what RMU
removed (Łucki et al. 2024, arXiv:2409.18025), and training on some facts brought back held-out ones (Deeb & Roger
2024, arXiv:2410.08827). Three sources of relearning data, each for ``k`` AdamW steps of the mean answer-token NLL:

- ``forget_half``: half of each forget person's records. Records that hold values of two or more PII fields (a
  biography) are never trained on, since they would teach the held-back values directly; the single-field records
  (QA rows, records with no value) are shuffled per person and half of them trained on. The probed set is the other
  half, and only the PII fields that no trained record holds are probed.
- ``retain``: retain records only, i.e. benign fine-tuning on other people.
- ``forget_nonpii``: the forget people's sentences that hold none of their PII values (the name may appear), cut
  from every forget record, as documents scored on every token. Data whose sentences all hold a value has none.

Everything trains a ``copy.deepcopy`` of the model in memory; the evaluated model is never modified.
"""

from __future__ import annotations

import copy
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from obliviate.config import RELEARN_SOURCES
from obliviate.data.batching import collate, encode_record
from obliviate.data.pii_match import find_value
from obliviate.data.records import PersonPII, Record, owner_id
from obliviate.evaluate.data import EvalData, people_of
from obliviate.evaluate.leak import Redactor
from obliviate.losses.common import mean_nll

SOURCES = RELEARN_SOURCES
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class RelearnSource:
    """One source's training records and the data its attacked model is probed on.

    ``probe`` is None when the whole evaluation data is probed; ``note`` says why ``records`` is empty.
    """

    name: str
    records: list[Record]
    probe: EvalData | None = None
    note: str = ""
    details: dict[str, int] = field(default_factory=dict)


def _groups(records: Sequence[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[owner_id(record)].append(record)
    return groups


def _fields_held(record: Record, person: PersonPII | None) -> set[str]:
    if person is None:
        return set()
    return {name for name, value in person.fields.items() if find_value(name, value, record.text)}


def forget_half(data: EvalData, seed: int) -> RelearnSource:
    """``forget_half``: the records to train on and the held-back data to probe (see the module docstring)."""
    people = {p.person_id: p for p in people_of(data.people, "forget")}
    rng = random.Random(seed)
    trained: list[Record] = []
    held: list[Record] = []
    probed_people: list[PersonPII] = []
    for key, group in _groups(data.splits["forget"]).items():
        person = people.get(key)
        single = [r for r in group if len(_fields_held(r, person)) <= 1]
        rng.shuffle(single)
        train = single[: len(single) // 2]
        trained += train
        held += [r for r in group if r not in train]
        if person is not None:
            taught = set().union(*(_fields_held(r, person) for r in train)) if train else set()
            kept = {name: value for name, value in person.fields.items() if name not in taught}
            ids = tuple(r.id for r in group if r not in train)
            if kept:
                probed_people.append(replace(person, fields=kept, records=ids))
    if not trained:
        return RelearnSource("forget_half", [], note="no forget person has two or more single-field records")
    others = [p for p in data.people if p.person_id not in people]
    probe = replace(data, splits={**data.splits, "forget": held}, people=others + probed_people, notes=[])
    pairs = sum(len(p.fields) for p in probed_people)
    details = {"trained_records": len(trained), "probed_records": len(held), "probed_pairs": pairs}
    return RelearnSource("forget_half", trained, probe, details=details)


def retain_source(data: EvalData) -> RelearnSource:
    """``retain``: every retain record (benign fine-tuning)."""
    records = list(data.splits.get("retain") or [])
    note = "" if records else "no retain set was given (--retain_dir)"
    return RelearnSource("retain", records, note=note, details={"trained_records": len(records)})


def nonpii_sentences(data: EvalData) -> RelearnSource:
    """``forget_nonpii``: the forget people's sentences that hold none of their PII values, as documents."""
    people = {p.person_id: p for p in people_of(data.people, "forget")}
    if not people:
        return RelearnSource("forget_nonpii", [], note="the forget set has no people with known PII values")
    sentences: dict[str, None] = {}
    for key, group in _groups(data.splits["forget"]).items():
        person = people.get(key)
        if person is None:
            continue
        values_only = Redactor([replace(person, name="")])  # the person's values (any surface form), not the name
        for record in group:
            for sentence in _SENTENCE_END.split(record.text):
                sentence = sentence.strip()
                if len(sentence.split()) >= 3 and values_only.redact(sentence) == sentence:
                    sentences[sentence] = None
    records = [Record(f"nonpii-{i}", s, "", kind="document") for i, s in enumerate(sentences)]
    note = "" if records else "every sentence of the forget people's records holds one of their PII values"
    return RelearnSource("forget_nonpii", records, note=note, details={"trained_records": len(records)})


def build_sources(data: EvalData, names: Sequence[str], seed: int) -> list[RelearnSource]:
    builders = {
        "forget_half": lambda: forget_half(data, seed),
        "retain": lambda: retain_source(data),
        "forget_nonpii": lambda: nonpii_sentences(data),
    }
    return [builders[name]() for name in names]


def _batches(records: Sequence[Record], batch_size: int, seed: int) -> Iterator[list[Record]]:
    """Endless seeded passes over ``records``, reshuffled each pass, ``batch_size`` rows at a time."""
    rng = random.Random(seed)
    while True:
        order = list(records)
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def relearn(
    model,
    tokenizer,
    records: Sequence[Record],
    steps: Sequence[int],
    *,
    lr: float,
    batch_size: int,
    max_length: int,
    seed: int,
) -> Iterator[tuple[int, torch.nn.Module]]:
    """Fine-tune a deep copy of ``model`` on ``records`` and yield ``(k, copy)`` after each ``k`` of ``steps``.

    One run of ``max(steps)`` AdamW steps (no weight decay, gradient norm clipped at 1, constant rate) serves every
    ``k``: the copy yielded at ``k`` has had exactly ``k`` steps. The caller evaluates it before asking for the next.
    """
    attacked = copy.deepcopy(model)
    attacked.train()
    params = [p for p in attacked.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(attacked.parameters()).device
    torch.manual_seed(seed)
    batches = _batches(records, batch_size, seed)
    done = 0
    for k in sorted(set(steps)):
        while done < k:
            batch = collate([encode_record(tokenizer, r, max_length) for r in next(batches)], tokenizer.pad_token_id)
            batch = batch.to(device)
            logits = attacked(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = mean_nll(logits.float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            done += 1
        attacked.eval()
        yield k, attacked
        attacked.train()
    del optimizer
