"""Loading every supported layout, and one clear error line for every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obliviate.data.load import check_overlap, list_splits, load_mia_dir, load_split, write_jsonl
from obliviate.data.records import Record
from obliviate.errors import ConfigError, DataError, ObliviateError

ROWS = [
    {"id": "p1sc1", "input": "Ann was born on", "output": "May 1, 1990.", "task": "Task2", "person_id": "p1"},
    {"id": "p1qa0", "input": "When was Ann born?", "output": "1990-05-01", "task": "Task2", "person_id": "p1"},
    {"id": "doc7", "input": "A plain prefix", "output": "and its continuation", "task": "Task1"},
]


def write_jsonl_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def summary(records: list[Record]) -> list[tuple]:
    return [(r.id, r.input, r.output, r.task, r.kind) for r in records]


EXPECTED = [
    ("p1sc1", "Ann was born on", "May 1, 1990.", "Task2", "completion"),
    ("p1qa0", "When was Ann born?", "1990-05-01", "Task2", "qa"),
    ("doc7", "A plain prefix", "and its continuation", "Task1", "completion"),
]


@pytest.mark.parametrize("split, counts", [
    ("forget", {("Task1", "completion"): 243, ("Task1", "qa"): 243, ("Task2", "completion"): 250,
                ("Task2", "qa"): 1250, ("Task3", "completion"): 373, ("Task3", "qa"): 373}),
    ("retain", {("Task1", "completion"): 246, ("Task1", "qa"): 246, ("Task2", "completion"): 250,
                ("Task2", "qa"): 1250, ("Task3", "completion"): 371, ("Task3", "qa"): 371}),
])  # fmt: skip
def test_lume_counts(lume_dir, split, counts):
    records = load_split(lume_dir, split=split)
    assert len(records) == {"forget": 2732, "retain": 2734}[split]
    assert Counter((r.task, r.kind) for r in records) == counts
    assert list_splits(lume_dir) == ("forget", "retain")


def test_lume_directory_without_split_names_the_splits(lume_dir):
    with pytest.raises(DataError, match="forget, retain") as info:
        load_split(lume_dir)
    assert "split" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_tabular_formats(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl_rows(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    elif fmt == "parquet":
        write_parquet(path, ROWS)
    else:
        pd.DataFrame(ROWS).to_csv(path, index=False)
    records = load_split(path)
    assert summary(records) == EXPECTED
    assert records[0].meta == {"person_id": "p1"}
    assert records[2].meta == {}  # null cells are not copied into meta


def test_missing_id_and_task_get_defaults(tmp_path):
    path = write_jsonl_rows(tmp_path / "mine.jsonl", [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}])
    assert [(r.id, r.task, r.kind) for r in load_split(path)] == [
        ("mine-0", "default", "completion"),
        ("mine-1", "default", "completion"),
    ]


def test_explicit_kind_column_wins(tmp_path):
    rows = [{"id": "x1sc1", "input": "q?", "output": "a", "kind": "qa"}, {"id": "x1qa0", "input": "t", "output": ""}]
    rows[1]["kind"] = "document"
    assert [r.kind for r in load_split(write_jsonl_rows(tmp_path / "d.jsonl", rows))] == ["qa", "document"]


def test_hf_style_parquet_names_and_split_selection(tmp_path):
    write_parquet(tmp_path / "forget_train-00000-of-00001.parquet", [{**ROWS[0], "split": "forget"}])
    write_parquet(tmp_path / "forget_validation-00000-of-00001.parquet", [{**ROWS[1], "split": "forget"}])
    write_parquet(tmp_path / "retain_train-00000-of-00001.parquet", [{**ROWS[2], "split": "retain"}])
    assert list_splits(tmp_path) == ("forget", "retain")
    forget = load_split(tmp_path, split="forget")
    assert sorted(r.id for r in forget) == ["p1qa0", "p1sc1"]
    assert forget[0].meta["split"] == "forget"
    assert [r.id for r in load_split(tmp_path, split="retain")] == ["doc7"]


def test_semeval_dir_with_jsonl_and_parquet_loads_rows_once(tmp_path):
    write_jsonl_rows(tmp_path / "forget.jsonl", ROWS)
    write_parquet(tmp_path / "forget.parquet", [{**row, "split": "forget"} for row in ROWS])
    records = load_split(tmp_path)
    assert summary(records) == EXPECTED
    assert "split" not in records[0].meta  # the jsonl copy is the one kept


def test_same_id_with_different_content_in_two_files_is_an_error(tmp_path):
    write_jsonl_rows(tmp_path / "forget.jsonl", ROWS)
    write_parquet(tmp_path / "forget.parquet", [{**ROWS[0], "output": "changed"}])
    with pytest.raises(DataError, match=r"forget\.parquet.*'p1sc1'"):
        load_split(tmp_path)


def test_split_subdirectories_as_written_by_synth(tmp_path):
    write_jsonl_rows(tmp_path / "forget" / "forget.jsonl", ROWS[:2])
    write_jsonl_rows(tmp_path / "retain" / "retain.jsonl", ROWS[2:])
    (tmp_path / "pii.json").write_text("{}", encoding="utf-8")
    assert list_splits(tmp_path) == ("forget", "retain")
    assert [r.id for r in load_split(tmp_path, split="retain")] == ["doc7"]
    assert [r.id for r in load_split(tmp_path / "forget")] == ["p1sc1", "p1qa0"]


def test_single_unnamed_file_in_directory(tmp_path):
    write_jsonl_rows(tmp_path / "data.jsonl", ROWS)
    (tmp_path / "README.md").write_text("notes", encoding="utf-8")
    assert len(load_split(tmp_path, split="forget")) == 3


@pytest.mark.parametrize("as_lines", [True, False])
def test_tofu_question_answer_json(tmp_path, as_lines):
    rows = [
        {"question": "Who wrote X?", "answer": "Y", "paraphrased_answer": "It was Y."},
        {"question": "Q2", "answer": 7},
    ]
    path = tmp_path / "forget10.json"
    if as_lines:  # TOFU's hub files are JSON lines named .json
        write_jsonl_rows(path, rows)
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    records = load_split(path)
    assert [(r.id, r.input, r.output, r.kind) for r in records] == [
        ("forget10-0", "Who wrote X?", "Y", "qa"),
        ("forget10-1", "Q2", "7", "qa"),
    ]
    assert records[0].meta == {"paraphrased_answer": "It was Y."}


def test_txt_directory_loads_documents_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("Second document.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("First document, ünïcode.\n", encoding="utf-8")
    records = load_split(tmp_path)
    assert [(r.id, r.input, r.output, r.kind) for r in records] == [
        ("a", "First document, ünïcode.", "", "document"),
        ("b", "Second document.", "", "document"),
    ]


def test_mia_dir(tmp_path):
    write_jsonl_rows(tmp_path / "member.jsonl", [{"document": "Seen text one."}, {"document": "Seen text two."}])
    write_jsonl_rows(tmp_path / "nonmember.jsonl", [{"document": "Unseen text."}])
    members, nonmembers = load_mia_dir(tmp_path)
    assert [(r.id, r.input, r.kind) for r in members] == [
        ("member-0", "Seen text one.", "document"),
        ("member-1", "Seen text two.", "document"),
    ]
    assert [r.input for r in nonmembers] == ["Unseen text."]
    with pytest.raises(DataError, match="member, nonmember"):
        load_split(tmp_path)
    (tmp_path / "nonmember.jsonl").unlink()
    with pytest.raises(DataError, match="nonmember.jsonl"):
        load_mia_dir(tmp_path)


def test_write_jsonl_round_trip(tmp_path):
    records = [
        Record("p1sc1", "Zoë was born on", "May 1.", "Task2", "completion", {"person_id": "p1", "paraphrases": ["a"]}),
        Record("essay", "A whole document.", "", "default", "document"),
    ]
    path = tmp_path / "out" / "forget.jsonl"
    write_jsonl(records, path)
    assert listing(tmp_path) == ["out", "out/forget.jsonl"]  # no temp file left behind
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith('{"id": "p1sc1", "input": "Zoë') and list(json.loads(first)) == [
        "id", "input", "output", "task", "person_id", "paraphrases"]  # fmt: skip
    loaded = load_split(path)
    assert loaded == records and [r.meta for r in loaded] == [r.meta for r in records]


def test_check_overlap():
    forget = [Record("a", "x", "1"), Record("b", "y", "2")]
    retain = [Record("a", "other", "3"), Record("c", "y", "2"), Record("d", "z", "4")]
    assert check_overlap(forget, retain, allow_overlap=True) == 2
    assert check_overlap(forget, retain[2:], allow_overlap=False) == 0
    with pytest.raises(DataError, match="found 2 retain records"):
        check_overlap(forget, retain, allow_overlap=False)


GOOD = '{"id": "r1", "input": "a", "output": "b"}\n'
BAD_CASES = {
    "missing path": (lambda d: d / "nope.jsonl", ["nope.jsonl", "found nothing"]),
    "no recognised file": (lambda d: _put(d / "sub" / "notes.md", "x").parent,
                           ["sub", ".jsonl", ".parquet", "notes.md"]),
    "unsupported extension": (lambda d: _put(d / "data.xlsx", "x"), ["data.xlsx", ".jsonl", "'.xlsx'"]),
    "missing columns": (lambda d: _put(d / "x.jsonl", '{"prompt": "a", "completion": "b"}\n'),
                        ["x.jsonl", "input and output", "found columns prompt, completion"]),
    "missing columns csv": (lambda d: _put(d / "x.csv", "text2,label\nhello,1\n"),
                            ["x.csv", "found columns text2, label"]),
    "empty file": (lambda d: _put(d / "forget.jsonl", "\n  \n"), ["forget.jsonl", "empty set"]),
    "invalid utf-8": (lambda d: _put(d / "x.jsonl", GOOD.encode() + b'{"input": "\xff"}\n'),
                      ["x.jsonl", "UTF-8", "0xff", "byte offset 53", "line 2"]),
    "malformed json": (lambda d: _put(d / "x.jsonl", GOOD + "\n" + '{"id": "r2", "input": "a" "output": "b"}\n'),
                       ["x.jsonl", "line 3", "malformed JSON", "column 27"]),
    "json array line": (lambda d: _put(d / "x.jsonl", GOOD + '["a", "b"]\n'),
                        ["x.jsonl", "line 2", "found a JSON list"]),
    "malformed json array": (lambda d: _put(d / "x.json", '[\n{"input": "a",\n "output": }\n]'), ["x.json", "line 3"]),
    "null input": (lambda d: _put(d / "x.jsonl", GOOD + '{"id": "r2", "input": null, "output": "b"}\n'),
                   ["x.jsonl", "line 2", "'r2'", "input", "found null"]),
    "empty input": (lambda d: _put(d / "x.jsonl", GOOD + '{"id": "r2", "input": " ", "output": "b"}\n'),
                    ["x.jsonl line 2", "'r2'", "non-empty input", "empty string"]),
    "null input parquet": (lambda d: write_parquet(d / "x.parquet", [{"id": "r1", "input": None, "output": "b"}]),
                           ["x.parquet row 1", "'r1'", "found null"]),
    "duplicate ids": (lambda d: _put(d / "x.jsonl", GOOD * 3 + GOOD.replace("r1", "r2") * 2),
                      ["x.jsonl", "unique ids", "'r1' 3 times", "2 duplicated ids"]),
    "unknown kind": (lambda d: _put(d / "x.jsonl", '{"id": "r1", "input": "a", "output": "b", "kind": "essay"}\n'),
                     ["x.jsonl line 1", "completion, qa, document", "'essay'"]),
    "two unnamed files": (lambda d: _put(_put(d / "a.jsonl", GOOD).parent / "b.csv", "input,output\na,b\n").parent,
                          ["a.jsonl", "b.csv", "2 unnamed files"]),
    "corrupt parquet": (lambda d: _put(d / "x.parquet", b"not parquet at all"),
                        ["x.parquet", "expected a parquet file"]),
}  # fmt: skip


def _put(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_one_clear_line(tmp_path, case):
    build, words = BAD_CASES[case]
    target = build(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(DataError) as info:
        load_split(target)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert listing(tmp_path) == before


def test_wrong_split_requests(tmp_path):
    write_jsonl_rows(tmp_path / "retain.jsonl", ROWS)
    with pytest.raises(DataError, match="expected forget files, found only splits retain"):
        load_split(tmp_path, split="forget")
    assert len(load_split(tmp_path / "retain.jsonl", split="holdout")) == 3  # an explicit file loads as asked
    with pytest.raises(ConfigError, match="'train'"):
        load_split(tmp_path, split="train")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_keys = st.sampled_from(["id", "input", "output", "task", "kind", "question", "answer", "document", "extra"])
_good_rows = st.fixed_dictionaries(
    {"input": st.text(min_size=1, max_size=20).filter(str.strip), "output": st.text(max_size=20)},
    optional={"id": st.text(max_size=6) | st.integers(), "task": st.text(max_size=6), "extra": _json_values},
)
_lines = st.one_of(
    _good_rows.map(lambda row: json.dumps(row).encode()),
    st.dictionaries(_keys, _json_values, max_size=6).map(lambda row: json.dumps(row).encode()),
    st.text(max_size=30).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=20),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_lines, max_size=6))
def test_fuzzed_jsonl_loads_or_raises_obliviate_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        records = load_split(path)
    except ObliviateError as error:
        assert "\n" not in str(error)
    else:
        assert records and all(isinstance(r, Record) and r.input.strip() for r in records)


def test_training_records_of_a_synth_root_take_forget_and_retain_but_never_holdout(tmp_path):
    from obliviate.data.load import load_training_records
    from obliviate.data.synth import synthesize, write_synth

    data = synthesize(10, forget_fraction=0.2, holdout_fraction=0.2, seed=1)
    root = write_synth(data, tmp_path / "synth")
    records = load_training_records([root])
    assert {r.id for r in records} == {r.id for r in data.forget + data.retain}
    assert not {r.id for r in data.holdout} & {r.id for r in records}
