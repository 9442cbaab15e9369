"""Loaders for aclImdb (folder and archive), CSV/JSONL and TFDS; splitting and its guarantees."""

from __future__ import annotations

import csv
import json
import re
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from textclf import data
from textclf.config import ConfigError
from textclf.data.aclimdb import AclImdbConfig
from textclf.data.csv import CsvConfig
from textclf.data.imdb import ImdbConfig

from .conftest import reviews, write_csv


def write_acl_folder(root: Path, per_class: int = 6) -> Path:
    for split in ("train", "test"):
        for polarity, (text, _) in zip(("neg", "pos"), reviews(2), strict=True):
            folder = root / "aclImdb" / split / polarity
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}_{7 if polarity == 'pos' else 2}.txt").write_text(
                    f"{text} number {i}<br />the end", encoding="utf-8"
                )
    (root / "aclImdb" / "README").write_text("not a review")
    return root / "aclImdb"


def csv_config(path: Path | str = "unused.csv", **kw) -> CsvConfig:
    return CsvConfig(path=str(path), **kw)


def test_aclimdb_folder_and_archive_give_the_same_reviews(tmp_path):
    folder = write_acl_folder(tmp_path / "src")
    archive = tmp_path / "acl.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    a, b = data.aclimdb.load_aclimdb(folder), data.aclimdb.load_aclimdb(archive)
    assert sorted(a.train.texts) == sorted(b.train.texts)
    assert len(a.train) == len(a.test) == 12
    assert sorted(a.train.labels.tolist()) == [0] * 6 + [1] * 6
    assert a.class_names == ["neg", "pos"]


def test_aclimdb_rejects_other_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="aclImdb layout"):
        data.aclimdb.load_aclimdb(tmp_path / "empty")
    with pytest.raises(data.DataError, match="does not exist"):
        data.aclimdb.load_aclimdb(tmp_path / "missing.tar.gz")
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_text("hello")
    with pytest.raises(data.DataError, match="tar archive"):
        data.aclimdb.load_aclimdb(not_tar)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    folder = write_acl_folder(tmp_path)
    (folder / "train" / "pos" / "99_9.txt").write_bytes(b"caf\xe9 was great")
    raw = data.aclimdb.load_aclimdb(folder)
    assert raw.stats["invalid_utf8"] == 1
    assert "caf\ufffd was great" in raw.train.texts


