"""Load labelled texts from TFDS, the aclImdb layout or a CSV/TSV/JSONL file, and split them.

Every loader returns plain Python lists; `split` then carves validation (and, when the source
has none, test) data with a fixed seed, so test data never reaches vocabulary or early stopping.
Nothing about a user's data is guessed: decoding is stated and counted, a missing label is no
class, spellings of one label are one class, and every class is in the training split; what
was dropped, and why, is counted (`report`), and so are repeated texts, texts given two labels
and test or validation rows repeating training ones (`repeats`; `data.duplicates` keeps,
drops or refuses them).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import re
import socket
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np

from . import progress
from .config import ConfigError, DataConfig

log = logging.getLogger(__name__)
IMDB_CLASSES = ["neg", "pos"]
IMDB_HOST = "ai.stanford.edu"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Control characters and Unicode line separators (IMDB has \x85, \x96, \x97): as vocabulary
# terms they break the saved model, whose vocabulary file is read back line by line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # from a lone JSON escape (\ud83d)


class DataError(ValueError):
    """Data that cannot be used; the message says which file or row and how to fix it."""


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int32 class indices
    groups: np.ndarray | None = None  # what rows share (aclImdb: the movie), if known

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class Raw:
    """What a loader returns: texts and integer labels, per split (test may be None)."""

    train: Split
    test: Split | None
    class_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)


def clean(text: str) -> str:
    """HTML line breaks and control characters become spaces; surrounding whitespace goes."""
    return _CONTROL.sub(" ", _BREAK.sub(" ", text)).strip()


def _decode(raw: bytes, stats: dict[str, int]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
        return raw.decode("utf-8", errors="replace")


def _warn_invalid_utf8(where: object, stats: dict[str, int]) -> None:
    if stats.get("invalid_utf8"):
        log.warning(
            "%s: %d text(s) held invalid UTF-8, replaced by U+FFFD (data_invalid_utf8)",
            where,
            stats["invalid_utf8"],
        )


# --- aclImdb: the Stanford layout, as a folder or the .tar.gz itself ---------------------------

# reviews: train/pos/<id>_<rating>.txt; URL lists (a line per review id): train/urls_pos.txt
_ACL_MEMBER = re.compile(r"(?:^|/)(train|test)/(?:(pos|neg)/(\d+)_\d+|urls_(pos|neg))\.txt$")
_MOVIE = re.compile(r"/title/(tt\d+)")
URLS_FOLDER = "aclImdb_urls"  # beside an archive that lacks the lists, as in shared/data/


def _acl_files(path: Path) -> Iterator[tuple[re.Match, bytes]]:
    """(name match, content) of every review and URL list in a folder or a tar archive."""
    if path.is_dir():
        for file in sorted(path.rglob("*.txt")):
            match = _ACL_MEMBER.search(file.relative_to(path).as_posix())
            if match:
                yield match, file.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                match = _ACL_MEMBER.search(member.name)
                if member.isfile() and match:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield match, handle.read()
    except tarfile.TarError as error:
        raise DataError(
            f"{path} is neither a folder nor a readable tar archive ({error}). "
            "Pass the extracted aclImdb folder or aclImdb_*.tar.gz."
        ) from error


def load_aclimdb(path: str | Path, urls_path: str | Path | None = None) -> Raw:
    """Read `train/{pos,neg}` and `test/{pos,neg}` reviews from a folder or a tar archive, and
    each training review's movie from the URL lists when they are found: in `urls_path`, else
    inside the archive (`train/urls_pos.txt`, ...), else in an `aclImdb_urls/` folder beside it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"data.path={path} does not exist. Point it at the extracted aclImdb "
            "folder or at the archive (e.g. ../shared/data/aclImdb_labeled.tar.gz)."
        )
    stats: dict[str, int] = {}
    reviews: dict[str, list[tuple[str, int, int]]] = {"train": [], "test": []}
    urls: dict[tuple[str, str], list[str]] = {}
    for match, raw in _acl_files(path):
        split, polarity, review_id, url_polarity = match.groups()
        if url_polarity:
            urls[(split, url_polarity)] = raw.decode("utf-8", errors="replace").splitlines()
        else:
            reviews[split].append(
                (_decode(raw, stats), IMDB_CLASSES.index(polarity), int(review_id))
            )
    for split in ("train", "test"):
        if not reviews[split]:
            raise DataError(
                f"{path} has no {split}/pos/*.txt or {split}/neg/*.txt reviews: "
                "it is not in the aclImdb layout (train/{pos,neg}, test/{pos,neg})."
            )
    outside = Path(urls_path).expanduser() if urls_path else path.parent / URLS_FOLDER
    if urls_path or (not urls and outside.is_dir()):
        urls = _url_lists(outside)
    train, test = (reviews[s] for s in ("train", "test"))
    groups = _movies(train, urls) if urls else None
    _warn_invalid_utf8(path, stats)
    return Raw(
        Split([t for t, _, _ in train], np.array([y for _, y, _ in train], np.int32), groups),
        _split([t for t, _, _ in test], [y for _, y, _ in test]),
        list(IMDB_CLASSES),
        stats,
    )


