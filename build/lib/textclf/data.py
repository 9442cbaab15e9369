"""Load labelled texts from TFDS, the Stanford aclImdb layout, or a CSV/JSONL file, and split them.

Every loader returns plain Python lists; `split` then carves validation (and, when the source
has none, test) data with a fixed seed, so test data never reaches vocabulary or early stopping.
"""

from __future__ import annotations

import logging
import re
import socket
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig

log = logging.getLogger(__name__)
IMDB_CLASSES = ["neg", "pos"]
IMDB_HOST = "ai.stanford.edu"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Control characters and Unicode line separators (IMDB has \x85, \x96, \x97): as vocabulary
# terms they break the saved model, whose vocabulary file is read back line by line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


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
            reviews[split].append((_decode(raw, stats), IMDB_CLASSES.index(polarity),
                                   int(review_id)))
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
    return Raw(Split([t for t, _, _ in train], np.array([y for _, y, _ in train], np.int32),
                     groups),
               _split([t for t, _, _ in test], [y for _, y, _ in test]), list(IMDB_CLASSES),
               stats)


def _url_lists(folder: Path) -> dict[tuple[str, str], list[str]]:
    lists = {}
    for split in ("train", "test"):
        for polarity in ("pos", "neg"):
            file = folder / split / f"urls_{polarity}.txt"
            if not file.is_file():
                raise DataError(f"data.urls_path: {file} does not exist; point data.urls_path "
                                "at the folder holding train/urls_pos.txt, train/urls_neg.txt, ...")
            lists[(split, polarity)] = file.read_text(encoding="utf-8").splitlines()
    return lists


def _movies(reviews: list[tuple[str, int, int]], urls: dict) -> np.ndarray:
    """The IMDb title of each training review: line <id> of its class's URL list."""
    movies = []
    for _, label, review_id in reviews:
        lines = urls.get(("train", IMDB_CLASSES[label]), [])
        found = _MOVIE.search(lines[review_id]) if review_id < len(lines) else None
        if not found:
            raise DataError(f"the URL list train/urls_{IMDB_CLASSES[label]}.txt has no movie "
                            f"for review {review_id}; check data.urls_path.")
        movies.append(found.group(1))
    return np.array(movies)


# --- CSV / JSON Lines ------------------------------------------------------------------------


TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".ndjson")  # .csv, else JSON Lines


