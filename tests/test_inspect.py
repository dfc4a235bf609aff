"""``obliviate synth`` / ``inspect`` and the statistics behind them: counts appear, PII values never do."""

from __future__ import annotations

import argparse
import json

import pytest

from obliviate.cli import inspect as inspect_cli
from obliviate.cli import synth as synth_cli
from obliviate.cli.main import main
from obliviate.data.records import Record
from obliviate.data.stats import describe, length_stats
from obliviate.data.synth import biography_form, load_pii
from obliviate.errors import DataError, ModelError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="obliviate")
    subparsers = parser.add_subparsers(dest="command", required=True)
    synth_cli.register(subparsers)
    inspect_cli.register(subparsers)
    return parser.parse_args(argv)


def secrets(pii_path) -> list[str]:
    values = []
    for person in load_pii(pii_path):
        values.append(person.name)
        for field, value in person.fields.items():
            values += [value, biography_form(field, value)]
    return values


@pytest.fixture
def synth_dir(tmp_path, capsys):
    out = tmp_path / "synth"
    args = parse(["synth", "--people", "30", "--seed", "7", "--output_dir", str(out)])
    assert args.func(args) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "30 people (forget 3, retain 24, holdout 3), 180 records" in line
    assert not any(secret in line for secret in secrets(out / "pii.json"))
    return out


def test_inspect_prints_counts_and_no_pii(synth_dir, capsys):
    args = parse(["inspect", str(synth_dir)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{synth_dir} [forget]: 18 records (forget)" in out
    assert f"{synth_dir} [retain]: 144 records (retain)" in out
    assert "Task2: completion 3, qa 15" in out and "Task2: completion 24, qa 120" in out
    # each value once in the bio, once as the answer
    assert "PII-looking strings: ssn 6, phone 6, email 6, birth_date 6, address 6" in out
    assert "0 retain records share" in out
    leaked = [secret for secret in secrets(synth_dir / "pii.json") if secret in out]
    assert leaked == []


def test_inspect_overlap_fails_unless_allowed(tmp_path, capsys):
    rows = [{"id": "a", "input": "x", "output": "1"}, {"id": "b", "input": "y", "output": "2"}]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rows[1]["id"] = "c"  # same input and output, other id
    (tmp_path / "retain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    paths = [str(tmp_path / "forget.jsonl"), str(tmp_path / "retain.jsonl")]
    args = parse(["inspect", *paths])
    with pytest.raises(DataError, match="found 2 retain records"):
        args.func(args)
    assert capsys.readouterr().out == ""  # checks run before anything is printed
    args = parse(["inspect", *paths, "--allow_overlap"])
    assert args.func(args) == 0
    assert "retain.jsonl: 2 retain records share" in capsys.readouterr().out


def test_inspect_lume(lume_dir, capsys):
    args = parse(["inspect", str(lume_dir)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "[forget]: 2732 records" in out and "[retain]: 2734 records" in out
    assert "Task2: completion 250, qa 1250" in out and "Task3: completion 373, qa 373" in out
    assert "900-51-4344" not in out and "900514344" not in out  # a LUME SSN


def test_inspect_rejects_missing_tokenizer_dir(synth_dir, tmp_path):
    args = parse(["inspect", str(synth_dir), "--tokenizer", str(tmp_path / "no-tokenizer")])
    with pytest.raises(ModelError, match="no-tokenizer"):
        args.func(args)


def test_inspect_counts_tokens_with_a_local_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(tmp_path / "tok")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"input": "one two three", "output": "four five"}) + "\n", encoding="utf-8")
    args = parse(["inspect", str(data), "--tokenizer", str(tmp_path / "tok")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "input length (tokens): min 3, mean 3.0, median 3.0, max 3" in out
    assert "output length (tokens): min 2," in out


def test_pii_counts_count_without_double_counting():
    """The audit's detectors count: a phone is not also an SSN, an address's ZIP is no SSN, a bare year no date."""
    from obliviate.evaluate.detectors import counts

    texts = [
        "SSN 900-51-4344, or 900514344; call 721-625-3765",
        "7216253765",
        "Mail jo.doe@me.com on March 4, 1987 at 12 Oak Street, Springfield, IL 62704",
        "1987-03-04",
        "no pii here, 12345 and 2024",
    ]
    assert counts(texts) == {"ssn": 2, "phone": 2, "email": 1, "birth_date": 2, "address": 1}


def test_inspect_reads_phones_in_the_region_given(tmp_path, capsys):
    """British rows: a mobile without +44 is a phone only when read in GB, and a National Insurance number counts
    as a national ID; a region that is not an ISO code is a one-line error."""
    row = {"id": "u1qa0", "input": "Mobile and NI number of Ann Lee?", "output": "07700 900123, NK 93 41 90 A"}
    data = tmp_path / "forget.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    for region, phones in (("US", 0), ("GB", 1)):
        args = parse(["inspect", str(data), "--region", region])
        assert args.func(args) == 0
        assert f"PII-looking strings: ssn 1, phone {phones}, email 0" in capsys.readouterr().out
    assert main(["inspect", str(data), "--region", "G1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "obliviate: error: --region 'G1': expected a two-letter ISO 3166 code such as US or GB"
    )


def test_describe_counts_and_lengths():
    records = [
        Record("p1sc1", "abcd", "ef", "Task2", "completion"),
        Record("p1qa0", "ab", "cdef", "Task2", "qa"),
        Record("p1qa1", "abcdef", "g", "Task2", "qa"),
        Record("doc", "xyz", "", "default", "document"),
    ]
    summary = describe(records)
    assert summary["records"] == 4 and summary["unit"] == "characters"
    assert summary["counts"] == {"Task2": {"completion": 1, "qa": 2}, "default": {"document": 1}}
    assert summary["input_length"] == {"min": 2, "mean": 3.75, "median": 3.5, "max": 6}
    assert summary["output_length"] == {"min": 0, "mean": 1.75, "median": 1.5, "max": 4}
    assert length_stats([]) == {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}


def test_describe_counts_tokens_with_a_tokenizer():
    def whitespace_tokenizer(texts, add_special_tokens=False):
        return {"input_ids": [text.split() for text in texts]}

    records = [Record("a", "one two three", "four"), Record("b", "five", "six seven")]
    summary = describe(records, tokenizer=whitespace_tokenizer)
    assert summary["unit"] == "tokens"
    assert summary["input_length"] == {"min": 1, "mean": 2.0, "median": 2.0, "max": 3}
    assert summary["output_length"]["max"] == 2