def _url_lists(folder: Path) -> dict[tuple[str, str], list[str]]:
    lists = {}
    for split in ("train", "test"):
        for polarity in ("pos", "neg"):
            file = folder / split / f"urls_{polarity}.txt"
            if not file.is_file():
                raise DataError(
                    f"data.urls_path: {file} does not exist; point data.urls_path "
                    "at the folder holding train/urls_pos.txt, train/urls_neg.txt, ..."
                )
            lists[(split, polarity)] = file.read_text(encoding="utf-8").splitlines()
    return lists


def _movies(reviews: list[tuple[str, int, int]], urls: dict) -> np.ndarray:
    """The IMDb title of each training review: line <id> of its class's URL list."""
    movies = []
    for _, label, review_id in reviews:
        lines = urls.get(("train", IMDB_CLASSES[label]), [])
        found = _MOVIE.search(lines[review_id]) if review_id < len(lines) else None
        if not found:
            raise DataError(
                f"the URL list train/urls_{IMDB_CLASSES[label]}.txt has no movie "
                f"for review {review_id}; check data.urls_path."
            )
        movies.append(found.group(1))
    return np.array(movies)


# --- CSV, TSV and JSON Lines -----------------------------------------------------------------

# The format follows the extension: a delimiter for delimited text, None for JSON Lines.
TABLE_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None, ".ndjson": None}
TABLE_SUFFIXES = tuple(TABLE_FORMATS)
# Tried when a delimited file does not read with its delimiter, on its header and first rows.
SNIFFED_DELIMITERS = (",", ";", "\t", "|")
SNIFFED_ROWS = 20
MIN_CLASS_ROWS = 2  # of each class in the training data: one to learn from, one to score on
# What `repeats` counts, in words: leakage first, then repeats and conflicting labels per split.
REPEATS = {
    "overlap_train_test": "test rows whose text is in the training data",
    "overlap_train_val": "validation rows whose text is in training",
    "duplicates_train": "training rows repeating a training text",
    "duplicates_val": "validation rows repeating a validation text",
    "duplicates_test": "test rows repeating a test text",
    "conflicts_train": "training rows whose text another training row labels otherwise",
    "conflicts_val": "validation rows whose text another one labels otherwise",
    "conflicts_test": "test rows whose text another test row labels otherwise",
}
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


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
    """`columns` of a CSV, TSV or JSON Lines file, chosen by its extension (`delimiter`
    overrides a delimited file's). Decoding is stated, never guessed: UTF-8, a leading byte-order
    mark dropped, invalid bytes replaced and counted (and logged). Errors name the file and the
    line; `fix` says which setting names the columns, `delimiter_key` which sets the delimiter
    (None: the caller has no such setting)."""
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
    separator = TABLE_FORMATS[suffix]
    if separator is None:
        if delimiter:
            raise DataError(
                f"{path} is JSON Lines: data.delimiter={delimiter!r} applies only "
                "to .csv and .tsv files; leave it unset."
            )
        names, records = _json_records(path, lines)
    else:
        names, records = _delimited_records(path, lines, delimiter or separator, delimiter_key)
    missing = [c for c in columns if c not in names]
    if missing:
        hint = _delimiter_hint(lines, delimiter or TABLE_FORMATS[suffix], delimiter_key, columns)
        raise DataError(f"{path} has no column(s) {missing}; it has {names}; {hint or fix}")
    table = Table({c: [] for c in columns}, [])
    for first, last, record in records:
        table.lines.append(first)
        table.invalid_utf8 += any(n in bad for n in range(first, last + 1))
        for column in columns:
            table.columns[column].append(record.get(column))
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
    lines: list[str], delimiter: str | None, key: str | None, columns: Sequence[str] = ()
) -> str:
    """When the header and first rows read cleanly with another common delimiter (a `;` export
    of a European-locale spreadsheet, a tab-separated file named .csv), which one and the
    setting `key` that reads with it; else "". One whose header holds `columns` comes first."""
    if delimiter is None:  # JSON Lines
        return ""
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
    if not _NUMBER.fullmatch(text):
        return text
    number = Decimal(text)
    if abs(number.adjusted()) > 30:  # no label is written so; keep the spelling
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _as_text(value: object, stats: dict[str, int]) -> str:
    """A text cell as a string (None: empty); a JSON string with a lone surrogate escape
    (not Unicode text) gets U+FFFD, counted as invalid UTF-8."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
        text = _SURROGATE.sub("\ufffd", text)
    return text


def _labelled_rows(
    path: Path, cfg: DataConfig, part: str, stats: dict[str, int]
) -> list[tuple[str, str, int]]:
    """(text, canonical label, line) of each row of `path` that has a label. Rows without one
    are dropped and counted as `missing_label_dropped_<part>`, or refused with
    data.missing_labels=error."""
    table = read_table(
        path,
        [cfg.text_column, cfg.label_column],
        "Set data.text_column / data.label_column.",
        cfg.delimiter,
    )
    rows, missing = [], []
    spellings: dict[str, set[str]] = {}
    for line, text, value in zip(
        table.lines, table[cfg.text_column], table[cfg.label_column], strict=True
    ):
        if isinstance(value, list | dict):
            raise DataError(
                f"{path}, line {line}: the label {value!r} is a JSON "
                f"{type(value).__name__}; a label is one string or number."
            )
        label = canonical_label(value)
        if label is None:
            missing.append(line)
            continue
        spellings.setdefault(label, set()).add(repr(value))
        rows.append((_as_text(text, stats), label, line))
    stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + table.invalid_utf8
    stats[f"rows_read_{part}"] = len(table)
    stats[f"missing_label_dropped_{part}"] = len(missing)
    if missing:
        where = (
            f"{path}: {len(missing)} row(s) without a label in column {cfg.label_column!r} "
            f"(line {_first(missing)})"
        )
        if cfg.missing_labels == "error":
            raise DataError(
                f"{where}; fill them in, or drop such rows with data.missing_labels=drop."
            )
        log.warning("%s dropped; data.missing_labels=error refuses such a file instead", where)
    merged = {label: sorted(s) for label, s in spellings.items() if len(s) > 1}
    if merged:
        log.info(
            "%s: label spellings taken as one class: %s",
            path,
            "; ".join(f"{label!r} <- {', '.join(s[:5])}" for label, s in merged.items()),
        )
    return rows


def _first(lines: list[int], shown: int = 5) -> str:
    return ", ".join(map(str, lines[:shown])) + (", ..." if len(lines) > shown else "")


def _configured_classes(classes: Sequence) -> list[str]:
    """data.classes in canonical spelling (`1.0` is class "1"), each once, none empty."""
    spelled = [canonical_label(c) for c in classes]
    names = [n for n in spelled if n is not None]
    if len(names) < len(spelled):
        raise ConfigError(f"data.classes: {list(classes)} holds an empty class; list only labels.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"data.classes: {list(classes)} lists {repeated} more than once "
            "(labels are compared as canonical values: ' 1', 1.0 and 1 are one)."
        )
    return names


def _refuse_case_twins(labels: set[str], listed: set[str], path: Path) -> None:
    """Labels differing only in case are one class misspelt or two classes: not a guess to make
    silently. Listing each in data.classes says they are distinct."""
    groups: dict[str, set[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), set()).add(label)
    twins = [sorted(g) for g in groups.values() if len(g) > 1 and not g <= listed]
    if twins:
        raise DataError(
            f"{path}: labels {twins[0]} differ only in case. Write each label one "
            "way, or, if they are different classes, list each in data.classes."
        )


def _sort_classes(values: set[str]) -> list[str]:
    if all(_NUMBER.fullmatch(v) for v in values):
        return sorted(values, key=Decimal)
    return sorted(values)


def load_table(cfg: DataConfig) -> Raw:
    """Read a CSV, TSV or JSON Lines file (and an optional test file) of labelled texts. The
    classes are data.classes, in its order, else the training file's labels, sorted."""
    stats: dict[str, int] = {}
    assert cfg.path is not None  # DataConfig requires it for data=csv
    path = Path(cfg.path).expanduser()
    files = {"train": path} | ({"test": Path(cfg.test_path).expanduser()} if cfg.test_path else {})
    rows = {part: _labelled_rows(file, cfg, part, stats) for part, file in files.items()}
    if cfg.classes:
        class_names = _configured_classes(cfg.classes)
    else:
        class_names = _sort_classes({label for _, label, _ in rows["train"]})
    found = {label for part in rows.values() for _, label, _ in part}
    _refuse_case_twins(found | set(class_names), set(class_names) if cfg.classes else set(), path)
    if len(class_names) < 2:
        raise DataError(
            f"{path} has {len(class_names)} distinct label(s) {class_names}; "
            "a classifier needs at least two."
        )
    index = {name: i for i, name in enumerate(class_names)}

    def encode(part: str) -> Split:
        for _, label, line in rows[part]:
            if label not in index:
                fix = (
                    "add it to data.classes or fix the row"
                    if cfg.classes
                    else "the model could never predict it: fix the row, or add training rows"
                )
                raise DataError(
                    f"{files[part]}, line {line}: label {label!r} is not one of "
                    f"{class_names} ({fix})."
                )
        return _split(
            [text for text, _, _ in rows[part]], [index[label] for _, label, _ in rows[part]]
        )

    return Raw(encode("train"), encode("test") if cfg.test_path else None, class_names, stats)


