"""The data stage: labelled texts from a registered source, cleaned and split. A source is a
module here with its `DataConfig` subclass and `load(cfg) -> Raw`, registered below with one
line (docs/design.md lists what adding one takes); what sources share is `core.py` and `table.py`.
"""

# ruff: noqa: F401  (a package's API: the names imported here)

from __future__ import annotations

from collections.abc import Sequence

from ..config import DataConfig, registered
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
    split,
)
from .table import TABLE_SUFFIXES, read_table

register(imdb.ImdbConfig, imdb.load)
register(aclimdb.AclImdbConfig, aclimdb.load)
register(csv.CsvConfig, csv.load_table)


def load(config: DataConfig) -> Dataset:
    """The configured source, cleaned and split."""
    how = "textclf.data.register(<config class>, <load function>)"
    source = registered(REGISTRY, config.source, config, "data", "data source", how)
    return split(source.load(config), config)


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
