"""`data=imdb`: tensorflow-datasets' imdb_reviews (downloads ~84 MB on first use), failing in
seconds with the alternatives when it cannot download."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from .core import DataError, Raw, Split, as_split, decode, warn_invalid_utf8

IMDB_CLASSES = ["neg", "pos"]
IMDB_HOST = "ai.stanford.edu"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"


@dataclass
class ImdbConfig(DataConfig):
    source: str = "imdb"
    data_dir: str | None = None  # TFDS data_dir (default ~/tensorflow_datasets)
    manual_dir: str | None = None  # folder holding the original aclImdb_v1.tar.gz
    download: bool = True  # let TFDS download (~84 MB) on first use

    def origin(self, split: str) -> str:
        return "tfds:imdb_reviews"


def load(cfg: ImdbConfig) -> Raw:
    return load_imdb(cfg.data_dir, cfg.manual_dir, cfg.download)


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
            texts.append(decode(text, stats))
            labels.append(int(label))
        splits.append(as_split(texts, labels))
    warn_invalid_utf8("imdb_reviews", stats)
    return Raw(splits[0], splits[1], list(IMDB_CLASSES), stats)
