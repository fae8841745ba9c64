"""Rows for `lm2vec encode`: input row i becomes vector i, or the command fails naming the row.

One rule for every format: a row without text (a blank .txt line, a blank or text-less .jsonl line,
an empty .csv/.tsv cell or row) is an error naming ``file:line``. With ``skip_empty`` such rows are
left out instead, and the caller writes which input row each vector came from (`rows`), so nothing
shifts silently.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lm2vec.data.errors import DataError, Problems
from lm2vec.data.text import detect_format, iter_lines, json_object, open_text

Text = str | tuple[str, str]  # plain text, or (instruction, text) from a .jsonl "instruction" field


@dataclass
class InputRows:
    texts: list[Text] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # 0-based input row of each text
    skipped: list[str] = field(default_factory=list)  # file:line of each row left out


def read_input_rows(path: Path, column: str = "text", skip_empty: bool = False) -> InputRows:
    """Every row of a .txt (one text per line), .jsonl or .csv/.tsv file, in order."""
    fmt = detect_format(path)
    reader = {"text": _text_rows, "jsonl": _jsonl_rows, "csv": _table_rows, "tsv": _table_rows}.get(fmt)
    if reader is None:
        raise DataError(f"{path}: encode reads .txt, .jsonl, .csv or .tsv files, not {fmt}")
    out = InputRows()
    for row, (where, text) in enumerate(reader(path, column)):
        if text is None:
            if not skip_empty:
                raise DataError(f"{where}: row {row + 1} has no text; every input row must become a vector "
                                "(remove the row, or pass --skip-empty to leave such rows out and write an index)")
            out.skipped.append(where)
            continue
        out.texts.append(text)
        out.rows.append(row)
    return out


def _blank(text: str) -> bool:
    return not text.strip()


def _text_rows(path: Path, column: str) -> Iterator[tuple[str, Text | None]]:
    for lineno, line in iter_lines(path, Problems("raise")):
        yield f"{path}:{lineno}", None if _blank(line) else line


def _jsonl_rows(path: Path, column: str) -> Iterator[tuple[str, Text | None]]:
    for lineno, line in iter_lines(path, Problems("raise")):
        where = f"{path}:{lineno}"
        if _blank(line):
            yield where, None
            continue
        record = json_object(line, where, f"a JSON object with a {column!r} field")
        yield where, _record_text(record, column, where)


def _record_text(record: dict, column: str, where: str) -> Text | None:
    value, instruction = record.get(column), record.get("instruction")
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {column!r} must be a string, got {type(value).__name__}")
    if instruction is not None and not isinstance(instruction, str):
        raise DataError(f"{where}: field 'instruction' must be a string, got {type(instruction).__name__}")
    if value is None or _blank(value):
        return None
    return (instruction, value) if instruction else value


def _table_rows(path: Path, column: str) -> Iterator[tuple[str, Text | None]]:
    delimiter = "\t" if detect_format(path) == "tsv" else ","
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if column not in names:
            raise DataError(f"{path}:1: no {column!r} column (columns: {', '.join(names)}); pick one with --column")
        index = names.index(column)
        for values in reader:
            where = f"{path}:{reader.line_num}"
            yield where, values[index] if index < len(values) and not _blank(values[index]) else None
