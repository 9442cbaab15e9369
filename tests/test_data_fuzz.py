"""Random CSV, TSV and JSON Lines files (quoting, empty cells, any Unicode, byte-order marks,
CRLF, numeric and string labels, invalid bytes): loading keeps every labelled row with its text,
makes classes of the non-missing label values only, accounts for every row, and fails, when it
does, with the project's own error."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from textclf import data
from textclf.data.csv import CsvConfig

# Each label value, and ways a file may write it: all of them are one class.
SPELLINGS = {
    "1": ["1", " 1 ", "1.0", 1, 1.0],
    "2": ["2", "2.00", 2],
    "-3": ["-3", -3.0],
    "pos": ["pos", " pos\t"],
    "négatif": ["négatif"],
}
MISSING = ["", "   ", None, math.nan]  # in a CSV: empty, blank, empty, "nan"
INVALID = "\ue000"  # written as the invalid byte 0xff; never drawn as a character
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=INVALID), max_size=20
)


@st.composite
def labelled_rows(draw) -> list[tuple[str, tuple[str | None, object]]]:
    """Rows of (text, (label value or None, how the file spells it)) in random order: up to a
    dozen of each of two or three label values, and a few without a label."""
    values = draw(st.lists(st.sampled_from(list(SPELLINGS)), min_size=2, max_size=3, unique=True))
    rows = []
    for value, spellings in [*((v, SPELLINGS[v]) for v in values), (None, MISSING)]:
        label = st.tuples(st.just(value), st.sampled_from(spellings))
        rows += draw(st.lists(st.tuples(texts, label), max_size=5 if value is None else 12))
    return draw(st.permutations(rows))


def write(rows: list[tuple[str, object]], fmt: str, newline: str, quoting: int, bom: bool) -> bytes:
    if fmt == "jsonl":
        body = "".join(
            json.dumps({"text": t, "label": y}, ensure_ascii=False) + newline for t, y in rows
        )
    else:
        out = io.StringIO()
        writer = csv.writer(
            out, delimiter="," if fmt == "csv" else "\t", lineterminator=newline, quoting=quoting
        )
        writer.writerow(["text", "label"])
        writer.writerows([(t, "" if y is None else y) for t, y in rows])
        body = out.getvalue()
    raw = body.encode("utf-8").replace(INVALID.encode(), b"\xff")
    return (b"\xef\xbb\xbf" if bom else b"") + raw


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    rows=labelled_rows(),
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    bom=st.booleans(),
    invalid=st.booleans(),
)
def test_random_table_files_load_or_fail_with_the_projects_error(
    rows, fmt, newline, quoting, bom, invalid
):
    if newline == "\n" and fmt != "jsonl":  # csv writes a lone \r unquoted then: no valid CSV
        rows = [(t.replace("\r", ""), y) for t, y in rows]
    if invalid and rows:
        rows[0] = (rows[0][0] + INVALID, rows[0][1])
    written = [(t, s) for t, (_, s) in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"r.{fmt}"
        path.write_bytes(write(written, fmt, newline, quoting, bom))
        cfg = CsvConfig(path=str(path))
        kept = [(t.replace(INVALID, "\ufffd"), value) for t, (value, _) in rows if value]
        try:
            raw = data.csv.load_table(cfg)
        except data.DataError as error:
            assert len({value for _, value in kept}) < 2, error  # the only refusal here
            event("refused: fewer than two classes")
            return
        assert set(raw.class_names) == {value for _, value in kept}
        assert Counter(raw.class_names[i] for i in raw.train.labels) == Counter(
            value for _, value in kept
        )
        assert raw.train.texts == [t for t, _ in kept]
        assert raw.stats["rows_read_train"] == len(rows)
        assert raw.stats["missing_label_dropped_train"] == len(rows) - len(kept)
        assert raw.stats["invalid_utf8"] == int(invalid)
        try:
            ds = data.load(cfg)
        except data.DataError:
            event("read; split refused")  # a class too small, or no text left: named
            return
        assert set(ds.class_names) <= {value for _, value in kept}
        dropped = sum(n for k, n in ds.stats.items() if "_dropped_" in k)
        assert dropped + len(ds.train) + len(ds.val) + len(ds.test) == len(rows)
        event("read and split")
