"""Reading CSV, TSV and JSON Lines files, shared by `data=csv` and `textclf predict`'s files:
decoding stated and counted, the format chosen by the extension, malformed quoting and rows
of the wrong width refused (with the delimiter that would read them, when one does), and one
canonical spelling per label value."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from .. import progress
from .core import DataError

log = logging.getLogger(__name__)
# The format follows the extension: a delimiter for delimited text, None for JSON Lines.
TABLE_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None, ".ndjson": None}
TABLE_SUFFIXES = tuple(TABLE_FORMATS)
# Tried when a delimited file does not read with its delimiter, on its header and first rows.
SNIFFED_DELIMITERS = (",", ";", "\t", "|")
SNIFFED_ROWS = 20

NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass
class Table:
    """The records of a CSV/TSV/JSON Lines file: the asked-for columns' values (None where a
    JSON record lacks the key), the line each record starts on (for messages), and how many
    records held invalid UTF-8 (replaced by U+FFFD)."""

    columns: dict[str, list]
    lines: list[int]
    invalid_utf8: int = 0

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def __len__(self) -> int:
        return len(self.lines)


def read_table(
    path: Path,
    columns: Sequence[str],
    fix: str,
    delimiter: str | None = None,
    delimiter_key: str | None = "data.delimiter",
) -> Table:
    """`columns` of a CSV, TSV or JSON Lines file, by its extension (`delimiter` overrides a
    delimited file's), decoded as UTF-8 with invalid bytes replaced and counted. Errors name
    the file and the line; `fix` says which setting names the columns, `delimiter_key` which
    sets the delimiter (None: the caller has no such setting)."""
    if path.is_dir():
        raise DataError(
            f"data file {path} is a folder, not a file: data=csv reads one .csv, .tsv or "
            ".jsonl file (data.path=<file>); a folder in the aclImdb layout (train/{pos,neg}, "
            "test/{pos,neg}) is read by data=aclimdb data.path=<folder>."
        )
    if not path.is_file():
        raise DataError(f"data file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(
            f"{path}: {suffix or 'a file without an extension'} is not a supported "
            "format; use .csv, .tsv (or data.delimiter=<character> for another "
            "delimiter) or JSON Lines (.jsonl, .json, .ndjson)."
        )
    lines, bad = _decoded_lines(path)
    if TABLE_FORMATS[suffix] is None and delimiter:
        raise DataError(
            f"{path} is JSON Lines: data.delimiter={delimiter!r} applies only "
            "to .csv and .tsv files; leave it unset."
        )
    delimiter = delimiter or TABLE_FORMATS[suffix]
    if delimiter is None:
        names, records = _json_records(path, lines)
    else:
        names, records = _delimited_records(path, lines, delimiter, delimiter_key)
    missing = [c for c in columns if c not in names]
    if missing:
        hint = _delimiter_hint(lines, delimiter, delimiter_key, columns) if delimiter else ""
        raise DataError(f"{path} has no column(s) {missing}; it has {names}; {hint or fix}")
    table = Table(
        {c: [record.get(c) for _, _, record in records] for c in columns},
        [first for first, _, _ in records],
        sum(any(n in bad for n in range(first, last + 1)) for first, last, _ in records),
    )
    if table.invalid_utf8:
        log.warning(
            "%s: %d record(s) held invalid UTF-8, replaced by U+FFFD (first at line %d)",
            path,
            table.invalid_utf8,
            min(bad),
        )
    return table


def _decoded_lines(path: Path) -> tuple[list[str], set[int]]:
    """The file's lines, ends kept, and the numbers of those that held invalid UTF-8. Split as
    bytes, on \\n, \\r and \\r\\n only (no UTF-8 character holds those bytes): str.splitlines
    would also split inside texts holding U+2028 or \\x85."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16 (its byte-order mark says so); save it as UTF-8.")
    lines, bad = [], set()
    for number, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(True), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            bad.add(number)
            lines.append(line.decode("utf-8", errors="replace"))
    return lines, bad


def _reading(path: Path, lines: list[str]) -> Iterable[str]:
    """`lines`, ticking a bar as they are parsed: a file of a million reviews takes a while."""
    return progress.bar(lines, total=len(lines), desc=f"read {path.name}", unit="line")


Records = list[tuple[int, int, dict]]  # (first line, last line, {column: value}) per record


