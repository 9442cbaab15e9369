"""What every data source shares: the rows a source reads (`Raw`), their cleaning, the split
into training, validation and test data with a fixed seed (so test data never reaches the
vocabulary or early stopping), the counts of what was dropped and why (`report`), repeated
texts, texts given two labels and test or validation rows repeating training ones (`repeats`;
`data.duplicates` keeps, drops or refuses them), and each split's fingerprint (`lineage`).
Nothing about a user's data is guessed: decoding is stated and counted, a missing label is no
class, spellings of one label are one class, and every class is in the training split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import DataConfig, check

log = logging.getLogger(__name__)
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Control characters and Unicode line separators (IMDB has \x85, \x96, \x97): as vocabulary
# terms they break the saved model, whose vocabulary file is read back line by line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
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


@dataclass
class Source:
    config: type[DataConfig]
    load: Callable[[Any], Raw]  # its config → the rows it read, per split


REGISTRY: dict[str, Source] = {}


def register(config: type[DataConfig], load: Callable[[Any], Raw]) -> None:
    """Make a source loadable by `data.load` and selectable as `data=<source>`."""
    REGISTRY[config.source] = Source(config, load)


def require_path(cfg: Any) -> None:
    """Sources that read a file or folder: `data.path` is required."""
    check(
        bool(cfg.path),
        "data.path",
        f"is required for data={cfg.source}: pass data.path=<file or folder>",
    )


def clean(text: str) -> str:
    """HTML line breaks and control characters become spaces; surrounding whitespace goes."""
    return _CONTROL.sub(" ", _BREAK.sub(" ", text)).strip()


def decode(raw: bytes, stats: dict[str, int]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
        return raw.decode("utf-8", errors="replace")


def warn_invalid_utf8(where: object, stats: dict[str, int]) -> None:
    if stats.get("invalid_utf8"):
        log.warning(
            "%s: %d text(s) held invalid UTF-8, replaced by U+FFFD (data_invalid_utf8)",
            where,
            stats["invalid_utf8"],
        )


# --- splitting -------------------------------------------------------------------------------


def as_split(texts: list[str], labels: list[int] | np.ndarray) -> Split:
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
    """`n` rows, as evenly spread over the classes as they allow, in shuffled order: each
    class's shuffled rows dealt in turn, its first row, then every class's second, ..."""
    classes = [rng.permutation(np.flatnonzero(split.labels == c)) for c in np.unique(split.labels)]
    dealt = sorted(
        (turn, i, int(row)) for i, rows in enumerate(classes) for turn, row in enumerate(rows)
    )
    return _take(split, rng.permutation(np.asarray([row for _, _, row in dealt[:n]])))


def _drop_empty(split: Split, name: str, stats: dict[str, int]) -> Split:
    texts = [clean(t) for t in split.texts]
    keep = np.flatnonzero([bool(t) for t in texts])
    stats[f"empty_dropped_{name}"] = len(texts) - len(keep)
    kept = _take(Split(texts, split.labels, split.groups), keep)
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
    rng = np.random.default_rng(cfg.seed)
    stats = dict(raw.stats)
    where = cfg.location() or cfg.source
    stats.setdefault("rows_read_train", len(raw.train))
    train = _drop_empty(raw.train, "train", stats)
    kept = "with text" + (", deduplicated" if cfg.duplicates == "drop" else "")
    if cfg.duplicates == "drop":
        train = _dedupe(train, "train", stats)
    require_rows(train.labels, raw.class_names, MIN_CLASS_ROWS, f"{where} ({kept})")
    if raw.test is None:
        is_test = _stratified(train.labels, cfg.test_fraction, rng)
        train, test = _take(train, np.flatnonzero(~is_test)), _take(train, np.flatnonzero(is_test))
    else:
        stats.setdefault("rows_read_test", len(raw.test))
        test = _drop_empty(raw.test, "test", stats)
        if cfg.duplicates == "drop":
            test = _dedupe(test, "test", stats)
            train = _drop_seen(train, set(test.texts), stats)
            require_rows(train.labels, raw.class_names, MIN_CLASS_ROWS, f"{where} ({kept})")
    if cfg.limit:
        before = len(train), len(test)
        train, test = (
            _balanced_subset(train, cfg.limit, rng),
            _balanced_subset(test, cfg.limit, rng),
        )
        stats.update(
            limit_dropped_train=before[0] - len(train), limit_dropped_test=before[1] - len(test)
        )
    if cfg.val_split == "by_movie" and train.groups is None:
        raise DataError(
            "data.val_split=by_movie needs each review's movie: data=aclimdb with "
            "its URL lists (inside the archive, or data.urls_path=<folder>)."
        )
    movies = None if cfg.val_split == "random" else train.groups
    if movies is None:
        is_val = _stratified(train.labels, cfg.val_fraction, rng)
    else:
        is_val = _by_group(movies, cfg.val_fraction, rng)
        stats.update(
            val_movies=len(np.unique(movies[is_val])), train_movies=len(np.unique(movies[~is_val]))
        )
    val, train = _take(train, np.flatnonzero(is_val)), _take(train, np.flatnonzero(~is_val))
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
    """What inflates or blurs a score (`REPEATS`), compared on the cleaned texts the model
    reads; `overlap_train_test` counts test texts in training or validation."""
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
    found = "; ".join(f"{counts[k]} {words} ({k})" for k, words in REPEATS.items() if counts.get(k))
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


# --- lineage: which rows a run saw -----------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """One split as a run's MLflow dataset records it (`tracking` logs it): where its rows came
    from, how many there are, and a digest of them; runs with equal digests saw the same rows."""

    name: str  # train | val | test
    # the file or folder read (an absolute path), or <kind>:<name> for rows that code made or
    # fetched (tfds:imdb_reviews)
    source: str
    rows: int
    digest: str


def digest(part: Split, class_names: Sequence[str]) -> str:
    """A fingerprint of a split's texts and labels, in order: equal for the same rows however
    they were read. Hashes whole arrays (text lengths, then all texts as one), not row by row."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(list(class_names)).encode())
    h.update(np.asarray(part.labels, dtype=np.int64).tobytes())
    h.update(np.fromiter(map(len, part.texts), np.int64, len(part.texts)).tobytes())
    h.update("".join(part.texts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


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
