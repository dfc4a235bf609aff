"""The synthetic PII data: deterministic, complete, consistent with pii.json, split cleanly."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from obliviate.data.load import load_split
from obliviate.data.records import PII_FIELDS, person_key, qa_index
from obliviate.data.synth import biography_form, load_pii, synthesize, write_synth
from obliviate.errors import ConfigError, DataError

FILES = ("forget/forget.jsonl", "retain/retain.jsonl", "holdout/holdout.jsonl", "pii.json")


@pytest.fixture(scope="module")
def data():
    return synthesize(people=60, forget_fraction=0.1, holdout_fraction=0.2, seed=3)


def read_all(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = read_all(write_synth(synthesize(people=20, seed=1), tmp_path / "a"))
    second = read_all(write_synth(synthesize(people=20, seed=1), tmp_path / "b"))
    other = read_all(write_synth(synthesize(people=20, seed=2), tmp_path / "c"))
    assert first == second
    assert all(first[name] != other[name] for name in FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp directories left


def test_split_sizes_and_disjoint_people(data):
    splits = Counter(person.split for person in data.people)
    assert splits == {"forget": 6, "retain": 42, "holdout": 12}
    people_per_split = [{r.meta["person_id"] for r in records} for records in (data.forget, data.retain, data.holdout)]
    assert [len(p) for p in people_per_split] == [6, 42, 12]
    assert not (people_per_split[0] & people_per_split[1] or people_per_split[0] & people_per_split[2])
    assert not people_per_split[1] & people_per_split[2]
    assert len({person.name for person in data.people}) == 60


def test_every_person_has_six_records_in_their_split(data):
    by_split = {"forget": data.forget, "retain": data.retain, "holdout": data.holdout}
    for person in data.people:
        ids = [r.id for r in by_split[person.split] if r.meta["person_id"] == person.person_id]
        assert ids == [f"{person.person_id}sc1"] + [f"{person.person_id}qa{i}" for i in range(5)]
        assert list(person.records) == ids
    assert all(r.task == "Task2" and person_key(r.id) == r.meta["person_id"] for r in data.retain)


def test_records_agree_with_pii(data):
    people = {person.person_id: person for person in data.people}
    for record in data.forget + data.retain + data.holdout:
        person = people[record.meta["person_id"]]
        if record.kind == "qa":
            field = PII_FIELDS[qa_index(record.id)]
            assert record.meta["pii_field"] == field and record.output == person.fields[field]
            assert person.name in record.input
            assert 2 <= len(record.meta["paraphrases"]) <= 3 and record.input not in record.meta["paraphrases"]
            assert all(person.name in question for question in record.meta["paraphrases"])
            continue
        biography = record.text
        for field, value in person.fields.items():
            assert biography_form(field, value) in biography, (field, biography)
        cut_value = biography_form(record.meta["pii_field"], person.fields[record.meta["pii_field"]])
        assert record.output.startswith(cut_value) and cut_value not in record.input
        assert person.name in record.input  # every cut leaves the name in the prompt
        assert 35 <= len(biography.split()) <= 65


def test_value_formats(data):
    for person in data.people:
        fields = person.fields
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["birth_date"])
        assert re.fullmatch(r"\d{9}", fields["ssn"]) and re.fullmatch(r"\d{10}", fields["phone"])
        assert re.fullmatch(r"[a-z._]+\d*@[a-z.]+", fields["email"])
        assert re.fullmatch(r"[^\n]+, [^\n,]+, [A-Z]{2} \d{5}", fields["address"])


def test_biography_forms():
    assert biography_form("birth_date", "1987-03-04") == "March 4, 1987"
    assert biography_form("ssn", "900514344") == "900-51-4344"
    assert biography_form("phone", "7216253765") == "721-625-3765"
    assert biography_form("email", "a@b.com") == "a@b.com"


def test_templates_and_cuts_vary(data):
    """At least five templates are in use: the order the five values appear in differs between them."""
    people = {person.person_id: person for person in data.people}
    orders, cuts = set(), set()
    for record in data.forget + data.retain + data.holdout:
        if record.kind == "completion":
            fields = people[record.meta["person_id"]].fields
            orders.add(tuple(sorted(PII_FIELDS, key=lambda f: record.text.index(biography_form(f, fields[f])))))
            cuts.add(record.meta["pii_field"])
    assert len(orders) >= 5 and len(cuts) >= 4


def test_written_files_load_back_and_pii_round_trips(tmp_path, data):
    out = write_synth(data, tmp_path / "synth")
    assert load_split(out, split="forget") == data.forget
    assert [r.meta for r in load_split(out / "holdout")] == [r.meta for r in data.holdout]
    assert load_pii(out / "pii.json") == list(data.people)
    first = json.loads((out / "forget" / "forget.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["id", "input", "output", "task", "person_id", "pii_field"]


def test_refuses_non_empty_dir_unless_overwrite(tmp_path):
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DataError, match="--overwrite") as info:
        write_synth(synthesize(people=10, seed=0), out)
    assert "\n" not in str(info.value) and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(DataError, match="not written by obliviate"):  # a foreign directory is never replaced
        write_synth(synthesize(people=10, seed=0), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    write_synth(synthesize(people=10, seed=1), out)
    write_synth(synthesize(people=10, seed=0), out, overwrite=True)  # obliviate's own output: replaced
    assert sorted(p.name for p in out.iterdir()) == [".obliviate", "forget", "holdout", "pii.json", "retain"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


@pytest.mark.parametrize(
    "people, forget, holdout, words",
    [
        (100, 1.0, 0.1, "forget_fraction"),
        (100, 0.1, -0.1, "holdout_fraction"),
        (100, 0.6, 0.5, "sum below 1"),
        (5, 0.1, 0.1, "none in forget, holdout"),
    ],
)
def test_bad_fractions(people, forget, holdout, words):
    with pytest.raises(ConfigError, match=words):
        synthesize(people, forget, holdout)


_PERSON = '"person_id": "p1", "split": "forget", "name": "Ann Lee", "records": ["p1qa0"]'


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"version": 2, "people": []}',
        '{"version": 1, "people": [{"person_id": "p1"}]}',
        '{"version": 1, "people": [{' + _PERSON + ', "fields": ["ssn"]}]}',
        '{"version": 1, "people": [{' + _PERSON + ', "fields": {}}]}',
        '{"version": 1, "people": [{' + _PERSON + ', "fields": {"ssn": " "}}]}',
        '{"version": 1, "people": [{' + _PERSON + ', "fields": {"address": null}}]}',  # not the text "None"
        '{"version": 1, "people": [{' + _PERSON + ', "fields": {"ssn": ["1"]}}]}',
    ],
)
def test_load_pii_rejects_malformed_files(tmp_path, content):
    path = tmp_path / "pii.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="pii.json") as info:
        load_pii(path)
    assert "\n" not in str(info.value)


def test_load_pii_takes_fields_of_any_name(tmp_path):
    """A British set's National Insurance number and a person without an address load as given."""
    path = tmp_path / "pii.json"
    path.write_text(
        '{"version": 1, "people": [{'
        + _PERSON
        + ', "fields": {"ni_number": "NK 93 41 90 A", "phone": "07700 900123"}}]}',
        encoding="utf-8",
    )
    (person,) = load_pii(path)
    assert person.fields == {"ni_number": "NK 93 41 90 A", "phone": "07700 900123"} and person.split == "forget"
