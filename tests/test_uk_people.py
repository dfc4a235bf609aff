"""benchmarks/uk_people.py: a British PII set that loads as obliviate reads data, in its own formats."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import uk_people  # noqa: E402


def test_the_british_set_loads_with_its_own_fields_and_formats(tmp_path):
    from obliviate.data.load import load_split
    from obliviate.data.pii import pii_field
    from obliviate.data.pii_match import contains_value
    from obliviate.data.synth import load_pii

    assert uk_people.write_set(tmp_path / "a", count=20, seed=3) == {"forget": 12, "retain": 96, "holdout": 12}
    uk_people.write_set(tmp_path / "b", count=20, seed=3)
    assert (tmp_path / "a" / "pii.json").read_bytes() == (tmp_path / "b" / "pii.json").read_bytes()  # seeded
    people = load_pii(tmp_path / "a" / "pii.json")
    forget = load_split(tmp_path / "a" / "forget", split="forget")
    assert {p.split for p in people} == {"forget", "retain", "holdout"} and len(people) == 20
    for person in people:
        assert sorted(person.fields) == ["address", "birth_date", "email", "ni_number", "phone"]
        assert re.fullmatch(r"[A-Z]{2} \d\d \d\d \d\d [A-D]", person.fields["ni_number"])
        assert re.fullmatch(r"07\d{3} \d{6}", person.fields["phone"])
        assert re.fullmatch(r"\d\d/\d\d/\d{4}", person.fields["birth_date"])
    by_id = {r.id: r for r in forget}
    for person in (p for p in people if p.split == "forget"):
        biography = by_id[f"{person.person_id}sc1"]
        for field, value in person.fields.items():  # every value is in the biography, the date written out
            assert contains_value(field, value, biography.text), field
        assert {pii_field(by_id[f"{person.person_id}qa{k}"]) for k in range(5)} == set(person.fields)