def test_csv_with_string_labels_and_a_carved_test_split(tmp_path):
    path = write_csv(tmp_path / "r.csv", reviews(100))
    ds = data.load(CsvConfig(path=str(path), test_fraction=0.2, val_fraction=0.1))
    assert ds.class_names == ["neg", "pos"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (72, 8, 20)
    parts = [set(ds.train.texts), set(ds.val.texts), set(ds.test.texts)]
    assert sum(map(len, parts)) == len(set.union(*parts)) == 100  # disjoint, nothing lost


def test_jsonl_with_int_labels_and_three_classes(tmp_path):
    rows = [{"body": f"text {i} " + "word " * (i % 7), "y": i % 3} for i in range(90)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    test = tmp_path / "t.jsonl"
    test.write_text("\n".join(json.dumps(r) for r in rows[:30]))
    ds = data.load(
        CsvConfig(path=str(path), test_path=str(test), text_column="body", label_column="y")
    )
    assert ds.class_names == ["0", "1", "2"]
    assert len(ds.test) == 30 and set(ds.train.labels.tolist()) == {0, 1, 2}


def test_table_errors_name_the_file_row_and_fix(tmp_path):
    path = write_csv(tmp_path / "r.csv", reviews(10), header=("review", "label"))
    with pytest.raises(data.DataError, match=r"no column\(s\) \['text'\].*data.text_column"):
        data.csv.load_table(csv_config(path))
    path = write_csv(tmp_path / "s.csv", [*reviews(10), ("meh", "neutral")])
    with pytest.raises(data.DataError, match=r"s.csv, line 12: label 'neutral' is not one of"):
        data.csv.load_table(csv_config(path, classes=["neg", "pos"]))
    with pytest.raises(data.DataError, match="does not exist"):
        data.csv.load_table(csv_config(tmp_path / "nope.csv"))


def test_split_cleans_breaks_drops_empty_and_is_deterministic(tmp_path):
    rows = [*reviews(60), ("   ", "pos"), ("<br /><br />", "neg")]
    raw = data.csv.load_table(csv_config(write_csv(tmp_path / "r.csv", rows)))
    a, b = data.split(raw, csv_config(seed=3)), data.split(raw, csv_config(seed=3))
    assert a.stats["empty_dropped_train"] == 2
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    assert not any("<br" in t for t in a.train.texts + a.val.texts + a.test.texts)
    assert len(a.train) + len(a.val) + len(a.test) == 60


def test_limit_keeps_a_balanced_subset_of_train_and_test(tmp_path):
    raw = data.csv.load_table(csv_config(write_csv(tmp_path / "r.csv", reviews(200))))
    ds = data.split(raw, csv_config(val_fraction=0.25, limit=40))
    assert len(ds.test) == 40 and np.bincount(ds.test.labels).tolist() == [20, 20]
    assert len(ds.train) + len(ds.val) == 40
    assert np.bincount(np.concatenate([ds.train.labels, ds.val.labels])).tolist() == [20, 20]


def test_a_split_emptied_by_filtering_is_an_error(tmp_path):
    path = write_csv(tmp_path / "r.csv", [("", "pos"), (" ", "neg")])
    raw = data.csv.load_table(csv_config(path))
    with pytest.raises(data.DataError, match="empty"):
        data.split(raw, csv_config())


def test_imdb_through_tfds_mock_data(monkeypatch, tmp_path):
    # mock_data never downloads
    monkeypatch.setattr(data.imdb, "host_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load(ImdbConfig(data_dir=str(tmp_path)))
    assert ds.class_names == ["neg", "pos"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24
    assert all(isinstance(t, str) for t in ds.train.texts)


def test_imdb_offline_fails_fast_naming_the_alternatives(tmp_path, monkeypatch):
    """Offline (simulated, whatever this machine's network): a clear error, and TFDS' download,
    which would retry for minutes, is never started."""
    import tensorflow_datasets.core.dataset_builder as builders

    monkeypatch.setattr(data.imdb, "host_reachable", lambda *a, **k: False)
    monkeypatch.setattr(
        builders.DatasetBuilder,
        "download_and_prepare",
        lambda *a, **k: pytest.fail("started a download offline"),
    )
    with pytest.raises(data.DataError) as error:
        data.imdb.load_imdb(str(tmp_path), None, True)
    assert "cannot be reached" in str(error.value)
    for alternative in ("data=aclimdb", "data.manual_dir", "data.data_dir", "data=csv"):
        assert alternative in str(error.value)


def test_the_reachability_probe_answers_no_for_a_closed_port():
    with socket.socket() as s:  # bound, never listening: connections are refused at once
        s.bind(("127.0.0.1", 0))
        assert data.imdb.host_reachable("127.0.0.1", s.getsockname()[1], timeout=2) is False


def test_imdb_without_download_fails_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(data.imdb, "host_reachable", lambda *a, **k: pytest.fail("probed network"))
    with pytest.raises(data.DataError, match="download is disabled"):
        data.imdb.load_imdb(str(tmp_path), None, False)


def write_url_lists(folder: Path, per_class: int, movies: int = 3) -> Path:
    """URL lists in aclImdb's layout: review i of each class reviews movie tt000000<i % movies>."""
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for polarity in ("pos", "neg"):
            lines = [
                f"http://www.imdb.com/title/tt000000{i % movies}/usercomments"
                for i in range(per_class)
            ]
            (folder / split / f"urls_{polarity}.txt").write_text("\n".join(lines) + "\n")
    return folder


def movies_of(split: data.Split) -> set[str]:
    return set(split.groups.tolist())


@pytest.mark.parametrize("where", ["inside", "data.urls_path", "beside"])
def test_validation_by_movie_keeps_every_movie_on_one_side(tmp_path, where):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    lists = {
        "inside": folder,
        "data.urls_path": tmp_path / "lists",
        "beside": tmp_path / "acl" / data.aclimdb.URLS_FOLDER,
    }[where]
    write_url_lists(lists, per_class=30, movies=10)
    urls = str(lists) if where == "data.urls_path" else None
    ds = data.load(AclImdbConfig(path=str(folder), urls_path=urls, val_fraction=0.2))
    assert movies_of(ds.val) and not movies_of(ds.val) & movies_of(ds.train)
    assert len(movies_of(ds.val)) + len(movies_of(ds.train)) == 10
    assert ds.stats["val_movies"] == len(movies_of(ds.val))
    assert len(ds.val) + len(ds.train) == 60 and 0 < len(ds.val) <= 12 + 6  # ~20%, whole movies


def test_without_url_lists_the_split_is_random_and_says_so_once(tmp_path, caplog):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    with caplog.at_level("WARNING", logger="textclf.data"):
        ds = data.load(AclImdbConfig(path=str(folder)))
    assert ds.train.groups is None and len(ds.val) == 6
    assert sum("URL lists" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(data.DataError, match="val_split=by_movie needs"):
        data.load(AclImdbConfig(path=str(folder), val_split="by_movie"))
    with pytest.raises(data.DataError, match="urls_pos.txt does not exist"):
        data.load(AclImdbConfig(path=str(folder), urls_path=str(tmp_path)))


def test_a_url_list_missing_a_review_is_named(tmp_path):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    write_url_lists(folder, per_class=20)  # reviews 20..29 have no line
    with pytest.raises(data.DataError, match="has no movie for review 2[0-9]"):
        data.aclimdb.load_aclimdb(folder)


# --- labels are data -------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_missing_labels_are_no_class_dropped_and_counted_or_refused(tmp_path, caplog):
    rows = [*reviews(40), ("no label", ""), ("blank label", "   "), *reviews(4, seed=1)]
    csv_path = write_csv(tmp_path / "r.csv", rows)
    records = [{"text": t, "label": y} for t, y in reviews(40)]
    records += [{"text": "null", "label": None}, {"text": "no key"}, {"text": "empty", "label": ""}]
    jsonl = write_jsonl(tmp_path / "r.jsonl", records)
    (tmp_path / "nan.jsonl").write_text(
        jsonl.read_text() + '{"text": "not a number", "label": NaN}\n', encoding="utf-8"
    )
    for path, missing in ((csv_path, 2), (jsonl, 3), (tmp_path / "nan.jsonl", 4)):
        with caplog.at_level("WARNING", logger="textclf.data"):
            raw = data.csv.load_table(csv_config(path))
        assert raw.class_names == ["neg", "pos"], path
        assert raw.stats["missing_label_dropped_train"] == missing
        assert raw.stats["rows_read_train"] == len(raw.train) + missing
        assert "without a label" in caplog.text
    with pytest.raises(
        data.DataError,
        match=r"r.csv: 2 row\(s\) without a label .*line 42, 43"
        r".*data.missing_labels=drop",
    ):
        data.csv.load_table(csv_config(csv_path, missing_labels="error"))
    with pytest.raises(ConfigError, match="data.missing_labels"):
        csv_config(csv_path, missing_labels="keep")


def test_spellings_of_one_label_value_are_one_class(tmp_path):
    spellings = ["1", " 1 ", "1.0", "2", "2.00", " 2"]
    csv_path = write_csv(
        tmp_path / "r.csv", [(t, spellings[i % 6]) for i, (t, _) in enumerate(reviews(60))]
    )
    labels = [1, 1.0, "1", " 2 ", 2, "2.0"]
    jsonl = write_jsonl(
        tmp_path / "r.jsonl",
        [{"text": t, "label": labels[i % 6]} for i, (t, _) in enumerate(reviews(60))],
    )
    for path in (csv_path, jsonl):
        raw = data.csv.load_table(csv_config(path))
        assert raw.class_names == ["1", "2"]
        assert np.bincount(raw.train.labels).tolist() == [30, 30]
    # data.classes fixes the set and the order, in the same canonical spelling
    assert data.csv.load_table(csv_config(jsonl, classes=["2.0", "1"])).class_names == ["2", "1"]
    with pytest.raises(ConfigError, match=r"data.classes: .* lists \['1'\] more than once"):
        data.csv.load_table(csv_config(jsonl, classes=["1", "1.0", "2"]))


def test_labels_differing_only_in_case_are_refused_unless_listed(tmp_path):
    path = write_csv(
        tmp_path / "r.csv", [(t, "Pos" if i == 3 else y) for i, (t, y) in enumerate(reviews(40))]
    )
    with pytest.raises(data.DataError, match=r"labels \['Pos', 'pos'\] differ only in case"):
        data.csv.load_table(csv_config(path))
    raw = data.csv.load_table(csv_config(path, classes=["neg", "pos", "Pos"]))
    assert raw.class_names == ["neg", "pos", "Pos"]


# --- every class is learnable and scorable ---------------------------------------------------


def three_classes(tmp_path: Path, small: int) -> Path:
    rows = [(t, "a" if i % 2 else "b") for i, (t, _) in enumerate(reviews(60))]
    return write_csv(tmp_path / "r.csv", rows + [(f"rare text {i}", "c") for i in range(small)])


def test_a_small_class_stays_in_training_and_its_gaps_are_named(tmp_path, caplog):
    path = three_classes(tmp_path, small=2)
    with caplog.at_level("WARNING", logger="textclf.data"):
        ds = data.load(csv_config(path, seed=5))
    c = ds.class_names.index("c")
    assert (ds.train.labels == c).sum() == 1 and (ds.test.labels == c).sum() == 1
    assert (ds.val.labels == c).sum() == 0 and ds.stats["classes_without_val"] == 1
    assert ds.stats["classes_without_test"] == 0
    assert "no row of class(es) ['c']" in caplog.text
    again = data.load(csv_config(path, seed=5))  # stratified and reproducible with data.seed
    assert again.train.texts == ds.train.texts and again.val.texts == ds.val.texts


def test_a_class_below_the_minimum_is_refused_naming_it_and_its_count(tmp_path):
    with pytest.raises(
        data.DataError,
        match=r"r.csv \(with text\): class\(es\) 'c' \(1\) have "
        r"fewer than 2 row",
    ):
        data.load(csv_config(three_classes(tmp_path, small=1)))
    path = write_csv(tmp_path / "two.csv", reviews(40))
    with pytest.raises(data.DataError, match=r"'unseen' \(0\)"):
        data.load(csv_config(path, classes=["neg", "pos", "unseen"]))


# --- text decoding is stated -----------------------------------------------------------------


def plain(n: int) -> list[tuple[str, str]]:
    """Reviews without commas, to write as CSV by hand."""
    return [(t.replace(",", ""), y) for t, y in reviews(n)]


def lines(rows: list[tuple[str, str]], delimiter: str, end: str = "\n") -> bytes:
    return "".join(f"{t}{delimiter}{y}{end}" for t, y in rows).encode()


def test_invalid_utf8_is_replaced_and_counted_in_every_table_format(tmp_path, caplog):
    rows = plain(30)
    files = {
        "r.csv": b"text,label\n" + lines(rows, ",") + b"caf\xe9 fine,pos\n",
        "r.tsv": b"text\tlabel\n" + lines(rows, "\t") + b"caf\xe9 fine\tpos\n",
        "r.jsonl": b"".join(json.dumps({"text": t, "label": y}).encode() + b"\n" for t, y in rows)
        + b'{"text": "caf\xe9 fine", "label": "pos"}\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with caplog.at_level("WARNING", logger="textclf.data"):
            raw = data.csv.load_table(csv_config(tmp_path / name))
        assert raw.stats["invalid_utf8"] == 1, name
        assert "caf\ufffd fine" in raw.train.texts and len(raw.train) == 31
        assert f"{name}: 1 record(s) held invalid UTF-8" in caplog.text


def test_a_utf8_byte_order_mark_is_accepted_and_utf16_refused(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "r.csv").write_bytes(bom + write_csv(tmp_path / "x.csv", reviews(20)).read_bytes())
    (tmp_path / "r.jsonl").write_bytes(
        bom
        + write_jsonl(
            tmp_path / "x.jsonl", [{"text": t, "label": y} for t, y in reviews(20)]
        ).read_bytes()
    )
    for name in ("r.csv", "r.jsonl"):
        raw = data.csv.load_table(csv_config(tmp_path / name))
        assert len(raw.train) == 20 and raw.class_names == ["neg", "pos"], name
    (tmp_path / "u.csv").write_bytes("text,label\nfine,pos\n".encode("utf-16"))
    with pytest.raises(data.DataError, match="UTF-16.*save it as UTF-8"):
        data.csv.load_table(csv_config(tmp_path / "u.csv"))


def test_duplicate_column_names_are_refused_listing_them(tmp_path):
    path = write_csv(
        tmp_path / "r.csv", [(t, y, y) for t, y in reviews(10)], header=("text", "label", "label")
    )
    with pytest.raises(data.DataError, match=r"names column\(s\) \['label'\] more than once"):
        data.csv.load_table(csv_config(path))
    (tmp_path / "r.jsonl").write_text('{"text": "a", "label": "pos", "label": "neg"}\n')
    with pytest.raises(data.DataError, match=r"line 1: .*\['label'\] more than once"):
        data.csv.load_table(csv_config(tmp_path / "r.jsonl"))


def test_tsv_by_extension_or_data_delimiter(tmp_path):
    rows = [(f"{t}, with a comma", y) for t, y in reviews(20)]
    tsv = tmp_path / "r.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    assert data.csv.load_table(csv_config(tsv)).train.texts == [t for t, _ in rows]
    tabbed_csv = tmp_path / "r.csv"
    tabbed_csv.write_bytes(tsv.read_bytes())
    with pytest.raises(data.DataError, match=r"r.csv, line 2: \d field\(s\) where the header"):
        data.csv.load_table(csv_config(tabbed_csv))  # read as commas: never shifted into columns
    for typed in ("\t", "\\t"):  # a YAML tab, or '\t' as a command line passes it
        raw = data.csv.load_table(csv_config(tabbed_csv, delimiter=typed))
        assert raw.train.texts == [t for t, _ in rows]
    with pytest.raises(ConfigError, match="data.delimiter"):
        csv_config(tabbed_csv, delimiter=";;")


def write_delimited(path: Path, rows: list[tuple[str, str]], delimiter: str) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows([("text", "label"), *rows])
    return path


@pytest.mark.parametrize(
    "rows, delimiter, refusal",
    [  # a European-locale export (quoted texts); a tab-separated file named .csv
        ("quoted", ";", r"line \d+: malformed CSV \(',' expected after '\"'\)"),
        ("quoted", "\t", r"line \d+: malformed CSV"),
        ("plain", ";", r"no column\(s\) \['text', 'label'\]; it has \['text;label'\]"),
        ("commas", "\t", r"line 2: 2 field\(s\) where the header has 1"),
    ],
)
def test_a_file_that_reads_with_another_delimiter_says_which_and_how_to_set_it(
    tmp_path, rows, delimiter, refusal
):
    texts = {
        "quoted": [(f'"{t}", she said; fine', y) for t, y in plain(12)],
        "plain": plain(12),
        "commas": [(f"{t}, with a comma", y) for t, y in plain(12)],
    }[rows]
    path = write_delimited(tmp_path / "r.csv", texts, delimiter)
    named = "TSV" if delimiter == "\t" else f"'{delimiter}'-delimited text"
    setting = re.escape(f"set data.delimiter={delimiter!r}.")
    with pytest.raises(data.DataError, match=rf"{refusal}.*read cleanly as {named}.*{setting}$"):
        data.csv.load_table(csv_config(path))
    assert data.csv.load_table(csv_config(path, delimiter=delimiter)).train.texts == [
        t for t, _ in texts
    ]


def test_a_malformed_file_no_other_delimiter_reads_keeps_the_quoting_advice(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,label\nan "inner" quote,pos\n"an unclosed" quote,neg\n')
    with pytest.raises(data.DataError, match="malformed CSV") as refused:
        data.csv.load_table(csv_config(path))
    assert "quote fields" in str(refused.value) and "data.delimiter" not in str(refused.value)


def test_a_folder_as_a_data_file_is_named_a_folder_with_the_option_that_reads_one(tmp_path):
    folder = write_acl_folder(tmp_path)
    with pytest.raises(data.DataError, match=r"is a folder, not a file.*data=aclimdb"):
        data.csv.load_table(csv_config(folder))
    assert len(data.aclimdb.load_aclimdb(folder).train) == 12


def test_other_extensions_are_refused_naming_the_supported_formats(tmp_path):
    for name in ("r.txt", "r.xlsx", "r"):
        (tmp_path / name).write_text("text,label\na,pos\n")
        with pytest.raises(
            data.DataError,
            match=r"not a supported format; use .csv, .tsv .*"
            r"\.jsonl",
        ):
            data.csv.load_table(csv_config(tmp_path / name))


def test_quoted_line_breaks_crlf_and_unicode_separators_stay_in_their_row(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(
        b'text,label\r\n"two\r\nlines",pos\r\nline\xe2\x80\xa8sep,neg\r\n'
        + lines(plain(20), ",", "\r\n")
        + b"only one\r\n"
    )
    with pytest.raises(data.DataError, match=r"r.csv, line 25: 1 field\(s\) where the header"):
        data.csv.load_table(csv_config(path))  # the line numbers count the quoted line break
    path.write_bytes(path.read_bytes().removesuffix(b"only one\r\n"))
    raw = data.csv.load_table(csv_config(path))
    assert raw.train.texts[:2] == ["two\r\nlines", "line\u2028sep"] and len(raw.train) == 22


# --- the data report -------------------------------------------------------------------------


def test_the_data_report_accounts_for_every_row_and_counts_each_splits_classes(tmp_path):
    rows = [*reviews(60), ("no label", ""), ("   ", "pos"), ("<br />", "neg")]
    ds = data.load(csv_config(write_csv(tmp_path / "r.csv", rows)))
    labels = {"train": ds.train.labels, "val": ds.val.labels, "test": ds.test.labels}
    report = data.report(ds.class_names, ds.stats, labels)
    counts = report["counts"]
    assert counts["rows_read_train"] == 63 and counts["missing_label_dropped_train"] == 1
    assert counts["empty_dropped_train"] == 2
    assert sum(sum(s.values()) for s in report["splits"].values()) == 60
    assert report["splits"]["train"] == {
        "neg": int((ds.train.labels == 0).sum()),
        "pos": int((ds.train.labels == 1).sum()),
    }
    json.dumps(report)  # written as data_report.json
    text = data.describe(report)
    assert "rows read train 63; dropped missing_label 1, empty 2" in text
    assert f"train: {len(ds.train)} rows (neg " in text and "test: " in text
    with pytest.raises(data.DataError, match=r"after tokenization: class\(es\) 'pos' \(0\)"):
        data.report(ds.class_names, ds.stats, {"train": np.zeros(5, np.int32)})


# --- duplicates, conflicting labels and leakage ----------------------------------------------


def test_test_rows_copied_from_training_are_counted_said_dropped_or_refused(tmp_path, caplog):
    from textclf.run_folder import data_params

    rows = reviews(200)
    train = write_csv(tmp_path / "train.csv", rows[:140])
    test = write_csv(tmp_path / "test.csv", rows[100:140] + rows[140:160])  # 40 of 60 leak
    ds = data.load(csv_config(train, test_path=str(test)))
    assert ds.stats["overlap_train_test"] == 40 and len(ds.test) == 60
    assert "40 test rows whose text is in the training data (overlap_train_test)" in caplog.text
    report = data.report(ds.class_names, ds.stats, {"train": ds.train.labels})
    assert "overlap_train_test 40" in data.describe(report)
    assert data_params(report)["data_overlap_train_test"] == 40
    with pytest.raises(data.DataError, match=r"train.csv: 40 test rows .* data.duplicates=drop"):
        data.load(csv_config(train, test_path=str(test), duplicates="refuse"))
    dropped = data.load(csv_config(train, test_path=str(test), duplicates="drop"))
    assert dropped.stats["overlap_dropped_train"] == 40 and len(dropped.test) == 60
    assert dropped.stats["overlap_train_test"] == 0
    assert len(dropped.train) + len(dropped.val) == 100


def test_repeated_rows_are_counted_within_and_across_splits_and_drop_keeps_one(tmp_path):
    rows = reviews(100)
    path = write_csv(tmp_path / "r.csv", rows + rows)  # every text twice, same label
    ds = data.load(csv_config(path))
    stats = ds.stats
    assert stats["overlap_train_val"] > 0 and stats["overlap_train_test"] > 0
    assert stats["duplicates_train"] > 0 and stats["conflicts_train"] == 0
    assert stats["overlap_train_val"] == sum(t in set(ds.train.texts) for t in ds.val.texts)
    assert stats["overlap_train_test"] == sum(
        t in set(ds.train.texts + ds.val.texts) for t in ds.test.texts
    )
    dropped = data.load(csv_config(path, duplicates="drop"))
    assert dropped.stats["duplicate_dropped_train"] == 100
    assert len(dropped.train) + len(dropped.val) + len(dropped.test) == 100
    assert not any(dropped.stats[k] for k in data.REPEATS)


def test_texts_given_conflicting_labels_are_refused_by_default_dropped_or_kept(tmp_path):
    rows = reviews(100)
    flipped = [(t, "neg" if y == "pos" else "pos") for t, y in rows]
    path = write_csv(tmp_path / "r.csv", rows + flipped)  # the coin-flip set
    with pytest.raises(
        data.DataError, match=r"training rows \(\d+\.\d%\) carry a text .* data.duplicates=drop"
    ):
        data.load(csv_config(path))
    with pytest.raises(data.DataError, match=r"deduplicated\): class\(es\) 'neg' \(0\)"):
        data.load(csv_config(path, duplicates="drop"))
    kept = data.load(csv_config(path, max_conflicts=1))
    assert kept.stats["conflicts_train"] > 0.5 * len(kept.train)
    some = write_csv(tmp_path / "s.csv", reviews(300) + flipped[:1])  # one text, two labels
    few = data.load(csv_config(some))  # under data.max_conflicts: warned, kept
    assert len(few.train) + len(few.val) + len(few.test) == 301
    dropped = data.load(csv_config(some, duplicates="drop"))
    assert dropped.stats["conflict_dropped_train"] == 2
    assert len(dropped.train) + len(dropped.val) + len(dropped.test) == 299
    with pytest.raises(ConfigError, match="data.duplicates"):
        csv_config(duplicates="warn")
