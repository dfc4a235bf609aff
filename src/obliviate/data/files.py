"""Reading one data file: its bytes as UTF-8 text, its rows (JSON lines, a JSON array, CSV or parquet), and each
place named in an error ("line 7", "row 3", "item 2"). JSON lines are read one by one with :func:`json.loads`,
which also names a malformed line; CSV and JSON arrays with pandas, parquet with pyarrow (each imported only when
such a file is read: they cost a second of start-up)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from obliviate.errors import DataError


def read_rows(file: Path) -> tuple[list[dict[str, Any]], Any]:
    """Rows of a tabular file and a function mapping a row index to a human place ("line 7", "row 3")."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as error:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{file}: expected a parquet file, found unreadable data ({first_line(error)})") from None
        return rows, lambda i: f"row {i + 1}"
    text = read_text(file)
    array = file.suffix == ".json" and text.lstrip().startswith("[")
    if file.suffix != ".csv" and not array:  # JSON lines: each line is parsed once, to check it, and kept
        rows, numbers = validate_json_lines(text, file, parsed=True)
        return rows, lambda i: f"line {numbers[i]}"
    import pandas as pd

    try:
        if file.suffix == ".csv":
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
            return frame.to_dict("records"), lambda i: f"row {i + 1}"
        validate_json_array(text, file)
        frame = pd.read_json(io.StringIO(text), orient="records", dtype=False, convert_axes=False)
        return frame.to_dict("records"), lambda i: f"item {i + 1}"
    except (ValueError, TypeError, RecursionError) as error:  # pandas parser / ujson errors
        raise DataError(
            f"{file}: expected {file.suffix} data, found unreadable content ({first_line(error)})"
        ) from None


def validate_json_lines(text: str, file: Path, parsed: bool = False) -> tuple[list, list[int]]:
    """Check every non-blank line is one JSON object; return those lines (``parsed``: the objects) and their
    1-based line numbers."""
    lines, numbers = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            detail = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else "too deep"
            raise DataError(
                f"{file} line {number}: expected one JSON object per line, found malformed JSON ({detail})"
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"{file} line {number}: expected one JSON object per line, found a JSON {type(value).__name__}"
            )
        lines.append(value if parsed else line)
        numbers.append(number)
    return lines, numbers


def validate_json_array(text: str, file: Path) -> None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        detail = (
            f"{error.msg} at line {error.lineno} column {error.colno}"
            if isinstance(error, json.JSONDecodeError)
            else "too deep"
        )
        raise DataError(f"{file}: expected a JSON array of objects, found malformed JSON ({detail})") from None
    bad = next((i for i, item in enumerate(value) if not isinstance(item, dict)), None)
    if bad is not None:
        raise DataError(f"{file} item {bad + 1}: expected a JSON object, found a JSON {type(value[bad]).__name__}")


def read_text(file: Path) -> str:
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{file}: expected UTF-8 text, found invalid byte 0x{data[error.start]:02x} at byte offset {error.start} "
            f"(line {line})"
        ) from None
    return text.removeprefix("\ufeff")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
