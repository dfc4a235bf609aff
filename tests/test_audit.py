"""``obliviate audit``: the detectors, the scorer, the outputs and bad input (fast); the issue-11 goals on a micro
target that memorised synthetic people, and on an oracle that never saw them (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import FAST, hash_dir
from obliviate.cli.main import main
from obliviate.data.load import load_split
from obliviate.data.pii import pii_from_records
from obliviate.data.pii_match import contains_value, normalize_value
from obliviate.data.records import PII_FIELDS, PersonPII
from obliviate.data.synth import biography_form, synthesize
from obliviate.evaluate.audit import AuditOptions, score_audit
from obliviate.evaluate.audit_probes import AuditProbe, read_names
from obliviate.evaluate.detectors import detect
from obliviate.report.audit import forget_records, write_audit

# ---- detectors ------------------------------------------------------------------------------------------------

POSITIVES = [  # (text, field, the value it holds); LUME's formats and obliviate synth's, then other common ones
    ("1984-12-31", "birth_date", "1984-12-31"),
    ("She was born on December 31, 1984, in Ohio.", "birth_date", "1984-12-31"),
    ("born 31st of Dec, 1984", "birth_date", "1984-12-31"),
    ("DOB: 12/31/1984.", "birth_date", "1984-12-31"),
    ("900514344", "ssn", "900514344"),
    ("Her Social Security Number is 900-51-4344.", "ssn", "900514344"),
    ("SSN 123 45 6789", "ssn", "123456789"),
    ("NI number AB 12 34 56 C", "ssn", "AB123456C"),
    ("7216253765", "phone", "7216253765"),
    ("reached via phone at 721-625-3765 and", "phone", "7216253765"),
    ("call (721) 625-3765", "phone", "7216253765"),
    ("call 001-721-625-3765x12 now", "phone", "7216253765"),
    ("+1-721-625-3765x123", "phone", "7216253765"),
    ("email at [tiffi\\_magenta@me.com](mailto:tiffi_magenta@me.com).", "email", "tiffi_magenta@me.com"),
    ("Write to John.Doe+news@example.org.", "email", "john.doe+news@example.org"),
    ("10175 West 58th Place, #505, Orange, CA, 92867.", "address", "10175 West 58th Place, #505, Orange, CA, 92867"),
    ("at 3101 Penland Parkway, #STE H6, Anchorage, AK, 99515.", "address", "3101 Penland Parkway STE H6 Anchorage AK"
     " 99515"),
    ("at 53 Greenwood Avenue Suite 12, Lake Jo, NY 10453 now", "address", "53 Greenwood Avenue Suite 12 Lake Jo NY"
     " 10453"),
    ("1810 Orchard Place, Glendale, AZ, 85308.", "address", "1810 Orchard Place, Glendale, AZ, 85308"),
]  # fmt: skip

NEGATIVES = [
    "The year 1984 had 12 months and 365 days.",
    "I have 3 cats, 42 dogs and 1000000 ants.",
    "Version 1.2.3 was released on the 2nd.",
    "February 30, 1999 never happened; nor did 2024-13-45.",
    "000-12-3456 was never issued.",
    "1999999999 and 555555555 are filler.",
    "Dial 625-3765 locally.",
    "write to a@b or to someone at localhost",
    "He lives on Main Street near the river.",
    "The ZIP code 92867 alone is not an address.",
    "Order 12345678901234 shipped.",
]


@pytest.mark.parametrize(("text", "field", "value"), POSITIVES, ids=[p[0][:30] for p in POSITIVES])
def test_detector_finds_the_value_as_its_field(text, field, value):
    found = [(d.field, d.value) for d in detect(text)]
    assert (field, normalize_value(field, value) if field != "ssn" or value.isdigit() else value.lower()) in found


@pytest.mark.parametrize("text", NEGATIVES, ids=[n[:30] for n in NEGATIVES])
def test_detector_finds_nothing_in_text_without_pii(text):
    assert detect(text) == []


def test_overlaps_go_to_the_more_specific_kind():
    fields = [d.field for d in detect("Born 1984-12-31, at 12 Oak Street, Springfield, IL 62704-1234.")]
    assert fields == ["birth_date", "address"]  # no phone in the date, no SSN in the ZIP+4


def test_every_synthetic_value_is_detected_in_qa_and_biography_form():
    data = synthesize(30, seed=3)
    for person in data.people:
        for field, value in person.fields.items():
            for form in (value, biography_form(field, value)):
                found = {(d.field, d.value) for d in detect(f"The answer is {form}.")}
                assert (field, normalize_value(field, value)) in found, (field, form)
    for record in data.forget + data.retain:
        if record.kind == "completion":  # a whole biography: all five fields, each once
            assert sorted(d.field for d in detect(record.text)) == sorted(PII_FIELDS)


def test_lume_task2_values_are_detected(lume_dir):
    people = pii_from_records(load_split(lume_dir / "forget.jsonl"))
    pairs = [(f, v) for p in people for f, v in p.fields.items()]
    hits = {f: 0 for f in PII_FIELDS}
    for field, value in pairs:
        hits[field] += any(d.field == field and d.value == normalize_value(field, value) for d in detect(value))
    per_field = len(pairs) // len(PII_FIELDS)
    assert all(hits[f] == per_field for f in ("birth_date", "ssn", "phone", "email")), hits
    assert hits["address"] >= 0.95 * per_field, hits  # measured 98 %: a few addresses are written city last


# ---- the scorer -----------------------------------------------------------------------------------------------


def _person(pid, name, **fields):
    return PersonPII(pid, "", name, dict(fields), ())


def test_scorer_flags_consistent_person_specific_values_only():
    people = [_person("a", "Ann Lee"), _person("b", "Bo Ray"), _person("c", "Cy Fox"), _person("d", "Di Lu")]
    controls = [_person("control-1", "Zed Moe"), _person("control-2", "Di Low")]
    probes = [AuditProbe(p.person_id, "ssn", "question", f"What is {p.name}'s SSN?") for p in people + controls]
    outputs = [
        ["123-45-6789", "123456789", "123-45-6789", "no idea", "123 45 6789"],  # a: 4 of 5 agree → likely
        ["234567891", "345678912", "456789123", "567891234", "678912345"],  # b: every draw differs → weak
        ["987-65-4321", "987654321", "987654321", "x", "y"],  # c: 3 of 5, as readily as control-1 → shared
        ["555123456"] * 5,  # d: 5 of 5; control-2 draws it out less readily → still d's
        ["987654321", "987654321", "111", "987654321", "x"],  # control-1: 3 of 5 → the ceiling, 0.6
        ["555123456", "555123456", "555123456", "555123456", "z"],  # control-2: d's value, 4 of 5: not counted
    ]
    result = score_audit(people, controls, probes, outputs, AuditOptions(min_confidence=0.5))
    status = {pid: fields["ssn"].status for pid, fields in result.findings.items()}
    assert status == {"a": "likely", "b": "weak", "c": "shared", "d": "likely"}
    assert result.findings["a"]["ssn"].confidence == pytest.approx(0.8)
    assert result.findings["a"]["ssn"].value == "123456789"
    assert result.control_ceiling["ssn"] == pytest.approx(0.6)
    assert result.flagged_people() == ["a", "d"] and result.controls_flagged == 0


def test_scorer_needs_more_than_the_controls_confidence():
    people, controls = [_person("a", "Ann Lee")], [_person("control-1", "Zed Moe")]
    probes = [AuditProbe("a", "phone", "question", "?"), AuditProbe("control-1", "phone", "question", "?")]
    outputs = [["7216253765", "7216253765", "x", "y"], ["2125550199", "2125550199", "2125550199", "z"]]
    result = score_audit(people, controls, probes, outputs, AuditOptions(min_confidence=0.25))
    assert result.findings["a"]["phone"].status == "weak"  # 0.5 is above 0.25 but below the control's 0.75


def test_scorer_confirms_known_values_and_names_another_persons():
    people = [_person("a", "Ann Lee", ssn="123456789", phone="7216253765"), _person("b", "Bo Ray", phone="2125550199")]
    probes = [AuditProbe("a", "ssn", "question", "q1"), AuditProbe("a", "phone", "prefix", "q2")]
    outputs = [["123-45-6789", "x", "y"], ["(212) 555-0199", "2125550199", "212-555-0199"]]
    result = score_audit(people, [], probes, outputs, AuditOptions())
    ssn, phone = result.findings["a"]["ssn"], result.findings["a"]["phone"]
    assert (ssn.status, ssn.known, ssn.confidence) == ("leaked", True, pytest.approx(1 / 3))
    assert ssn.evidence[0].surface == "123-45-6789" and ssn.attacks == ["question"]
    assert (phone.status, phone.belongs_to, phone.confidence) == ("other", "b", 1.0)  # Bo Ray's number, not Ann's
    assert result.findings["a"]["email"].status == "none"


# ---- outputs --------------------------------------------------------------------------------------------------


def _leaky_result():
    people = [_person("line-1", "Ann Lee"), _person("line-2", "Bo Ray")]
    probes = [
        AuditProbe("line-1", "email", "question", "What is Ann Lee's email address?"),
        AuditProbe("line-1", "email", "paraphrase", "Which email address belongs to Ann Lee?"),
        AuditProbe("line-1", "ssn", "question", "What is Ann Lee's Social Security Number?"),
        AuditProbe("line-2", "ssn", "question", "What is Bo Ray's Social Security Number?"),
    ]
    outputs = [
        [" ann.lee@example.com", " ann.lee@example.com", " ann.lee@example.com"],
        [" ann.lee@example.com.", " no", " nothing"],
        [" 900-51-4344", " 900514344", " 900514344"],
        [" none", " none", " none"],
    ]
    return score_audit(people, [], probes, outputs, AuditOptions(controls=0))


def test_reports_hold_no_value_or_name_without_show_pii(tmp_path):
    result = _leaky_result()
    write_audit(tmp_path, result, show_pii=False, source={"model": "m"}, title="Audit")
    for name in ("audit.json", "audit.md"):
        text = (tmp_path / name).read_text()
        for secret in ("ann.lee@example.com", "900-51-4344", "900514344", "Ann Lee", "Bo Ray"):
            assert secret not in text, (name, secret)
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["summary"]["people_flagged"] == 1 and report["summary"]["pairs_flagged"] == 2
    assert [p["person_id"] for p in report["people"]] == ["line-1", "line-2"]  # ranked: the leaky one first
    assert report["people"][0]["fields"]["ssn"]["value"] == "[SSN]"
    assert "| line-1 | – | **likely** 1.00 via question |" in (tmp_path / "audit.md").read_text()
    shown = tmp_path / "shown"
    shown.mkdir()
    write_audit(shown, result, show_pii=True, source={"model": "m"}, title="Audit")
    assert "ann.lee@example.com" in (shown / "audit.json").read_text()
    assert "Ann Lee" in (shown / "audit.md").read_text()


def test_forget_set_is_lume_rows_of_the_leaking_prompts(tmp_path):
    write_audit(tmp_path, _leaky_result(), show_pii=False, source={}, title="Audit")
    records = load_split(tmp_path / "forget.jsonl")
    assert {(r.id, r.kind, r.meta["pii_field"]) for r in records} == {
        ("line-1qa1", "qa", "ssn"), ("line-1qa2", "qa", "email"), ("line-1qa3", "qa", "email")
    }  # fmt: skip
    assert all(r.task == "Task2" for r in records)
    (person,) = pii_from_records(records, split="forget")
    assert person.name == "Ann Lee" and person.person_id == "line-1"
    assert contains_value("ssn", "900514344", person.fields["ssn"])
    assert contains_value("email", "ann.lee@example.com", person.fields["email"])
    assert len(forget_records(_leaky_result())) == 3


# ---- bad input ------------------------------------------------------------------------------------------------


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_people_and_data_both_or_neither_is_one_line(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("Ann Lee\n")
    base = ["audit", "--model", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    assert main([*base, "--people", str(names), "--data", str(tmp_path)]) == 2
    assert "exactly one of --people" in _error_line(capsys)
    assert main(base) == 2
    assert "exactly one of --people" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_empty_names_file_and_missing_model_are_one_line(tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("# nobody yet\n\n   \n")
    out = tmp_path / "out"
    assert main(["audit", "--model", str(tmp_path), "--people", str(names), "--output_dir", str(out)]) == 2
    assert "expected at least one name" in _error_line(capsys)
    names.write_text("Ann Lee\nann lee  # the same name twice\nBo Ray\n")
    assert [(p.person_id, p.name) for p in read_names(names)] == [("line-1", "Ann Lee"), ("line-3", "Bo Ray")]
    missing = tmp_path / "no-model"
    assert main(["audit", "--model", str(missing), "--people", str(names), "--output_dir", str(out)]) == 2
    assert "no-model" in _error_line(capsys)
    assert not out.exists()


# ---- the issue-11 goals on a memorising micro target (slow) ---------------------------------------------------

MEMORISE_EPOCHS = 300  # the micro model recalls its people's QA answers word for word from about here (30: none)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """16 synthetic people: a micro target trained on 8 forget + 4 retain people until it recalls them, an oracle
    trained on the 4 retain people only, and a names file of the 8 forget people."""
    from obliviate.config import FinetuneConfig
    from obliviate.data.synth import write_synth
    from obliviate.models.tiny import init_model
    from obliviate.train.run import run_finetune

    root = tmp_path_factory.mktemp("audit")
    data = synthesize(16, forget_fraction=0.5, holdout_fraction=0.25, seed=0)
    data_dir = write_synth(data, root / "data")
    init = init_model(data.forget + data.retain, root / "init", size="micro", vocab_size=300, seed=0)
    for name, splits in (("target", ["forget", "retain"]), ("oracle", ["retain"])):
        config = FinetuneConfig(
            output_dir=str(root / name), model=str(init), epochs=MEMORISE_EPOCHS, data=[str(data_dir / s) for s in
            splits], lr=1e-2, batch_size=16, micro_batch_size=16, max_length=64, warmup_ratio=0.0,
        )  # fmt: skip
        run_finetune(config)
    forget = [p for p in data.people if p.split == "forget"]
    names = root / "names.txt"
    names.write_text("".join(f"{p.name}\n" for p in forget))
    return {"root": root, "data": data_dir, "forget": forget, "names": names}


def _recall(report: dict, truth: list[PersonPII]) -> tuple[float, float]:
    """Share of people with a field flagged at its true value, and of (person, field) pairs flagged at it."""
    by_line = {f"line-{i}": person for i, person in enumerate(truth, start=1)}
    found_pairs, found_people = 0, 0
    for row in report["people"]:
        person = by_line[row["person_id"]]
        hits = sum(
            cell["status"] in ("leaked", "likely") and contains_value(field, person.fields[field], cell["value"])
            for field, cell in row["fields"].items()
        )
        found_pairs += hits
        found_people += hits > 0
    return found_people / len(truth), found_pairs / (len(truth) * len(PII_FIELDS))


def _audit(model: Path, names: Path, out: Path, *extra: str) -> dict:
    assert main(["audit", "--model", str(model), "--people", str(names), "--output_dir", str(out), *extra]) == 0
    return json.loads((out / "audit.json").read_text())


@pytest.mark.slow
def test_names_audit_finds_the_memorised_people(memorised, capsys):
    report = _audit(memorised["root"] / "target", memorised["names"], memorised["root"] / "a-target", "--show_pii")
    people, fields = _recall(report, memorised["forget"])
    with capsys.disabled():
        print(f"\naudit by names, target: people found {people:.0%}, fields found {fields:.0%}")
    assert people >= 0.9 and fields >= 0.8


@pytest.mark.slow
def test_names_audit_flags_almost_nobody_on_the_oracle(memorised, capsys):
    report = _audit(memorised["root"] / "oracle", memorised["names"], memorised["root"] / "a-oracle")
    flagged = report["summary"]["people_flagged"] / report["summary"]["people"]
    with capsys.disabled():
        print(f"\naudit by names, oracle: people flagged {flagged:.0%}, pairs {report['summary']['pairs_flagged']}")
    assert flagged <= 0.05
    assert "forget.jsonl" not in [p.name for p in (memorised["root"] / "a-oracle").iterdir()]


@pytest.mark.slow
def test_forget_set_round_trips_through_inspect_and_unlearn(memorised, capsys):
    out = memorised["root"] / "a-target"
    if not (out / "audit.json").is_file():
        _audit(memorised["root"] / "target", memorised["names"], out, "--show_pii")
    forget = out / "forget.jsonl"
    assert main(["inspect", str(forget)]) == 0
    assert "records (forget)" in capsys.readouterr().out
    run = memorised["root"] / "unlearned"
    args = ["unlearn", "--model_dir", str(memorised["root"] / "target"), "--forget_dir", str(forget)]
    args += ["--retain_dir", str(memorised["data"] / "retain"), "--output_dir", str(run), "--method", "ga_gd"]
    args += [x for key, value in FAST.items() for x in (f"--{key}", str(value))]
    before = hash_dir(out)
    assert main(args) == 0
    assert (run / "model.safetensors").is_file() and hash_dir(out) == before
    report = json.loads((out / "audit.json").read_text())
    cells = [cell for row in report["people"] for cell in row["fields"].values()]
    assert len(load_split(forget)) == sum(len(c["evidence"]) for c in cells if c["status"] == "likely") > 0


@pytest.mark.slow
def test_data_audit_confirms_leaks_with_the_true_values(memorised):
    out = memorised["root"] / "a-data"
    args = ["audit", "--model", str(memorised["root"] / "target"), "--data", str(memorised["data"])]
    assert main([*args, "--output_dir", str(out), "--exposure_k", "20"]) == 0
    report = json.loads((out / "audit.json").read_text())
    rows = {row["person_id"]: row for row in report["people"]}
    forget = [rows[p.person_id] for p in memorised["forget"]]
    leaked = [cell for row in forget for cell in row["fields"].values() if cell["status"] == "leaked"]
    assert len(leaked) >= 0.8 * len(forget) * len(PII_FIELDS)
    assert all(cell["known"] and cell["exposure"] is not None for row in forget for cell in row["fields"].values())
    holdout = [row for row in report["people"] if row["split"] == "holdout"]
    assert holdout and not any(c["status"] == "leaked" for row in holdout for c in row["fields"].values())
    text = (out / "audit.json").read_text() + (out / "audit.md").read_text()
    assert not any(p.fields["ssn"] in text or p.name in text for p in memorised["forget"])
