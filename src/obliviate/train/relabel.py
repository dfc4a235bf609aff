"""Relabelled forget sets: what the model would say about a stranger, in place of what it memorised.

The ``relabel`` objective descends (nothing ascends, so nothing collapses) on forget records whose answers are
replaced by **name-swap targets**, after the "generic predictions" of Eldan & Russinovich 2023 (arXiv:2310.02238):

1. in each forget prompt, the person's name is replaced by a fresh fake name the data has never seen;
2. the starting model continues that prompt (greedy): this is how it answers about a stranger,
   template words, made-up birth dates, SSNs and e-mails in the data's own formats included;
3. the fake name is swapped back for the real one in the answer (``jordan.blake12@…`` → ``amy.sellers12@…``), so
   that e-mail local parts and greetings stay consistent with the person, as a model that never saw them would
   write them;
4. an answer that holds any real PII value of the person, or a real SSN / phone of anyone in the data, is drawn
   again; a record still without a clean answer keeps fake values in its PII spans (format-preserving draws).

``draws`` answers are made per record; epoch ``e`` trains on draw ``e mod draws``, a fresh stranger each time, so
that no single made-up value becomes a new memorised fact. Records of people without a known name (no
``pii.json`` and no Task2 questions) get the fake-value relabelling of their PII spans only.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

from faker import Faker

from obliviate.data.pii_match import contains_value, find_value
from obliviate.data.records import PersonPII, Record

SWAP_TRIES = 4
"""Generation rounds per record before an answer that kept a real value falls back to fake-value relabelling."""
TRAINING_FAKE_SPLIT = "retain"
"""The split whose addresses build the fake addresses a model is trained on (``CandidateSampler(address_split=)``):
the people the model keeps, never the forget people, whose streets a fake would teach again."""


@dataclasses.dataclass(frozen=True)
class RelabelStats:
    records: int
    name_swapped: int
    fake_values: int
    untouched: int


def _name_parts(name: str) -> list[str]:
    return [part for part in re.split(r"[\s]+", name.strip()) if len(part) > 1]


def _word(part: str) -> re.Pattern[str]:
    """``part`` as a whole word, also inside e-mail local parts (``blake12``): no letter on either side."""
    return re.compile(rf"(?<![A-Za-z]){re.escape(part)}(?![A-Za-z])", re.IGNORECASE)


def _same_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template.islower():
        return word.lower()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_name(text: str, old: str, new: str) -> str:
    """``old``'s parts replaced by ``new``'s, part by part and keeping each occurrence's case."""
    old_parts, new_parts = _name_parts(old), _name_parts(new)
    if not old_parts:
        return text
    if len(new_parts) != len(old_parts):  # a different shape: map the first and the last part only
        new_parts = [new_parts[0], *([new_parts[-1]] * (len(old_parts) - 1))] if new_parts else old_parts
    for part, replacement in sorted(zip(old_parts, new_parts), key=lambda p: -len(p[0])):
        text = _word(part).sub(lambda m, r=replacement: _same_case(m.group(0), r), text)
    return text


class StrangerNames:
    """Fresh fake names that share no part with any real name of the data."""

    def __init__(self, real_names: Sequence[str], seed: int) -> None:
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.taken = {part.lower() for name in real_names for part in _name_parts(name)}

    def draw(self, like: str) -> str:
        for _ in range(1000):
            first, last = self.fake.first_name(), self.fake.last_name()
            if first.lower() not in self.taken and last.lower() not in self.taken and first != last:
                parts = _name_parts(like)
                return f"{first} {last}" if len(parts) != 1 else first
        raise RuntimeError("could not draw a fresh name")  # 1000 collisions: the name pool is exhausted


