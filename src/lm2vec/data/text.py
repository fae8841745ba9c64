"""Raw-text corpora for the unsupervised objectives (MNTP, SimCSE): any source -> ``list[str]``.

MNTP and SimCSE only need plain texts, but real corpora arrive as line files, paragraph files,
JSONL, CSV/TSV (often gzipped, sometimes with CRLF or a BOM), WikiExtractor dumps or Hugging Face
datasets. :func:`load_texts` hides those differences behind one call with one error policy
(see :mod:`lm2vec.data.errors`). Formats and examples: ``docs/data-formats.md``.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from lm2vec.data.builtin import builtin_corpus
from lm2vec.data.errors import DataError, OnError, Problems
from lm2vec.data.sentences import split_sentences

Unit = Literal["line", "paragraph", "sentence"]
FORMATS: tuple[str, ...] = ("text", "jsonl", "csv", "tsv", "wikiextractor")
UNITS: tuple[str, ...] = ("line", "paragraph", "sentence")
# File suffix (after any ".gz") -> format. No suffix means plain text (e.g. WikiExtractor's wiki_00).
SUFFIX_FORMATS: dict[str, str] = {
    "": "text",
    ".txt": "text",
    ".text": "text",
    ".raw": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
}
DEFAULT_COLUMN = "text"
_BAD_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by "surrogateescape"


# ----------------------------------------------------------------------------- public entry point


def load_texts(
    source: str | os.PathLike[str],
    *,
    column: str | None = None,
    fmt: str | None = None,
    unit: Unit = "line",
    on_error: OnError = "skip",
    min_chars: int = 1,
    limit: int | None = None,
) -> list[str]:
    """Load plain texts from a file, directory, ``hf:`` dataset or ``builtin:`` corpus.

    ``unit`` picks what one text is: a line, a blank-line separated paragraph (raw text only),
    or a sentence (any source, split by :func:`split_sentences`). Texts are stripped; those
    shorter than ``min_chars`` are dropped as a filter, not an error. Malformed records follow
    ``on_error`` (``"skip"``: one :class:`DataWarning`; ``"raise"``: :class:`DataError`).
    """
    if unit not in UNITS:
        raise DataError(f"unit must be one of {UNITS}, got {unit!r}")
    spec = os.fspath(source)
    if spec.startswith("builtin:"):

        corpus_unit = "sentence" if unit == "sentence" else "paragraph"
        return builtin_corpus(spec.removeprefix("builtin:"), unit=corpus_unit, min_chars=min_chars)[:limit]
    problems = Problems(on_error)
    if spec.startswith("hf:"):
        records = _hf_texts(spec, column or DEFAULT_COLUMN, problems)
    else:
        records = _path_texts(Path(spec), fmt, column, unit, problems)
    texts = list(itertools.islice(_finish_texts(records, unit, min_chars), limit))
    problems.finish(spec)
    return texts


def _finish_texts(records: Iterable[str], unit: str, min_chars: int) -> Iterator[str]:
    """Strip, optionally split into sentences, and drop texts below ``min_chars``."""
    for record in records:
        pieces = split_sentences(record) if unit == "sentence" else [record.strip()]
        yield from (piece for piece in pieces if len(piece) >= max(min_chars, 1))


def _path_texts(
    path: Path, fmt: str | None, column: str | None, unit: str, problems: Problems
) -> Iterator[str]:
    """Texts of one file, or of every non-hidden file below a directory in sorted order."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        if path.is_dir()
        else [path]
    )
    for file in files:
        yield from _file_texts(file, fmt or detect_format(file), column, unit, problems)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _file_texts(path: Path, fmt: str, column: str | None, unit: str, problems: Problems) -> Iterator[str]:
    """Dispatch one file to the reader of its format."""
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; supported formats: {', '.join(FORMATS)}")
    if column is not None and fmt in ("text", "wikiextractor"):
        raise DataError(f"{path}: column={column!r} only applies to jsonl/csv/tsv, not {fmt}")
    if fmt == "text":
        return _raw_texts(path, unit, problems)
    if fmt == "wikiextractor":
        return _wikiextractor_texts(path, problems)
    if fmt == "jsonl":
        return (text for _, text in iter_jsonl_field(path, column or DEFAULT_COLUMN, problems))
    return (
        row[column or DEFAULT_COLUMN]
        for _, row in iter_table(path, problems, fmt, [column or DEFAULT_COLUMN])
    )


