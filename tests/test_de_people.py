"""benchmarks/de_people.py: a German PII set that loads as obliviate reads data, with two fields of no known kind."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import de_people  # noqa: E402


def test_the_german_set_loads_with_its_own_fields_and_formats(tmp_path):
    from obliviate.data.load import load_split
    from obliviate.data.pii import pii_field
    from obliviate.data.pii_match import contains_value
    from obliviate.data.synth import load_pii

    assert de_people.write_set(tmp_path / "a", count=20, seed=3) == {"forget": 14, "retain": 112, "holdout": 14}
    de_people.write_set(tmp_path / "b", count=20, seed=3)
    assert (tmp_path / "a" / "pii.json").read_bytes() == (tmp_path / "b" / "pii.json").read_bytes()  # seeded
    people = load_pii(tmp_path / "a" / "pii.json")
    forget = load_split(tmp_path / "a" / "forget", split="forget")
    assert {p.split for p in people} == {"forget", "retain", "holdout"} and len(people) == 20
    for person in people:
        assert sorted(person.fields) == ["address", "birth_date", "email", "iban", "phone", "tax_id"]
        assert re.fullmatch(r"[1-9]\d \d{3} \d{3} \d{3}", person.fields["tax_id"])
        assert re.fullmatch(r"\+49 1[5-7]\d \d{8}", person.fields["phone"])
        assert re.fullmatch(r"\d\d\.\d\d\.\d{4}", person.fields["birth_date"])
        assert len(person.fields["address"].split(", ")) == 2 and person.fields["email"].isascii()
        iban = person.fields["iban"].replace(" ", "")
        assert re.fullmatch(r"DE\d{20}", iban) and int(iban[4:] + "1314" + iban[2:4]) % 97 == 1  # ISO 13616
    by_id = {r.id: r for r in forget}
    for person in (p for p in people if p.split == "forget"):
        biography = by_id[f"{person.person_id}sc1"]
        for field, value in person.fields.items():  # every value is in the biography (the date: see below)
            assert field == "birth_date" or contains_value(field, value, biography.text), field
        assert {pii_field(by_id[f"{person.person_id}qa{k}"]) for k in range(6)} == set(person.fields)


def test_iban_check_digits_follow_iso_13616():
    import random

    rng = random.Random(0)
    for _ in range(50):
        text = de_people.iban(rng).replace(" ", "")
        assert int(text[4:] + "1314" + text[2:4]) % 97 == 1
    assert int("370400440532013000" + "1314" + "89") % 97 == 1  # DE89 3704 0044 0532 0130 00, the standard example


@pytest.mark.xfail(strict=True, reason="German month names are not read yet: '28. Mai 1997' is not 28.05.1997")
def test_a_german_written_date_is_read_as_the_value():
    """The German biographies write the birth date out (``28. Mai 1997``). The matcher reads English month names
    only, so a leak of the date in a German continuation is not counted, and contrast's spans miss it there."""
    from obliviate.data.pii_match import contains_value

    assert contains_value("birth_date", "28.05.1997", "wurde am 28. Mai 1997 geboren")