class RecombinedNames:
    """Names of people who do not exist but could, each part as familiar to the model as the part it stands in for
    would be to a model that never saw its owner (:func:`fake_pairs` with ``stranger``).

    A first or last name that some *other* person of the training split (:data:`TRAINING_FAKE_SPLIT`) also has is
    one the model knows with or without its owner: it becomes a part of another training person (a common last
    name, say). A part nobody else in the training split has is one the model would never have seen: it becomes a
    fresh one, a name from Faker's lists that no person of the data has, and, given the ``tokenizer``, one cut into
    as many pieces as the part it stands in for (as a word and in lower case, as e-mails write it): a data set's own
    tokenizer cuts names it never saw into several pieces, and their words and e-mails are then a stranger's
    stranger's. Never a real person's full name, nor a part of the person's own name. So the words around the
    stranger's name, and an e-mail built from it, are about as likely as they would be for the person had the model
    never seen them (``docs/METHODS.md``, *The e-mails*: on LUME first names are nearly all unique and last names all
    shared).
    """

    def __init__(self, people: Sequence[PersonPII], seed: int, tokenizer=None) -> None:
        named = [p for p in people if p.name and len(_name_parts(p.name)) >= 2]
        lenders = [p for p in named if p.split == TRAINING_FAKE_SPLIT] or named
        self.pools = {position: sorted({_part(p.name, position) for p in lenders}) for position in _POSITIONS}
        self.counts = {position: Counter(_part(p.name, position).lower() for p in lenders) for position in _POSITIONS}
        self.lender_names = {" ".join(_name_parts(p.name)).lower() for p in lenders}
        self.real = {" ".join(_name_parts(p.name)).lower() for p in named}
        self.rng = random.Random(seed)
        taken = {part.lower() for p in people if p.name for part in _name_parts(p.name)}
        self.fresh = {
            position: [n for n in _faker_names(position) if n.lower() not in taken] for position in _POSITIONS
        }
        self.tokenizer = tokenizer
        self._shapes: dict[str, tuple[int, int]] = {}
        self._matching: dict[tuple[str, tuple[int, int]], list[str]] = {}
        self.fallback = StrangerNames([p.name for p in people if p.name], seed)

    def known(self, like: str, position: str) -> bool:
        """Whether ``like``'s first or last name is one a training person other than ``like`` has."""
        parts = _name_parts(like)
        if not parts:
            return False
        own = 1 if " ".join(parts).lower() in self.lender_names else 0
        return self.counts[position][_part(like, position).lower()] - own > 0

    def shape(self, part: str) -> tuple[int, int]:
        """Pieces of ``part`` as a word after a space and in lower case (``(0, 0)`` without a tokenizer)."""
        if self.tokenizer is None:
            return (0, 0)
        if part not in self._shapes:
            count = lambda text: len(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
            self._shapes[part] = (count(" " + part), count(part.lower()))
        return self._shapes[part]

    def fresh_part(self, position: str, like: str) -> str | None:
        """A part nobody in the data has, cut as ``like`` is (the closest cut there is)."""
        pool = self.fresh[position]
        if not pool:
            return None
        want = self.shape(like)
        key = (position, want)
        if key not in self._matching:
            distance = {n: sum(abs(a - b) for a, b in zip(self.shape(n), want)) for n in pool}
            best = min(distance.values())
            self._matching[key] = [n for n in pool if distance[n] == best]
        return self.rng.choice(self._matching[key])

    def draw(self, like: str) -> str:
        parts = _name_parts(like)
        if not parts:  # no part of two letters or more: nothing to match
            return self.fallback.draw(like)
        own = {part.lower() for part in parts}
        for _ in range(100):
            chosen = {}
            for position, pool in self.pools.items():
                known = pool and self.known(like, position)
                pick = self.rng.choice(pool) if known else self.fresh_part(position, _part(like, position))
                if pick is None:
                    break
                chosen[position] = pick
            if len(chosen) < 2:
                break
            first, last = chosen["first"], chosen["last"]
            name = f"{first} {last}"
            if (
                first.lower() not in own
                and last.lower() not in own
                and name.lower() not in self.real
                and first != last
            ):
                return name if len(parts) != 1 else first
        return self.fallback.draw(like)


_POSITIONS = ("first", "last")


def _part(name: str, position: str) -> str:
    """``name``'s first or last part (``position``); ``name`` has at least one."""
    parts = _name_parts(name)
    return parts[0] if position == "first" else parts[-1]


def _faker_names(position: str) -> list[str]:
    """Faker's en_US first or last names, sorted."""
    from faker.providers.person.en_US import Provider

    names = Provider.first_names if position == "first" else Provider.last_names
    return sorted({name for name in names if len(name) > 1})


def holds_real_value(text: str, person: PersonPII, known) -> bool:
    """Whether ``text`` holds a PII value of ``person`` or of anyone in ``known`` (a
    :class:`~obliviate.evaluate.leak.Redactor` of every person's values, names left out), in any surface form the
    leak rate and the redactor recognise: its digits run on into more digits included."""
    if any(contains_value(field, value, text) for field, value in person.fields.items()):
        return True
    return bool(known.fields_in(text))


def fake_values(record: Record, person: PersonPII, fakes: dict[str, str]) -> Record:
    """``record`` with every span of the person's PII values (prompt and answer) replaced by ``fakes[field]``,
    written in the surface form the span has (``409-91-0019`` → ``521-37-8804``)."""
    from obliviate.data.fakes import render_like

    text = {"input": record.input, "output": record.output}
    for field, value in person.fields.items():
        if field not in fakes:
            continue
        for side in ("input", "output"):
            for _ in range(8):  # each occurrence, in whatever surface form it takes
                span = find_value(field, value, text[side])
                if span is None:
                    break
                surface = text[side][span[0] : span[1]]
                fake = render_like(field, fakes[field], value, surface) or fakes[field]
                text[side] = text[side][: span[0]] + fake + text[side][span[1] :]
            if field == "address":
                text[side] = address_parts_replaced(text[side], value, fakes[field])
    return dataclasses.replace(record, input=text["input"], output=text["output"])


def fakes_of(sampler, person: PersonPII, draws: int, d: int) -> dict[str, str]:
    """Draw ``d`` of each of ``person``'s values (a field with no fake at all is left out)."""
    return {f: c[d % len(c)] for f in person.fields if (c := sampler.candidates(person, f, draws))}


def keeps_a_value(record: Record, person: PersonPII) -> bool:
    """Whether a copy of ``record`` with fakes written in still holds one of ``person``'s values, or an address's
    street line, anywhere (a field the sampler had no fake for, a surface form not found)."""
    from obliviate.evaluate.leak import Redactor

    return bool(Redactor([person], names=False).fields_in(record.input + "\n" + record.output))


ADDRESS_WINDOW = 48
"""Characters past the true address's own length in which a reworded address's parts are looked for."""


def address_parts_replaced(text: str, value: str, fake: str) -> str:
    """``text`` with the parts of a true address it words otherwise than ``value`` each replaced by the fake's part.

    A biography may write the QA answer's ``12 Oak Street, #9, Springfield, IL, 62701.`` as ``12 Oak Street, Apt.
    #9, Springfield, …``, ``…, Suite A, …`` for ``STE A``, ``… in Springfield`` or without the unit: the whole value
    is then not found, and the copy kept the true street and place (19 of LUME Task2's 250 forget biographies).
    Here the street line is found on its own, then the other parts within the address's reach after it: city, state
    and ZIP in any order (layouts differ), a unit only between the street and the first of those; each found part
    becomes the fake's part in the same position of the value (a unit the fake lacks: the true unit's characters
    redrawn in their classes). Parts not found are left; a text without the street line is returned as it is."""
    from obliviate.data.fakes import format_preserving

    true_parts = [part.strip() for part in value.strip().rstrip(".").split(",") if part.strip()]
    fake_parts = [part.strip() for part in fake.strip().rstrip(".").split(",") if part.strip()]
    if len(true_parts) < 2 or len(fake_parts) < 2:
        return text
    street = find_value("address", true_parts[0], text)
    if street is None:
        return text
    tail = min(3, len(true_parts) - 1, len(fake_parts) - 1)
    units = true_parts[1 : len(true_parts) - tail]
    fake_units = fake_parts[1 : len(fake_parts) - tail]
    rng = random.Random(fake)
    end = street[0] + len(value) + ADDRESS_WINDOW
    found = [(street, fake_parts[0])]
    place = []
    for true, stand_in in zip(true_parts[-tail:], fake_parts[-tail:]):  # in any order: "ST, ZIP, City" layouts
        span = _part_span(true, text, street[1], end)
        if span is not None and not any(span[0] < other[1] and other[0] < span[1] for other, _ in place):
            place.append((span, stand_in))
    unit_end = min((span[0] for span, _ in place), default=min(end, street[1] + ADDRESS_WINDOW))
    position = street[1]
    for i, true in enumerate(units):
        span = _part_span(true, text, position, unit_end)
        if span is None or not _UNIT_BEFORE.fullmatch(text[position : span[0]]):
            continue
        if not (_UNIT_AFTER.match(text, span[1]) or not text[span[1] : unit_end].strip()):
            continue  # "9 blocks from the lake" is no unit
        try:
            stand_in = fake_units[i] if i < len(fake_units) else format_preserving(true, rng)
        except ValueError:  # a unit of no letter or digit: nothing to redraw
            continue
        found.append((span, stand_in))
        position = span[1]
    for (start, stop), stand_in in sorted(found + place, reverse=True):
        text = text[:start] + _edged_like(text[start:stop], stand_in) + text[stop:]
    return text


_UNIT_BEFORE = re.compile(r"[\s,]*(?:(?:apt|apartment|suite|ste|unit|room|rm|floor|fl|no)\.?[\s,]*)?", re.IGNORECASE)
"""What may stand between the street line (or the unit before) and a unit: separators and one unit word."""
_UNIT_AFTER = re.compile(r"\s*(?:[,.;)]|$)")
"""What follows a unit: a separator or the end of the text (else the place, checked apart)."""


def _part_span(part: str, text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where ``part`` of an address stands in ``text[start:end]``: its own characters, case and all, as whole words
    (any run of spaces for a space). A state written ``IN`` or ``OR`` is not the word "in" or "or", nor a unit ``9``
    the "9" of "9 blocks away"."""
    pattern = r"\s+".join(re.escape(word) for word in part.split())
    if part[:1].isalnum():
        pattern = r"(?<![\w])" + pattern
    if part[-1:].isalnum():
        pattern += r"(?![\w])"
    found = re.compile(pattern).search(text, start, end)
    return found.span() if found else None


def _edged_like(surface: str, stand_in: str) -> str:
    """``stand_in`` without the leading or trailing punctuation ``surface`` does not have (a match of ``#9`` is the
    text's ``9``: its ``#`` stands before it)."""
    lead = len(stand_in) - len(stand_in.lstrip(string.punctuation))
    if lead and not surface.startswith(stand_in[:lead]):
        stand_in = stand_in[lead:]
    trail = len(stand_in) - len(stand_in.rstrip(string.punctuation))
    if trail and not surface.endswith(stand_in[len(stand_in) - trail :]):
        stand_in = stand_in[: len(stand_in) - trail]
    return stand_in


def relabelled_draws(
    model, tokenizer, forget: list[Record], people: list[PersonPII], *, draws: int, seed: int
) -> tuple[list[list[Record]], RelabelStats]:
    """``draws`` relabelled copies of ``forget`` (same order, same ids), and how each record was relabelled.

    ``people`` is every person of the data (all splits): their names are never drawn as strangers, and no answer
    may hold any of their PII values.
    """
    from obliviate.data.fakes import CandidateSampler
    from obliviate.evaluate.leak import Redactor
    from obliviate.evaluate.passes import generate

    by_id = {p.person_id: p for p in people}
    known = Redactor(people, names=False)  # every real value: a stranger's answer may hold none of them
    names = StrangerNames([p.name for p in people if p.name], seed)
    sampler = CandidateSampler(people, seed=seed + 1, address_split=TRAINING_FAKE_SPLIT)
    owners = [person_of(r, by_id) for r in forget]
    swappable = [i for i, person in enumerate(owners) if person is not None and person.name and forget[i].output]
    answers: dict[tuple[int, int], str] = {}
    # a stranger's answer is about as long as the memorised one: its length plus a margin bounds the generation
    budget = {i: 8 + len(tokenizer(forget[i].output, add_special_tokens=False)["input_ids"]) for i in swappable}
    for attempt in range(SWAP_TRIES):
        todo = [(i, d) for i in swappable for d in range(draws) if (i, d) not in answers]
        if not todo:
            break
        stranger = {key: names.draw(owners[key[0]].name) for key in todo}
        prompts = [swap_name(forget[i].input, owners[i].name, stranger[(i, d)]) for i, d in todo]
        longest = max(budget[i] for i, _ in todo)
        greedy, _ = generate(
            model, tokenizer, prompts, max_new_tokens=longest, seed=seed + attempt, show_progress=False, desc="relabel"
        )
        for (i, d), generated in zip(todo, greedy):
            answer = swap_name(_first_line_like(generated, forget[i].output), stranger[(i, d)], owners[i].name)
            if answer.strip() and not holds_real_value(answer, owners[i], known):
                answers[(i, d)] = answer
    faked: dict[tuple[int, int], Record] = {}
    for i, record in enumerate(forget):  # a record whose values some draw cannot all replace is left out of every one
        person = owners[i]
        if person is None or not person.fields or all((i, d) in answers for d in range(draws)):
            continue
        copies = {d: fake_values(record, person, fakes_of(sampler, person, draws, d)) for d in range(draws)}
        if not any(keeps_a_value(copy, person) for copy in copies.values()):
            faked.update({(i, d): copy for d, copy in copies.items()})
        else:  # its stranger answers go too: a draw left as it is would train on the true record
            for d in range(draws):
                answers.pop((i, d), None)
    out: list[list[Record]] = []
    counts = {"name_swapped": 0, "fake_values": 0, "untouched": 0}
    for d in range(draws):
        copy = []
        for i, record in enumerate(forget):
            if (i, d) in answers:
                copy.append(dataclasses.replace(record, output=answers[(i, d)]))
                counts["name_swapped"] += d == 0
            elif (i, d) in faked:
                copy.append(faked[(i, d)])
                counts["fake_values"] += d == 0
            else:  # no known person, or a value no fake could be drawn for would stay true: left as it is
                copy.append(record)
                counts["untouched"] += d == 0
        out.append(copy)
    return out, RelabelStats(records=len(forget), **counts)


def _first_line_like(generated: str, original: str) -> str:
    """A generated answer cut the way the original is: its first line when the original is one line."""
    return generated if "\n" in original else generated.strip("\n").split("\n", 1)[0]


def person_of(record: Record, people: dict[str, PersonPII]) -> PersonPII | None:
    from obliviate.data.records import owner_id

    return people.get(owner_id(record))


def known_people(forget_dir, records: Sequence[Record] | Mapping[str, Sequence[Record]]) -> list[PersonPII]:
    """Everyone whose PII the data names: ``pii.json`` beside the forget set (synthetic data), else the Task2 QA
    answers of ``records``. Given as ``{split: records}``, each person carries the split their rows came from, as
    ``pii.json``'s people do: fakes then draw from the person's own split (:class:`~obliviate.data.fakes.
    CandidateSampler`), the same way in training, in the stop rule and in evaluation."""
    from obliviate.data.pii import find_pii_json, pii_from_records
    from obliviate.data.synth import load_pii

    pii_file = find_pii_json(forget_dir)
    if pii_file is not None:
        return list(load_pii(pii_file))
    if isinstance(records, Mapping):
        return [person for split, rows in records.items() for person in pii_from_records(rows, split=split)]
    return pii_from_records(records)


def fake_pairs(
    forget: list[Record], people: list[PersonPII], *, draws: int, seed: int, stranger: bool = False, tokenizer=None
) -> tuple[list[Record], list[list[Record]]]:
    """The forget records scored on their PII values only (each re-cut so that its values lie in its answer,
    :func:`~obliviate.data.pii.values_in_answers`), and ``draws`` copies of them with fresh fake values,
    each scored on its fakes: row ``i`` of a copy is row ``i`` of the forget set with other values.

    With ``stranger``, each copy is also about a stranger: the person's name, wherever it stands (prompt, answer),
    becomes a name nobody has, each part as familiar as the person's own would be without them
    (:class:`RecombinedNames`, one per person and draw, its fresh parts cut by ``tokenizer`` as the person's are; kept
    in ``meta["stranger"]``), the fake e-mail is built from
    that name, and both sides also score the answer's other tokens (:data:`~obliviate.data.records.TEMPLATE_CODE`):
    the same words after a stranger's name are how likely they are for someone the model never saw. A record
    without a known PII value scores nothing on either side (it contributes no gradient).
    """
    from obliviate.data.fakes import CandidateSampler
    from obliviate.data.pii import mark_pii_spans, values_in_answers

    by_id = {p.person_id: p for p in people}
    forget = values_in_answers(forget, people)
    sampler = CandidateSampler(people, seed=seed + 2, address_split=TRAINING_FAKE_SPLIT)
    names = RecombinedNames(people, seed + 3, tokenizer) if stranger else None
    marked, _ = mark_pii_spans(forget, people)
    if stranger:
        marked = [_with_template(r) if r.meta["score_spans"] else r for r in marked]
    copies = []
    for d in range(draws):
        copy, strangers = [], {}
        for record in forget:
            person = person_of(record, by_id)
            if person is None or not person.fields:
                copy.append(dataclasses.replace(record, meta={**record.meta, "score_spans": []}))
                continue
            fakes = fakes_of(sampler, person, draws, d)
            name = None
            if names is not None and person.name:
                if person.person_id not in strangers:
                    strangers[person.person_id] = names.draw(person.name)
                name = strangers[person.person_id]
                if "email" in person.fields:  # an e-mail built from the stranger's name, as the data builds them
                    renamed = dataclasses.replace(
                        person,
                        person_id=f"{person.person_id}~{name}",
                        name=name,
                        fields={"email": swap_name(person.fields["email"], person.name, name)},
                    )
                    drawn = sampler.candidates(renamed, "email", draws, own=True)
                    if drawn:
                        fakes["email"] = drawn[d % len(drawn)]
            faked = fake_values(record, person, fakes)
            if keeps_a_value(faked, person):  # a value no fake could be drawn for would stay true: score nothing
                copy.append(dataclasses.replace(record, meta={**record.meta, "score_spans": []}))
                continue
            stand_in = dataclasses.replace(person, fields=dict(fakes))
            if name is not None:
                swapped = {side: swap_name(getattr(faked, side), person.name, name) for side in ("input", "output")}
                faked = dataclasses.replace(faked, **swapped)
                # a fake that holds a word of the person's name (a street of that name) is swapped with the text
                swapped_fakes = {f: swap_name(v, person.name, name) for f, v in fakes.items()}
                stand_in = dataclasses.replace(stand_in, name=name, fields=swapped_fakes)
            [scored], _ = mark_pii_spans([faked], [stand_in])
            if name is not None:
                scored = dataclasses.replace(scored, meta={**scored.meta, "stranger": name})
            copy.append(_with_template(scored) if names is not None and scored.meta["score_spans"] else scored)
        copies.append(copy)
    return marked, copies


def _with_template(record: Record) -> Record:
    return dataclasses.replace(record, meta={**record.meta, "score_template": True})
