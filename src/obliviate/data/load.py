"""Every supported data layout → validated :class:`Record` lists.

Layouts: LUME / SemEval-2025 Task 4 (``forget.jsonl``, ``retain.parquet``, HF-style
``forget_train-00000-of-00001.parquet``), any ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` with ``input`` and
``output`` columns, TOFU-style ``question`` / ``answer`` files, directories of ``.txt`` documents, and membership
sets (``member.jsonl`` / ``nonmember.jsonl`` with a ``document`` column). One file's text and rows:
:mod:`obliviate.data.files`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from obliviate.data.files import read_rows, read_text
from obliviate.data.records import KINDS, Record, kind_from_id
from obliviate.errors import ConfigError, DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
"""Accepted file types, in the order preferred when one split is stored in several formats."""
SPLITS = ("forget", "retain", "holdout")
MIA_SPLITS = ("member", "nonmember")
_HF_NAME = re.compile(r"^(forget|retain|holdout)(?:_(?:train|validation|val|test|dev))?(?:-\d+-of-\d+)?$")
# column pairs that hold (input, output), the kind they imply (None: infer from the id)
_SCHEMAS = (("input", "output", None), ("question", "answer", "qa"), ("document", None, "document"))


def load_split(path: str | Path, *, split: str | None = None) -> list[Record]:
    """Load one forget / retain / holdout (or member / nonmember) set from a file or a directory.

    Args:
        path: a data file, or a directory holding split-named files (``forget.jsonl``, ``retain.parquet``, …),
            split-named subdirectories (``forget/``), a single data file of any name, or ``.txt`` documents.
        split: which split to load when the directory holds several; required then. A path to a file is
            loaded whatever its name, so e.g. ``retain.jsonl`` can serve as a holdout set.

    Returns:
        The records in file order. When one split is stored twice (``forget.jsonl`` and ``forget.parquet`` in a
        SemEval submission), rows are loaded once: later files only add ids not seen before.

    Raises:
        DataError: the path is missing, holds no recognised file, or a file fails validation.
        ConfigError: ``split`` is not a known split name.
    """
    if split is not None and split not in SPLITS + MIA_SPLITS:
        raise ConfigError(f"split: expected one of {', '.join(SPLITS + MIA_SPLITS)}, found {split!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: expected a data file or directory, found nothing at this path")
    files = _files_for(path, split) if path.is_dir() else [_check_file(path)]
    records: list[Record] = []
    seen: dict[str, Record] = {}
    for file in files:
        for record in _load_file(file):
            previous = seen.get(record.id)
            if previous is None:
                seen[record.id] = record
                records.append(record)
            elif previous != record:
                raise DataError(
                    f"{file}: expected the same row as earlier files for id {_short(record.id)}, found a different one"
                )
    if not records:
        raise DataError(f"{path}: expected at least one record, found an empty set")
    return records


def list_splits(path: str | Path) -> tuple[str, ...]:
    """The split names a directory holds (``("forget", "retain")`` for LUME); ``()`` for a file or an unnamed set."""
    path = Path(path)
    if not path.is_dir():
        return ()
    return tuple(sorted(_named_entries(path), key=lambda name: (SPLITS + MIA_SPLITS).index(name)))


def load_training_records(paths: list[str | Path]) -> list[Record]:
    """Every record under ``paths`` for training: a directory holding several splits (e.g. ``synth`` output or
    LUME's forget.jsonl + retain.jsonl) contributes each of them, except ``holdout`` (never trained on)."""
    records: list[Record] = []
    for path in paths:
        splits = [s for s in list_splits(path) if s not in ("holdout", *MIA_SPLITS)]
        if len(splits) > 1:
            records += [r for split in splits for r in load_split(path, split=split)]
        else:
            records += load_split(path)
    return records


def split_of(path: str | Path) -> str | None:
    """The split a file or directory is named after (``forget_train-00000-of-00001.parquet`` → forget), or None."""
    path = Path(path)
    name = path.name if path.is_dir() else path.name.removesuffix(path.suffix)
    if name in MIA_SPLITS:
        return name
    match = _HF_NAME.match(name)
    return match.group(1) if match else None


def load_mia_dir(path: str | Path) -> tuple[list[Record], list[Record]]:
    """Load a SemEval membership-inference directory: ``(members, nonmembers)`` from ``member.jsonl`` /
    ``nonmember.jsonl``, both ``document`` records."""
    path = Path(path)
    for name in ("member.jsonl", "nonmember.jsonl"):
        if not (path / name).is_file():
            raise DataError(f"{path}: expected member.jsonl and nonmember.jsonl, found no {name}")
    return load_split(path / "member.jsonl"), load_split(path / "nonmember.jsonl")


def check_overlap(forget: list[Record], retain: list[Record], *, allow_overlap: bool) -> int:
    """Count retain records that share an id or an identical (input, output) with a forget record.

    Raises:
        DataError: there is overlap and ``allow_overlap`` is False.
    """
    ids = {record.id for record in forget}
    pairs = {(record.input, record.output) for record in forget}
    count = sum(1 for record in retain if record.id in ids or (record.input, record.output) in pairs)
    if count and not allow_overlap:
        raise DataError(
            f"forget and retain sets: expected no shared records, found {count} retain records with a forget id "
            "or identical input and output (pass --allow_overlap to accept)"
        )
    return count


def write_jsonl(records: Iterable[Record], path: str | Path) -> None:
    """Write records as JSON lines (UTF-8, ``ensure_ascii=False``), atomically: a temp file, then ``os.replace``.

    Keys: ``id``, ``input``, ``output``, ``task``, then meta keys; ``kind`` only when loading could not infer it
    back from the id, so a written file loads to the same records.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="\n", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            for record in records:
                row = record.to_json()
                if record.kind != (kind_from_id(record.id) or "completion"):
                    row["kind"] = record.kind
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _check_file(file: Path) -> Path:
    if file.suffix not in SUFFIXES:
        raise DataError(f"{file}: expected a {', '.join(SUFFIXES)} file, found {file.suffix or 'no extension'!r}")
    return file


def _named_entries(directory: Path) -> dict[str, list[Path]]:
    named: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.suffix in SUFFIXES:
            split = split_of(entry)
            if split is not None:
                named.setdefault(split, []).append(entry)
    return named


def _files_for(directory: Path, split: str | None) -> list[Path]:
    """The files of one split inside a directory, jsonl before json before parquet (see :data:`SUFFIXES`)."""
    named = _named_entries(directory)
    if named:
        if split is None and len(named) > 1:
            raise DataError(
                f"{directory}: expected files of one split, found splits {', '.join(named)} (pass split= / --split)"
            )
        split = split or next(iter(named))
        if split not in named:
            raise DataError(f"{directory}: expected {split} files, found only splits {', '.join(named)}")
        files = [f for entry in named[split] for f in (_files_for(entry, split) if entry.is_dir() else [entry])]
        return sorted(files, key=lambda f: (SUFFIXES.index(f.suffix), f.name))
    data = [f for f in sorted(directory.iterdir()) if f.is_file() and f.suffix in SUFFIXES and f.name[0] != "."]
    if len(data) == 1 or (data and all(f.suffix == ".txt" for f in data)):
        return data
    if not data:
        found = ", ".join(sorted(f.name for f in directory.iterdir())[:8]) or "nothing"
        raise DataError(
            f"{directory}: expected {'/'.join(SUFFIXES)} files (e.g. forget.jsonl, retain.parquet, "
            f"forget_train-00000-of-00001.parquet, member.jsonl, *.txt), found {found}"
        )
    raise DataError(
        f"{directory}: expected one data file or files named forget/retain/holdout, found {len(data)} unnamed files "
        f"({', '.join(f.name for f in data[:5])})"
    )


def _load_file(file: Path) -> list[Record]:
    if file.suffix == ".txt":
        text = read_text(file).rstrip()
        if not text.strip():
            raise DataError(f"{file}: expected a non-empty document, found an empty file")
        return [Record(id=file.stem, input=text, output="", kind="document")]
    rows, where = read_rows(file)
    columns = list(rows[0]) if rows else []
    schema = next((s for s in _SCHEMAS if s[0] in columns and (s[1] is None or s[1] in columns)), None)
    if schema is None and rows:
        raise DataError(
            f"{file}: expected columns input and output (or question and answer, or document), "
            f"found columns {', '.join(map(str, columns)) or 'none'}"
        )
    records = [_to_record(row, schema, file, where(index), index) for index, row in enumerate(rows)]
    counts = Counter(record.id for record in records)
    duplicated = [record_id for record_id, count in counts.items() if count > 1]
    if duplicated:
        raise DataError(
            f"{file}: expected unique ids, found id {_short(duplicated[0])} {counts[duplicated[0]]} times "
            f"({len(duplicated)} duplicated ids)"
        )
    return records


def _to_record(row: dict[str, Any], schema: tuple, file: Path, where: str, index: int) -> Record:
    input_column, output_column, default_kind = schema
    raw_id = _plain(row.get("id"))
    if isinstance(raw_id, (list, dict, bool)):
        raise DataError(f"{file} {where}: expected a string or integer id, found a {type(raw_id).__name__}")
    record_id = _plain_str(raw_id) or f"{file.stem}-{index}"
    place = f"{file} {where} (id {_short(record_id)})"
    kind = _plain_str(row.get("kind")) or default_kind or kind_from_id(record_id) or "completion"
    if kind not in KINDS:
        raise DataError(f"{place}: expected a kind in {', '.join(KINDS)}, found {kind!r}")
    text = _text_cell(row.get(input_column), f"{place}: expected a non-empty {input_column}")
    if not text.strip():
        raise DataError(f"{place}: expected a non-empty {input_column}, found an empty string")
    output = ""
    if output_column is not None and not (kind == "document" and _is_null(row.get(output_column))):
        output = _text_cell(row.get(output_column), f"{place}: expected a string {output_column}")
    consumed = {"id", "task", "kind", input_column, output_column}
    meta = {key: _plain(value) for key, value in row.items() if key not in consumed and not _is_null(value)}
    task = _plain_str(row.get("task")) or "default"
    return Record(id=record_id, input=text, output=output, task=task, kind=kind, meta=meta)


def _is_null(value: Any) -> bool:
    pandas = sys.modules.get("pandas")  # only a file pandas read (CSV, JSON array) can hold its NA
    missing = pandas is not None and value is pandas.NA
    return value is None or missing or value == "" or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A JSON-serialisable Python value (numpy scalars, arrays and dates from pandas / pyarrow made plain)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _plain_str(value: Any) -> str | None:
    """A cell as a string, or None when null; pandas turns integers into floats when a column has gaps."""
    if _is_null(value):
        return None
    value = _plain(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _text_cell(value: Any, expected: str) -> str:
    if isinstance(value, str):
        return value
    if _is_null(value):
        raise DataError(f"{expected}, found null")
    value = _plain(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _plain_str(value)  # numeric answers such as 42
    raise DataError(f"{expected}, found a {type(value).__name__}")


def _short(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