def detect_format(path: Path) -> str:
    """Guess a file's format from its suffix, ignoring a trailing ``.gz``."""
    name = path.name.removesuffix(".gz")
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        known = ", ".join(s or "(none)" for s in SUFFIX_FORMATS)
        raise DataError(
            f"{path}: unknown format for suffix {suffix!r} (known suffixes: {known}); "
            f"pass fmt= one of: {', '.join(FORMATS)}"
        )
    return SUFFIX_FORMATS[suffix]


# ----------------------------------------------------------------------------- reading files


def open_text(path: Path, newline: str | None = None) -> TextIO:
    """Open a UTF-8 text file, gzipped or not (by magic bytes), dropping a leading BOM.

    Undecodable bytes are kept as lone surrogates ("surrogateescape") so that the readers can
    report the exact line instead of failing the whole file.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    binary = gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115 (caller closes)
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def iter_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)``; CRLF and CR become LF, bad UTF-8 is reported."""
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if _BAD_UTF8.search(line):
                problems.report(f"{path}:{lineno}", "invalid UTF-8")
                continue
            yield lineno, line


def _raw_texts(path: Path, unit: str, problems: Problems) -> Iterator[str]:
    """One text per non-blank line, or per blank-line separated paragraph (lines joined by a space)."""
    paragraph: list[str] = []
    for _, line in iter_lines(path, problems):
        if unit != "paragraph":
            if line.strip():
                yield line
        elif line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            yield " ".join(paragraph)
            paragraph = []
    if paragraph:
        yield " ".join(paragraph)


def _wikiextractor_texts(path: Path, problems: Problems) -> Iterator[str]:
    """Paragraphs of a WikiExtractor shard: skips ``<doc>`` tags, titles, blanks and headings.

    A heading is a line of at most 6 words ending in "." (e.g. "History."), as the data README says.
    """
    after_doc = False
    for _, line in iter_lines(path, problems):
        text = line.strip()
        if text.startswith("<doc ") or text == "</doc>":
            after_doc = text.startswith("<doc ")
            continue
        is_heading = text.endswith(".") and len(text.split()) <= 6
        if text and not after_doc and not is_heading:
            yield text
        after_doc = after_doc and not text


