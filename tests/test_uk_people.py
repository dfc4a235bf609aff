"""benchmarks/uk_people.py: a British PII set that loads as obliviate reads data, in its own formats."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import uk_people  # noqa: E402
from helpers import written_set  # noqa: E402


def test_the_british_set_loads_with_its_own_fields_and_formats(tmp_path):
    from obliviate.data.pii import pii_field
    from obliviate.data.pii_match import contains_value

    counts, people, by_id = written_set(uk_people, tmp_path, count=20, seed=3)
    assert counts == {"forget": 12, "retain": 96, "holdout": 12}
    for person in people:
        assert sorted(person.fields) == ["address", "birth_date", "email", "ni_number", "phone"]
        assert re.fullmatch(r"[A-Z]{2} \d\d \d\d \d\d [A-D]", person.fields["ni_number"])
        assert re.fullmatch(r"07\d{3} \d{6}", person.fields["phone"])
        assert re.fullmatch(r"\d\d/\d\d/\d{4}", person.fields["birth_date"])
    for person in (p for p in people if p.split == "forget"):
        biography = by_id[f"{person.person_id}sc1"]
        for field, value in person.fields.items():  # every value is in the biography, the date written out
            assert contains_value(field, value, biography.text), field
        assert {pii_field(by_id[f"{person.person_id}qa{k}"]) for k in range(5)} == set(person.fields)