def _delimited_records(
    path: Path, lines: list[str], delimiter: str, key: str | None
) -> tuple[list[str], Records]:
    """A header, then one record per row; blank lines are skipped. Malformed quoting and rows
    whose field count differs from the header's are refused (never shifted into columns)."""
    csv.field_size_limit(2**31 - 1)  # one review may exceed the default 128 KB cell
    reader = csv.reader(_reading(path, lines), delimiter=delimiter, strict=True)
    rows, end = [], 0
    try:
        for fields in reader:
            first, end = end + 1, reader.line_num
            if fields and (len(fields) > 1 or fields[0].strip()):
                rows.append((first, end, fields))
    except csv.Error as error:
        raise DataError(
            f"{path}, line {end + 1}: malformed {_format_name(delimiter)} ({error}); "
            + (
                _delimiter_hint(lines, delimiter, key)
                or "quote fields that hold the delimiter, quotes or line breaks."
            )
        ) from error
    if not rows:
        raise DataError(f"{path} is empty: it needs a header row naming its columns.")
    (_, _, header), *rows = rows
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {repeated} more than once; "
            "rename them so each column has its own name."
        )
    records = []
    for first, last, fields in rows:
        if len(fields) != len(header):
            raise DataError(
                f"{path}, line {first}: {len(fields)} field(s) where the header has "
                f"{len(header)}; "
                + (
                    _delimiter_hint(lines, delimiter, key)
                    or f"quote fields that hold the delimiter {delimiter!r}, quotes or line breaks."
                )
            )
        records.append((first, last, dict(zip(header, fields, strict=True))))
    return header, records


def _delimiter_hint(
    lines: list[str], delimiter: str, key: str | None, columns: Sequence[str] = ()
) -> str:
    """When the header and first rows read cleanly with another common delimiter (a `;` export
    of a European-locale spreadsheet, a tab-separated file named .csv), which one and the
    setting `key` that reads with it; else "". One whose header holds `columns` comes first."""
    fits = [d for d in SNIFFED_DELIMITERS if d != delimiter and _reads_cleanly(lines, d)]
    fits.sort(key=lambda d: not set(columns) <= set(_header(lines, d)))
    if not fits:
        return ""
    how = f"set {key}={fits[0]!r}" if key else "save it comma-separated (or as .tsv for tabs)"
    return (
        f"its header and first rows read cleanly as {_format_name(fits[0])} "
        f"(columns {_header(lines, fits[0])}): {how}."
    )


def _records(lines: list[str], delimiter: str) -> Iterator[list[str]]:
    """The non-blank records, read lazily and strictly with `delimiter`."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    return (fields for fields in reader if fields and (len(fields) > 1 or fields[0].strip()))


def _header(lines: list[str], delimiter: str) -> list[str]:
    try:
        return next(_records(lines, delimiter), [])
    except csv.Error:
        return []


def _reads_cleanly(lines: list[str], delimiter: str) -> bool:
    """A header of 2+ fields, and up to SNIFFED_ROWS rows of as many, with no quoting error."""
    try:
        header, *rows = itertools.islice(_records(lines, delimiter), SNIFFED_ROWS + 1)
    except (csv.Error, ValueError):  # malformed, or no record at all
        return False
    return len(header) > 1 and bool(rows) and all(len(r) == len(header) for r in rows)


def _format_name(delimiter: str) -> str:
    return {",": "CSV", "\t": "TSV"}.get(delimiter, f"{delimiter!r}-delimited text")


def _json_records(path: Path, lines: list[str]) -> tuple[list[str], Records]:
    """One JSON object per non-blank line; its keys are the columns."""
    names: dict[str, None] = {}  # ordered, as first seen
    records = []
    for number, line in enumerate(_reading(path, lines), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except ValueError as error:  # JSONDecodeError, or a repeated key
            raise DataError(
                f"{path}, line {number}: cannot read it as JSON ({error}); JSON "
                "Lines holds one object per line."
            ) from error
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {number}: a JSON {type(record).__name__}, not an "
                "object; JSON Lines holds one object per line."
            )
        names.update(dict.fromkeys(record))
        records.append((number, number, record))
    return list(names), records


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) < len(pairs):
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"it names column(s) {repeated} more than once")
    return record


def canonical_label(value: object) -> str | None:
    """One spelling per label value, or None for a missing one (an empty or whitespace-only
    cell, JSON null, NaN): labels are data, and a missing one is no class. Text is stripped;
    numbers go by value, integral ones written as ints (`1`, ` 1 `, `1.0`, JSON 1 → "1")."""
    if value is None:
        return None
    if isinstance(value, bool):  # JSON true/false, spelled as JSON spells them
        return str(value).lower()
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if not text or text.lower() in ("nan", "+nan", "-nan"):
        return None
    if not NUMBER.fullmatch(text):
        return text
    number = Decimal(text)
    if abs(number.adjusted()) > 30:  # no label is written so; keep the spelling
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")
