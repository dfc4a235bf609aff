"""benchmarks/de_people.py: a German PII set that loads as obliviate reads data, with two fields of no known kind."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import de_people  # noqa: E402
from helpers import written_set  # noqa: E402


def test_the_german_set_loads_with_its_own_fields_and_formats(tmp_path):
    from obliviate.data.pii import pii_field
    from obliviate.data.pii_match import contains_value

    counts, people, by_id = written_set(de_people, tmp_path, count=20, seed=3)
    assert counts == {"forget": 14, "retain": 112, "holdout": 14}
    for person in people:
        assert sorted(person.fields) == ["address", "birth_date", "email", "iban", "phone", "tax_id"]
        assert re.fullmatch(r"[1-9]\d \d{3} \d{3} \d{3}", person.fields["tax_id"])
        assert re.fullmatch(r"\+49 1[5-7]\d \d{8}", person.fields["phone"])
        assert re.fullmatch(r"\d\d\.\d\d\.\d{4}", person.fields["birth_date"])
        assert len(person.fields["address"].split(", ")) == 2 and person.fields["email"].isascii()
        assert re.fullmatch(r"DE\d\d(?: \d{4}){4} \d\d", person.fields["iban"]) and _valid_iban(person.fields["iban"])
    for person in (p for p in people if p.split == "forget"):
        biography = by_id[f"{person.person_id}sc1"]
        for field, value in person.fields.items():  # every value is in the biography (the date: see below)
            assert field == "birth_date" or contains_value(field, value, biography.text), field
        assert {pii_field(by_id[f"{person.person_id}qa{k}"]) for k in range(6)} == set(person.fields)


def _valid_iban(text: str) -> bool:
    """ISO 13616 for a German IBAN: the number read with its first four characters moved to the end, D = 13 and
    E = 14, is 1 modulo 97."""
    text = text.replace(" ", "")
    return int(text[4:] + "1314" + text[2:4]) % 97 == 1


def test_iban_check_digits_follow_iso_13616():
    import random

    rng = random.Random(0)
    for _ in range(50):
        assert _valid_iban(de_people.iban(rng))
    assert _valid_iban("DE89 3704 0044 0532 0130 00")  # the standard's example: the check below is the standard's
    assert not _valid_iban("DE88 3704 0044 0532 0130 00")


@pytest.mark.xfail(strict=True, reason="German month names are not read yet: '28. Mai 1997' is not 28.05.1997")
def test_a_german_written_date_is_read_as_the_value():
    """The German biographies write the birth date out (``28. Mai 1997``). The matcher reads English month names
    only, so a leak of the date in a German continuation is not counted, and contrast's spans miss it there."""
    from obliviate.data.pii_match import contains_value

    assert contains_value("birth_date", "28.05.1997", "wurde am 28. Mai 1997 geboren")
