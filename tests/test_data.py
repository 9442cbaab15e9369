"""Loaders for aclImdb (folder and archive), CSV/JSONL and TFDS; splitting and its guarantees."""

from __future__ import annotations

import json
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from textclf import data
from textclf.config import DataConfig

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


def csv_config(path: Path | str = "unused.csv", **kw) -> DataConfig:
    return DataConfig(source="csv", path=str(path), **kw)


def test_aclimdb_folder_and_archive_give_the_same_reviews(tmp_path):
    folder = write_acl_folder(tmp_path / "src")
    archive = tmp_path / "acl.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    a, b = data.load_aclimdb(folder), data.load_aclimdb(archive)
    assert sorted(a.train.texts) == sorted(b.train.texts)
    assert len(a.train) == len(a.test) == 12
    assert sorted(a.train.labels.tolist()) == [0] * 6 + [1] * 6
    assert a.class_names == ["neg", "pos"]


def test_aclimdb_rejects_other_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="aclImdb layout"):
        data.load_aclimdb(tmp_path / "empty")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_aclimdb(tmp_path / "missing.tar.gz")
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_text("hello")
    with pytest.raises(data.DataError, match="tar archive"):
        data.load_aclimdb(not_tar)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    folder = write_acl_folder(tmp_path)
    (folder / "train" / "pos" / "99_9.txt").write_bytes(b"caf\xe9 was great")
    raw = data.load_aclimdb(folder)
    assert raw.stats["invalid_utf8"] == 1
    assert "caf\ufffd was great" in raw.train.texts


def test_csv_with_string_labels_and_a_carved_test_split(tmp_path):
    path = write_csv(tmp_path / "r.csv", reviews(100))
    ds = data.load(DataConfig(source="csv", path=str(path), test_fraction=0.2, val_fraction=0.1))
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
        DataConfig(
            source="csv", path=str(path), test_path=str(test), text_column="body", label_column="y"
        )
    )
    assert ds.class_names == ["0", "1", "2"]
    assert len(ds.test) == 30 and set(ds.train.labels.tolist()) == {0, 1, 2}


def test_table_errors_name_the_file_row_and_fix(tmp_path):
    path = write_csv(tmp_path / "r.csv", reviews(10), header=("review", "label"))
    with pytest.raises(data.DataError, match=r"no column\(s\) \['text'\].*data.text_column"):
        data.load_table(csv_config(path))
    path = write_csv(tmp_path / "s.csv", [*reviews(10), ("meh", "neutral")])
    with pytest.raises(data.DataError, match=r"row 12: label 'neutral' is not one of"):
        data.load_table(csv_config(path, classes=["neg", "pos"]))
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_table(csv_config(tmp_path / "nope.csv"))


def test_split_cleans_breaks_drops_empty_and_is_deterministic(tmp_path):
    rows = [*reviews(60), ("   ", "pos"), ("<br /><br />", "neg")]
    raw = data.load_table(csv_config(write_csv(tmp_path / "r.csv", rows)))
    a, b = data.split(raw, csv_config(seed=3)), data.split(raw, csv_config(seed=3))
    assert a.stats["empty_dropped_train"] == 2
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    assert not any("<br" in t for t in a.train.texts + a.val.texts + a.test.texts)
    assert len(a.train) + len(a.val) + len(a.test) == 60


def test_limit_keeps_a_balanced_subset_of_train_and_test(tmp_path):
    raw = data.load_table(csv_config(write_csv(tmp_path / "r.csv", reviews(200))))
    ds = data.split(raw, csv_config(val_fraction=0.25, limit=40))
    assert len(ds.test) == 40 and np.bincount(ds.test.labels).tolist() == [20, 20]
    assert len(ds.train) + len(ds.val) == 40
    assert np.bincount(np.concatenate([ds.train.labels, ds.val.labels])).tolist() == [20, 20]


def test_a_split_emptied_by_filtering_is_an_error(tmp_path):
    raw = data.load_table(
        csv_config(write_csv(tmp_path / "r.csv", [("", "pos"), (" ", "neg")])))
    with pytest.raises(data.DataError, match="empty"):
        data.split(raw, csv_config())


