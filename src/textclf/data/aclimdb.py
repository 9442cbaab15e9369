"""`data=aclimdb`: the Stanford layout (train/{pos,neg}, test/{pos,neg}) as a folder or the
.tar.gz itself, with each training review's movie when the URL lists are found (validation
then holds movies unseen in training, as aclImdb's test set does)."""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .core import DataError, Raw, as_split, decode, require_path, warn_invalid_utf8
from .imdb import IMDB_CLASSES

log = logging.getLogger(__name__)


@dataclass
class AclImdbConfig(DataConfig):
    source: str = "aclimdb"
    path: str | None = None  # the extracted aclImdb folder or its .tar.gz (required)
    urls_path: str | None = None  # folder with {train,test}/urls_{pos,neg}.txt

    def __post_init__(self) -> None:
        super().__post_init__()
        require_path(self)

    def location(self) -> str | None:
        return self.path

    def origin(self, split: str) -> str:  # validation is carved from the training reviews
        return str(Path(str(self.path)).expanduser().resolve())


def load(cfg: AclImdbConfig) -> Raw:
    assert cfg.path is not None  # AclImdbConfig requires it
    raw = load_aclimdb(cfg.path, cfg.urls_path)
    if cfg.val_split == "auto" and raw.train.groups is None:
        log.warning(
            "no aclImdb URL lists found (set data.urls_path): validation reviews are "
            "drawn at random, so reviews of one movie land on both sides"
        )
    return raw


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
                (decode(raw, stats), IMDB_CLASSES.index(polarity), int(review_id))
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
    train, test = (
        as_split([t for t, _, _ in reviews[s]], [y for _, y, _ in reviews[s]])
        for s in ("train", "test")
    )
    if urls:
        train.groups = _movies(reviews["train"], urls)
    warn_invalid_utf8(path, stats)
    return Raw(train, test, list(IMDB_CLASSES), stats)


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