# --- TFDS imdb_reviews -----------------------------------------------------------------------


def host_reachable(host: str = IMDB_HOST, port: int = 80, timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds instead of TFDS's retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_imdb(data_dir: str | None, manual_dir: str | None, download: bool) -> Raw:
    """`tfds.load("imdb_reviews")`, failing fast with the alternatives when it cannot download."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("imdb_reviews", data_dir=data_dir)
    if not builder.is_prepared():
        archive = Path(manual_dir).expanduser() / IMDB_ARCHIVE if manual_dir else None
        manual = archive if archive is not None and archive.exists() else None
        if manual is None and (not download or not host_reachable()):
            reason = (
                "download is disabled (data.download=false)"
                if not download
                else f"{IMDB_HOST} cannot be reached (no network?)"
            )
            raise DataError(
                f"imdb_reviews is not prepared in {builder.data_dir} and {reason}. Alternatives:\n"
                "  data=aclimdb data.path=<aclImdb folder or aclImdb*.tar.gz>  (no TFDS needed)\n"
                f"  data.manual_dir=<folder holding {IMDB_ARCHIVE}>  (the original archive)\n"
                "  data.data_dir=<a TFDS data_dir where imdb_reviews is already prepared>\n"
                "  data=csv data.path=<file.csv or .jsonl> with text and label columns"
            )
        config = tfds.download.DownloadConfig(manual_dir=str(manual.parent) if manual else None)
        builder.download_and_prepare(download_config=config)
    splits: list[Split] = []
    stats: dict[str, int] = {}
    for name in ("train", "test"):
        texts, labels = [], []
        for text, label in tfds.as_numpy(builder.as_dataset(split=name, as_supervised=True)):
            texts.append(_decode(text, stats))
            labels.append(int(label))
        splits.append(_split(texts, labels))
    _warn_invalid_utf8("imdb_reviews", stats)
    return Raw(splits[0], splits[1], list(IMDB_CLASSES), stats)


# --- splitting -------------------------------------------------------------------------------


def _split(texts: list[str], labels: list[int] | np.ndarray) -> Split:
    return Split(list(texts), np.asarray(labels, dtype=np.int32))


def _take(split: Split, index: np.ndarray) -> Split:
    groups = None if split.groups is None else split.groups[index]
    return Split([split.texts[i] for i in index], split.labels[index], groups)


def _by_group(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting whole groups (movies), in random order, until `fraction` of
    the rows: no group is on both sides."""
    names, counts = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    taken = np.cumsum(counts[order]) <= max(1, round(fraction * len(groups)))
    taken[0] = True
    return np.isin(groups, names[order[taken]])


def _stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting `fraction` of each class: at least one row of it, but never its
    last one, which stays unselected (in training) so that every class is learnt."""
    chosen = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        chosen[rows[: min(max(1, round(len(rows) * fraction)), len(rows) - 1)]] = True
    return chosen


def _balanced_subset(split: Split, n: int, rng: np.random.Generator) -> Split:
    """`n` rows, as evenly spread over the classes as they allow, in shuffled order."""
    classes = np.unique(split.labels)
    rows = [rng.permutation(np.flatnonzero(split.labels == c)) for c in classes]
    picked: list[int] = []
    per_class = [0] * len(classes)
    while len(picked) < min(n, len(split)):
        for i, cls_rows in enumerate(rows):
            if per_class[i] < len(cls_rows) and len(picked) < n:
                picked.append(int(cls_rows[per_class[i]]))
                per_class[i] += 1
    return _take(split, rng.permutation(np.asarray(picked)))


def _drop_empty(split: Split, name: str, stats: dict[str, int]) -> Split:
    texts = [clean(t) for t in split.texts]
    keep = np.array([bool(t) for t in texts], dtype=bool)
    stats[f"empty_dropped_{name}"] = int((~keep).sum())
    groups = None if split.groups is None else split.groups[keep]
    kept = Split([t for t, k in zip(texts, keep, strict=True) if k], split.labels[keep], groups)
    if not len(kept):
        raise DataError(f"the {name} split is empty after dropping empty reviews.")
    return kept


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    return dict(
        zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist(), strict=True)
    )


def require_rows(labels: np.ndarray, class_names: list[str], minimum: int, where: str) -> None:
    """Refuse a class with fewer than `minimum` rows in `labels`, naming it and its count."""
    few = {c: n for c, n in class_counts(labels, class_names).items() if n < minimum}
    if few:
        shown = ", ".join(f"{c!r} ({n})" for c, n in list(few.items())[:10])
        need = "one to learn from" + (" and one to validate or test on" if minimum > 1 else "")
        raise DataError(
            f"{where}: class(es) {shown} have fewer than {minimum} row(s); every class needs "
            f"{need}. Add rows of them, or remove their rows (and them from data.classes)."
        )


def _note_missing_classes(
    part: Split, name: str, class_names: list[str], stats: dict[str, int]
) -> None:
    """Count, and say once, which classes a validation or test split has no row of."""
    absent = [c for c, n in class_counts(part.labels, class_names).items() if not n]
    stats[f"classes_without_{name}"] = len(absent)
    if absent:
        log.warning(
            "the %s split has no row of class(es) %s: too few rows of them to spare "
            "one; their %s scores are missing",
            name,
            absent[:10],
            name,
        )


def split(raw: Raw, cfg: DataConfig) -> Dataset:
    """Clean, drop empty reviews, subset (`limit`), and carve validation/test with `seed`,
    stratified by class: each class needs MIN_CLASS_ROWS training rows, keeps at least one in
    training, and is named (and counted) when too small to spare one for validation or test."""
    val_fraction, test_fraction, limit = cfg.val_fraction, cfg.test_fraction, cfg.limit
    rng = np.random.default_rng(cfg.seed)
    stats = dict(raw.stats)
    where = cfg.path or cfg.source
    stats.setdefault("rows_read_train", len(raw.train))
    train = _drop_empty(raw.train, "train", stats)
    kept = "with text" + (", deduplicated" if cfg.duplicates == "drop" else "")
    if cfg.duplicates == "drop":
        train = _dedupe(train, "train", stats)
    require_rows(train.labels, raw.class_names, MIN_CLASS_ROWS, f"{where} ({kept})")
    if raw.test is None:
        is_test = _stratified(train.labels, test_fraction, rng)
        train, test = _take(train, np.flatnonzero(~is_test)), _take(train, np.flatnonzero(is_test))
    else:
        stats.setdefault("rows_read_test", len(raw.test))
        test = _drop_empty(raw.test, "test", stats)
        if cfg.duplicates == "drop":
            test = _dedupe(test, "test", stats)
            train = _drop_seen(train, set(test.texts), stats)
            require_rows(train.labels, raw.class_names, MIN_CLASS_ROWS, f"{where} ({kept})")
    if limit:
        before = len(train), len(test)
        train, test = _balanced_subset(train, limit, rng), _balanced_subset(test, limit, rng)
        stats.update(
            limit_dropped_train=before[0] - len(train), limit_dropped_test=before[1] - len(test)
        )
    by_movie = cfg.val_split == "by_movie" or (cfg.val_split == "auto" and train.groups is not None)
    if by_movie and train.groups is None:
        raise DataError(
            "data.val_split=by_movie needs each review's movie: data=aclimdb with "
            "its URL lists (inside the archive, or data.urls_path=<folder>)."
        )
    if cfg.val_split == "auto" and cfg.source == "aclimdb" and not by_movie:
        log.warning(
            "no aclImdb URL lists found (set data.urls_path): validation reviews are "
            "drawn at random, so reviews of one movie land on both sides"
        )
    if by_movie:
        assert train.groups is not None  # checked above
        is_val = _by_group(train.groups, val_fraction, rng)
    else:
        is_val = _stratified(train.labels, val_fraction, rng)
    val, train = _take(train, np.flatnonzero(is_val)), _take(train, np.flatnonzero(~is_val))
    if by_movie:
        assert val.groups is not None and train.groups is not None  # _take keeps them
        stats.update(
            val_movies=len(np.unique(val.groups)), train_movies=len(np.unique(train.groups))
        )
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if not len(part):
            raise DataError(
                f"the {name} split is empty; use more data or a smaller "
                "data.val_fraction / data.test_fraction."
            )
    require_rows(train.labels, raw.class_names, 1, "the training split")
    _note_missing_classes(val, "val", raw.class_names, stats)
    _note_missing_classes(test, "test", raw.class_names, stats)
    stats.update(repeats(train, val, test))
    _judge_repeats(stats, len(train), cfg, where)
    stats.update(train_size=len(train), val_size=len(val), test_size=len(test))
    return Dataset(train, val, test, raw.class_names, stats)


# --- duplicates, conflicting labels and leakage ----------------------------------------------


def _labels_by_text(part: Split) -> dict[str, set[int]]:
    labels: dict[str, set[int]] = {}
    for text, label in zip(part.texts, part.labels.tolist(), strict=True):
        labels.setdefault(text, set()).add(label)
    return labels


def repeats(train: Split, val: Split, test: Split) -> dict[str, int]:
    """What inflates or blurs a score, compared on the cleaned texts the model reads: rows
    repeating an earlier row's text in their split (`duplicates_<split>`), rows whose text
    another row of their split labels otherwise (`conflicts_<split>`), validation rows whose
    text is a training row's (`overlap_train_val`) and test rows whose text is in the training
    data, training or validation rows (`overlap_train_test`)."""
    counts = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        labels = _labels_by_text(part)
        counts[f"duplicates_{name}"] = len(part) - len(labels)
        counts[f"conflicts_{name}"] = sum(len(labels[t]) > 1 for t in part.texts)
    seen = set(train.texts)
    counts["overlap_train_val"] = sum(t in seen for t in val.texts)
    seen.update(val.texts)
    counts["overlap_train_test"] = sum(t in seen for t in test.texts)
    return counts


def _dedupe(part: Split, name: str, stats: dict[str, int]) -> Split:
    """Each text once (its first row), and no row of a text given two labels: which label is
    right cannot be known. Counted as `duplicate_dropped_<name>`, `conflict_dropped_<name>`."""
    labels, seen, keep = _labels_by_text(part), set(), []
    for i, text in enumerate(part.texts):
        if len(labels[text]) == 1 and text not in seen:
            keep.append(i)
        seen.add(text)
    conflicts = sum(len(labels[t]) > 1 for t in part.texts)
    stats[f"conflict_dropped_{name}"] = conflicts
    stats[f"duplicate_dropped_{name}"] = len(part) - len(keep) - conflicts
    return _take(part, np.asarray(keep, dtype=np.int64))


def _drop_seen(train: Split, test_texts: set[str], stats: dict[str, int]) -> Split:
    """Training rows whose text is in the test file go (the test file stays the benchmark)."""
    keep = np.array([t not in test_texts for t in train.texts], dtype=bool)
    stats["overlap_dropped_train"] = int((~keep).sum())
    return _take(train, np.flatnonzero(keep))


def _judge_repeats(counts: dict[str, int], train_rows: int, cfg: DataConfig, where: str) -> None:
    """Say what `repeats` found; refuse it with data.duplicates=refuse, and with `keep` when
    conflicting labels exceed data.max_conflicts of the training rows."""
    found = _repeats_found(counts)
    if not found:
        return
    if cfg.duplicates == "refuse":
        raise DataError(
            f"{where}: {found}. Repeated rows overstate accuracy and conflicting labels blur "
            "it: remove them from the data, or set data.duplicates=drop (one row per text, "
            "none with two labels, none of the test file in training) or data.duplicates=keep."
        )
    share = counts["conflicts_train"] / max(train_rows, 1)
    if share > cfg.max_conflicts:
        raise DataError(
            f"{where}: {counts['conflicts_train']} of {train_rows} training rows ({share:.1%}) "
            "carry a text that another row labels otherwise, more than data.max_conflicts="
            f"{cfg.max_conflicts:g}: a model cannot learn which label is right. Fix the "
            "labels, drop those rows with data.duplicates=drop, or keep them with "
            "data.max_conflicts=1."
        )
    log.warning(
        "%s: %s; scores on repeated rows overstate accuracy (data.duplicates=drop drops "
        "them, data.duplicates=refuse refuses such data)",
        where,
        found,
    )


def _repeats_found(counts: dict[str, int]) -> str:
    """The non-zero counts of `repeats`, in words, or ""."""
    return "; ".join(f"{counts[k]} {words} ({k})" for k, words in REPEATS.items() if counts.get(k))


def load(config: DataConfig) -> Dataset:
    """The configured source, cleaned and split."""
    if config.source == "imdb":
        raw = load_imdb(config.data_dir, config.manual_dir, config.download)
    elif config.source == "aclimdb":
        assert config.path is not None  # DataConfig requires it for data=aclimdb
        raw = load_aclimdb(config.path, config.urls_path)
    else:
        raw = load_table(config)
    return split(raw, config)


# --- lineage: which rows a run saw -----------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """One split as a run's MLflow dataset records it (`tracking` logs it): where its rows came
    from, how many there are, and a digest of them; runs with equal digests saw the same rows."""

    name: str  # train | val | test
    source: str  # the file or folder read, or tfds:<name>
    rows: int
    digest: str


def digest(part: Split, class_names: Sequence[str]) -> str:
    """A fingerprint of a split's texts and labels, in order: equal for the same rows however
    they were read, different when one text, one label or the order changes. Hashes whole
    arrays (each text's length, then all texts as one string), not row by row."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(list(class_names)).encode())
    h.update(np.asarray(part.labels, dtype=np.int64).tobytes())
    h.update(np.fromiter(map(len, part.texts), np.int64, len(part.texts)).tobytes())
    h.update("".join(part.texts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def lineage(
    dataset: Dataset, cfg: DataConfig, names: Sequence[str] = ("train", "val", "test")
) -> list[Lineage]:
    """The `names` splits of `dataset`, loaded as `cfg` says, as `Lineage` records."""

    def resolved(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    if cfg.source == "imdb":
        sources = dict.fromkeys(names, "tfds:imdb_reviews")
    else:  # validation is carved from the training file; test too without data.test_path
        assert cfg.path is not None  # DataConfig requires it for data=aclimdb and data=csv
        sources = dict.fromkeys(names, resolved(cfg.path))
        if cfg.source == "csv" and cfg.test_path and "test" in sources:
            sources["test"] = resolved(cfg.test_path)
    return [
        Lineage(
            name,
            sources[name],
            len(getattr(dataset, name)),
            digest(getattr(dataset, name), dataset.class_names),
        )
        for name in names
    ]


# --- the data report -------------------------------------------------------------------------


def report(class_names: list[str], counts: dict[str, int], labels: dict[str, np.ndarray]) -> dict:
    """What a run's data were (its `data_report.json`): rows read and dropped per reason (the
    `counts`: `rows_read_<file>`, `<reason>_dropped_<split>`, ...) and each split's rows per
    class. A class left without training rows (e.g. all its texts lost every token) is refused."""
    require_rows(labels["train"], class_names, 1, "the training split after tokenization")
    return {
        "classes": list(class_names),
        "counts": dict(counts),
        "splits": {name: class_counts(y, class_names) for name, y in labels.items()},
    }


def describe(data_report: dict) -> str:
    """The report as a few lines for the log."""
    counts = data_report["counts"]
    read = {
        k.removeprefix("rows_read_"): n for k, n in counts.items() if k.startswith("rows_read_")
    }
    dropped: dict[str, int] = {}
    for key, n in counts.items():
        reason, found, _ = key.rpartition("_dropped_")
        if found and n:
            dropped[reason] = dropped.get(reason, 0) + n
    lines = [f"data: rows read {_listed(read)}; dropped {_listed(dropped) or 'none'}"]
    for name, per_class in data_report["splits"].items():
        lines.append(f"  {name}: {sum(per_class.values())} rows ({_listed(per_class)})")
    notes = {
        k: counts[k]
        for k in ("invalid_utf8", "classes_without_val", "classes_without_test", *REPEATS)
        if counts.get(k)
    }
    if notes:
        lines.append(f"  to check: {_listed(notes)}")
    return "\n".join(lines)


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())