def test_imdb_through_tfds_mock_data(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "host_reachable", lambda *a, **k: True)  # mock_data never downloads
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load(DataConfig(source="imdb", data_dir=str(tmp_path)))
    assert ds.class_names == ["neg", "pos"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24
    assert all(isinstance(t, str) for t in ds.train.texts)


def test_imdb_offline_fails_fast_naming_the_alternatives(tmp_path, monkeypatch):
    """Offline (simulated, whatever this machine's network): a clear error, and TFDS' download,
    which would retry for minutes, is never started."""
    import tensorflow_datasets.core.dataset_builder as builders

    monkeypatch.setattr(data, "host_reachable", lambda *a, **k: False)
    monkeypatch.setattr(builders.DatasetBuilder, "download_and_prepare",
                        lambda *a, **k: pytest.fail("started a download offline"))
    with pytest.raises(data.DataError) as error:
        data.load_imdb(str(tmp_path), None, True)
    assert "cannot be reached" in str(error.value)
    for alternative in ("data=aclimdb", "data.manual_dir", "data.data_dir", "data=csv"):
        assert alternative in str(error.value)


def test_the_reachability_probe_answers_no_for_a_closed_port():
    with socket.socket() as s:  # bound, never listening: connections are refused at once
        s.bind(("127.0.0.1", 0))
        assert data.host_reachable("127.0.0.1", s.getsockname()[1], timeout=2) is False


def test_imdb_without_download_fails_without_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "host_reachable", lambda *a, **k: pytest.fail("probed network"))
    with pytest.raises(data.DataError, match="download is disabled"):
        data.load_imdb(str(tmp_path), None, False)


def write_url_lists(folder: Path, per_class: int, movies: int = 3) -> Path:
    """URL lists in aclImdb's layout: review i of each class reviews movie tt000000<i % movies>."""
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for polarity in ("pos", "neg"):
            lines = [f"http://www.imdb.com/title/tt000000{i % movies}/usercomments"
                     for i in range(per_class)]
            (folder / split / f"urls_{polarity}.txt").write_text("\n".join(lines) + "\n")
    return folder


def movies_of(split: data.Split) -> set[str]:
    return set(split.groups.tolist())


@pytest.mark.parametrize("where", ["inside", "data.urls_path", "beside"])
def test_validation_by_movie_keeps_every_movie_on_one_side(tmp_path, where):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    lists = {"inside": folder, "data.urls_path": tmp_path / "lists",
             "beside": tmp_path / "acl" / data.URLS_FOLDER}[where]
    write_url_lists(lists, per_class=30, movies=10)
    urls = str(lists) if where == "data.urls_path" else None
    ds = data.load(DataConfig(source="aclimdb", path=str(folder), urls_path=urls,
                              val_fraction=0.2))
    assert movies_of(ds.val) and not movies_of(ds.val) & movies_of(ds.train)
    assert len(movies_of(ds.val)) + len(movies_of(ds.train)) == 10
    assert ds.stats["val_movies"] == len(movies_of(ds.val))
    assert len(ds.val) + len(ds.train) == 60 and 0 < len(ds.val) <= 12 + 6  # ~20%, whole movies


def test_without_url_lists_the_split_is_random_and_says_so_once(tmp_path, caplog):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    with caplog.at_level("WARNING", logger="textclf.data"):
        ds = data.load(DataConfig(source="aclimdb", path=str(folder)))
    assert ds.train.groups is None and len(ds.val) == 6
    assert sum("URL lists" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(data.DataError, match="val_split=by_movie needs"):
        data.load(DataConfig(source="aclimdb", path=str(folder), val_split="by_movie"))
    with pytest.raises(data.DataError, match="urls_pos.txt does not exist"):
        data.load(DataConfig(source="aclimdb", path=str(folder), urls_path=str(tmp_path)))


def test_a_url_list_missing_a_review_is_named(tmp_path):
    folder = write_acl_folder(tmp_path / "acl", per_class=30)
    write_url_lists(folder, per_class=20)  # reviews 20..29 have no line
    with pytest.raises(data.DataError, match="has no movie for review 2[0-9]"):
        data.load_aclimdb(folder)
