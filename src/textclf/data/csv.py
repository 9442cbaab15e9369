"""`data=csv`: a CSV, TSV or JSON Lines (.jsonl) file with a text and a label column (labels
strings or ints), and optionally a test file; without one, `data.test_fraction` of the file is
the test split. Rows without a label are dropped and counted, or refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..config import ConfigError, DataConfig, check, one_of
from .core import DataError, Raw, Split, as_split, require_path
from .table import NUMBER, canonical_label, read_table

log = logging.getLogger(__name__)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # from a lone JSON escape (\ud83d)


@dataclass
class CsvConfig(DataConfig):
    source: str = "csv"
    path: str | None = None  # the training file (required)
    test_path: str | None = None  # a test file; without it test_fraction of path is test
    text_column: str = "text"
    label_column: str = "label"  # labels may be strings or ints
    classes: list[str] | None = None  # the allowed labels in order (default: sorted)
    # rows whose label is empty, whitespace, null or NaN: drop (counted) | error (refuse)
    missing_labels: str = "drop"
    # the field separator of a .csv/.tsv file (default: "," for .csv, a tab for .tsv);
    # '\t' (as typed on a command line) is a tab
    delimiter: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self.missing_labels, "data.missing_labels", ("drop", "error"))
        if self.delimiter == "\\t":
            self.delimiter = "\t"
        check(
            self.delimiter is None or (len(self.delimiter) == 1 and self.delimiter not in '"\r\n'),
            "data.delimiter",
            f"must be one character other than a quote or line break, got {self.delimiter!r}",
        )
        require_path(self)

    def location(self) -> str | None:
        return self.path

    def origin(self, split: str) -> str:
        # validation is carved from the training file; test too without data.test_path
        file = self.test_path if split == "test" and self.test_path else self.path
        return str(Path(str(file)).expanduser().resolve())


def _as_text(value: object, stats: dict[str, int]) -> str:
    """A text cell as a string (None: empty); a JSON string with a lone surrogate escape
    (not Unicode text) gets U+FFFD, counted as invalid UTF-8."""
    text = "" if value is None else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
        text = _SURROGATE.sub("\ufffd", text)
    return text


def _labelled_rows(
    path: Path, cfg: CsvConfig, part: str, stats: dict[str, int]
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
            f"(line {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})"
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


def load_table(cfg: CsvConfig) -> Raw:
    """Read a CSV, TSV or JSON Lines file (and an optional test file) of labelled texts. The
    classes are data.classes, in its order, else the training file's labels, sorted."""
    stats: dict[str, int] = {}
    assert cfg.path is not None  # CsvConfig requires it
    path = Path(cfg.path).expanduser()
    files = {"train": path} | ({"test": Path(cfg.test_path).expanduser()} if cfg.test_path else {})
    rows = {part: _labelled_rows(file, cfg, part, stats) for part, file in files.items()}
    if cfg.classes:
        class_names = _configured_classes(cfg.classes)
    else:  # by value when every label is a number
        labels = {label for _, label, _ in rows["train"]}
        class_names = sorted(labels, key=Decimal if all(map(NUMBER.fullmatch, labels)) else None)
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
        return as_split(
            [text for text, _, _ in rows[part]], [index[label] for _, label, _ in rows[part]]
        )

    return Raw(encode("train"), encode("test") if cfg.test_path else None, class_names, stats)