def json_object(line: str, where: str, expected: str) -> dict[str, Any]:
    """One JSONL line as a dict, or a DataError naming `where` (file:line) and what was `expected`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected {expected}")
    return record


def iter_jsonl(path: Path, problems: Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every JSON object line; blank lines are ignored."""
    for lineno, line in iter_lines(path, problems):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.report(where, f"invalid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(record, dict):
            problems.report(where, f"expected a JSON object, got {json_type(record)}")
            continue
        yield where, record


def iter_jsonl_field(path: Path, column: str, problems: Problems) -> Iterator[tuple[str, str]]:
    """``(file:line, text)`` of one required string field of every JSONL object."""
    for where, record in iter_jsonl(path, problems):
        text, reason = string_field(record, column)
        if reason:
            problems.report(where, reason)
        else:
            yield where, text


def json_type(value: Any) -> str:
    """JSON's name for a parsed value's type (users write JSON, not Python)."""
    names = {
        type(None): "null",
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }
    return names.get(type(value), type(value).__name__)


def string_field(record: dict[str, Any], key: str) -> tuple[str, str | None]:
    """``(value, None)`` if ``record[key]`` is a non-blank string, else ``("", reason)``."""
    if key not in record:
        return "", f"missing field {key!r}"
    value = record[key]
    if not isinstance(value, str):
        return "", f"field {key!r} is {json_type(value)}, not a string"
    if not value.strip():
        return "", f"empty field {key!r}"
    return value, None


def iter_table(
    path: Path, problems: Problems, fmt: str, required: list[str], header: list[str] | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """``(file:line, row)`` of a CSV/TSV file; the first row is the header unless ``header`` is given.

    CSV follows RFC 4180 quoting; TSV has no quoting at all (``csv.QUOTE_NONE``), as TSV files in
    the wild put bare quote characters in text. Rows with the wrong number of fields or an empty
    required field are malformed; blank rows are ignored; a required column missing from the
    header is a :class:`DataError` regardless of ``on_error``.
    """
    dialect = {"delimiter": ","} if fmt == "csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle, **dialect)
        for start, row in _csv_rows(reader, path, problems):
            if header is None:
                header = [name.strip() for name in row]
                _check_header(path, start, header, required)
                continue
            where = f"{path}:{start}"
            reason = _row_problem(row, header, required)
            if reason:
                problems.report(where, reason)
            else:
                yield where, dict(zip(header, row, strict=True))


def _csv_rows(reader: Any, path: Path, problems: Problems) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the line they start on (a quoted field may span lines)."""
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            problems.report(f"{path}:{start}", f"CSV error: {error}")
            start = reader.line_num + 1
            continue
        if row and any(field.strip() for field in row):
            yield start, row
        start = reader.line_num + 1


def _check_header(path: Path, line: int, header: list[str], required: list[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{path}:{line}: header has no column {missing[0]!r}; columns are {header}")


def _row_problem(row: list[str], header: list[str], required: list[str]) -> str | None:
    if len(row) != len(header):
        return f"expected {len(header)} fields, got {len(row)}"
    if any(_BAD_UTF8.search(field) for field in row):
        return "invalid UTF-8"
    values = dict(zip(header, row, strict=True))
    empty = [name for name in required if not values[name].strip()]
    return f"empty field {empty[0]!r}" if empty else None


# ----------------------------------------------------------------------------- Hugging Face hub


def parse_hf_source(spec: str) -> tuple[str, str | None, str]:
    """Split ``hf:...`` into ``(path, config, split)`` for ``datasets.load_dataset``.

    Forms: ``hf:NAME[:SPLIT]``, ``hf:NAME/CONFIG[:SPLIT]`` (e.g. ``hf:wikitext/wikitext-2-raw-v1:train``),
    ``hf:ORG/NAME/CONFIG[:SPLIT]``, and the explicit ``hf:PATH:CONFIG:SPLIT`` (CONFIG may be empty),
    which is the one to use for ``ORG/NAME`` without a config or for a local directory path.
    The split defaults to ``train``.
    """
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"{spec!r}: expected hf:NAME[/CONFIG][:SPLIT] or hf:PATH:CONFIG:SPLIT")
    split = (parts[-1] if len(parts) > 1 else "") or "train"
    if len(parts) == 3:
        return parts[0], parts[1] or None, split
    segments = parts[0].split("/")
    if Path(parts[0]).exists() or len(segments) == 1:
        return parts[0], None, split
    if len(segments) > 3:
        raise DataError(f"{spec!r}: too many '/' parts; use hf:PATH:CONFIG:SPLIT")
    return "/".join(segments[:-1]), segments[-1], split


def _hf_texts(spec: str, column: str, problems: Problems) -> Iterator[str]:
    """Stream one string column of a Hugging Face dataset (needs the optional ``datasets`` package)."""
    path, config, split = parse_hf_source(spec)
    try:
        import datasets
    except ImportError as error:
        raise DataError(
            f"{spec}: Hugging Face datasets need the `datasets` package: pip install datasets"
        ) from error
    try:
        rows = datasets.load_dataset(path, config, split=split, streaming=True)
    except Exception as error:  # network, unknown name, bad config: say which call failed
        raise DataError(
            f"{spec}: load_dataset({path!r}, {config!r}, split={split!r}) failed: {error}"
        ) from error
    for index, record in enumerate(rows):
        text, reason = string_field(record, column)
        if reason:
            problems.report(f"{spec}:row {index}", reason)
        else:
            yield text