def read_table(path: Path, columns: Sequence[str], fix: str):
    """A CSV or JSON Lines file as a pandas DataFrame holding `columns`; invalid UTF-8 is
    replaced. Errors name the file; `fix` says which setting names the columns."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"data file {path} does not exist.")
    csv = path.suffix.lower() == ".csv"
    try:
        if csv:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
        else:
            frame = pd.read_json(path, lines=True, dtype=False, encoding_errors="replace")
    except ValueError as error:
        raise DataError(f"cannot parse {path} as {'CSV' if csv else 'JSON Lines'}: {error}") \
            from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} has no column(s) {missing}; it has {list(frame.columns)}. {fix}")
    return frame


def _read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list]:
    frame = read_table(path, [text_column, label_column],
                       "Set data.text_column / data.label_column.")
    texts = ["" if t is None else str(t) for t in frame[text_column].tolist()]
    return texts, [str(v).strip() for v in frame[label_column].tolist()]


def _sort_classes(values: set[str]) -> list[str]:
    if all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def load_table(cfg: DataConfig) -> Raw:
    """Read a CSV or JSONL file (and an optional test file); labels may be strings or ints."""
    test_path, text_column, label_column = cfg.test_path, cfg.text_column, cfg.label_column
    classes = cfg.classes
    path = Path(cfg.path).expanduser()
    train_texts, train_labels = _read_table(path, text_column, label_column)
    test = (
        _read_table(Path(test_path).expanduser(), text_column, label_column) if test_path else None
    )
    class_names = [str(c) for c in classes] if classes else _sort_classes(set(train_labels))
    if len(class_names) < 2:
        raise DataError(
            f"{path} has {len(class_names)} distinct label(s) {class_names}; "
            "a classifier needs at least two."
        )
    index = {name: i for i, name in enumerate(class_names)}

    def encode(labels: list[str], where: Path) -> list[int]:
        for row, label in enumerate(labels):
            if label not in index:
                raise DataError(
                    f"{where}, row {row + 2}: label {label!r} is not one of "
                    f"{class_names} (set data.classes to list every label)."
                )
        return [index[label] for label in labels]

    train = _split(train_texts, encode(train_labels, path))
    test_split = _split(test[0], encode(test[1], Path(test_path))) if test else None
    return Raw(train, test_split, class_names)


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
        manual = Path(manual_dir).expanduser() / IMDB_ARCHIVE if manual_dir else None
        has_manual = manual is not None and manual.exists()
        if not has_manual and (not download or not host_reachable()):
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
        config = tfds.download.DownloadConfig(manual_dir=str(manual.parent) if has_manual else None)
        builder.download_and_prepare(download_config=config)
    splits = []
    for name in ("train", "test"):
        texts, labels = [], []
        for text, label in tfds.as_numpy(builder.as_dataset(split=name, as_supervised=True)):
            texts.append(text.decode("utf-8", errors="replace"))
            labels.append(int(label))
        splits.append(_split(texts, labels))
    return Raw(splits[0], splits[1], list(IMDB_CLASSES))


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
    """A boolean mask selecting `fraction` of each class (at least one row per class)."""
    chosen = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        chosen[rows[: max(1, round(len(rows) * fraction))]] = True
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


def split(raw: Raw, cfg: DataConfig) -> Dataset:
    """Clean, drop empty reviews, subset (`limit`), and carve validation/test with `seed`."""
    val_fraction, test_fraction, limit = cfg.val_fraction, cfg.test_fraction, cfg.limit
    rng = np.random.default_rng(cfg.seed)
    stats = dict(raw.stats)
    train = _drop_empty(raw.train, "train", stats)
    if raw.test is None:
        is_test = _stratified(train.labels, test_fraction, rng)
        train, test = _take(train, np.flatnonzero(~is_test)), _take(train, np.flatnonzero(is_test))
    else:
        test = _drop_empty(raw.test, "test", stats)
    if limit:
        train, test = _balanced_subset(train, limit, rng), _balanced_subset(test, limit, rng)
    by_movie = cfg.val_split == "by_movie" or (cfg.val_split == "auto" and train.groups is not None)
    if by_movie and train.groups is None:
        raise DataError("data.val_split=by_movie needs each review's movie: data=aclimdb with "
                        "its URL lists (inside the archive, or data.urls_path=<folder>).")
    if cfg.val_split == "auto" and cfg.source == "aclimdb" and not by_movie:
        log.warning("no aclImdb URL lists found (set data.urls_path): validation reviews are "
                    "drawn at random, so reviews of one movie land on both sides")
    is_val = (_by_group(train.groups, val_fraction, rng) if by_movie
              else _stratified(train.labels, val_fraction, rng))
    val, train = _take(train, np.flatnonzero(is_val)), _take(train, np.flatnonzero(~is_val))
    if by_movie:
        stats.update(val_movies=len(np.unique(val.groups)),
                     train_movies=len(np.unique(train.groups)))
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if not len(part):
            raise DataError(
                f"the {name} split is empty; use more data or a smaller "
                "data.val_fraction / data.test_fraction."
            )
    stats.update(train_size=len(train), val_size=len(val), test_size=len(test))
    return Dataset(train, val, test, raw.class_names, stats)


def load(config: DataConfig) -> Dataset:
    """The configured source, cleaned and split."""
    if config.source == "imdb":
        raw = load_imdb(config.data_dir, config.manual_dir, config.download)
    elif config.source == "aclimdb":
        raw = load_aclimdb(config.path, config.urls_path)
    else:
        raw = load_table(config)
    return split(raw, config)
