"""The data stage: labelled texts from a registered source, cleaned and split.

A source is a module here with its config class (a `DataConfig` subclass: its `source` name,
its own settings and their checks) and a `load(cfg)` returning the rows it read (`Raw`: texts
and integer labels per split, the test split optional), registered below with one line; the
entry point stores its config as the `data` group's `<source>_schema`, which
`conf/data/<source>.yaml` starts from. What every source shares lives in `core.py` (splitting,
the counts, repeated texts, lineage) and `table.py` (CSV/TSV/JSON Lines reading).
"""

# ruff: noqa: F401  (a package's API: the names imported here)

from __future__ import annotations

from collections.abc import Sequence

from ..config import DataConfig
from . import aclimdb, csv, imdb
from .core import (
    REGISTRY,
    REPEATS,
    DataError,
    Dataset,
    Lineage,
    Raw,
    Split,
    as_split,
    clean,
    describe,
    digest,
    register,
    report,
    spec,
    split,
)
from .table import TABLE_SUFFIXES, read_table

register(imdb.ImdbConfig, imdb.load)
register(aclimdb.AclImdbConfig, aclimdb.load)
register(csv.CsvConfig, csv.load_table)


def load(config: DataConfig) -> Dataset:
    """The configured source, cleaned and split."""
    return split(spec(config).load(config), config)


def lineage(
    dataset: Dataset, cfg: DataConfig, names: Sequence[str] = ("train", "val", "test")
) -> list[Lineage]:
    """The `names` splits of `dataset`, loaded as `cfg` says, as `Lineage` records."""
    return [
        Lineage(
            name,
            cfg.origin(name),
            len(getattr(dataset, name)),
            digest(getattr(dataset, name), dataset.class_names),
        )
        for name in names
    ]
