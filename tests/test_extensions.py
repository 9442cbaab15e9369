"""A fork's extension points: a data source and a batching strategy the project does not ship,
each a module-level definition, a YAML option file (in a config folder of the fork's own, on
Hydra's search path) and one registry line, trained through `pipeline.run` with no edit of the
pipeline, tracking or the studies (tests/test_pipeline.py does the same for a model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import tensorflow as tf
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf.errors import ConfigKeyError

from textclf import batching, data, tracking
from textclf.cli import register_schemas
from textclf.config import BatchingConfig, DataConfig

from .conftest import reviews, run_pipeline, write_csv

SMALL = [
    "train.epochs=2",
    "model.units=8",
    "model.embedding_dim=8",
    "model.bidirectional=false",
    "model.ngram_branch=false",
    "tokenize.vocab_size=200",
    "batching.batch_size=16",
    "evaluate.plots=false",
    "evaluate.served_limit=20",
    "tracking.system_metrics=false",
]


@dataclass
class MemoryConfig(DataConfig):
    """Reviews made in memory: `rows` of them, no test split (test_fraction of them is test)."""

    source: str = "memory"
    rows: int = 240


def load_memory(cfg: MemoryConfig) -> data.Raw:
    texts, labels = zip(*reviews(cfg.rows), strict=True)
    classes = ["neg", "pos"]
    return data.Raw(data.as_split(list(texts), [classes.index(y) for y in labels]), None, classes)


def half_batches(ds: tf.data.Dataset, spec: BatchingConfig, epoch: batching.Epoch):
    """Random batches of half `batching.batch_size` rows, each padded to its longest review."""
    return ds.padded_batch(max(1, spec.batch_size // 2))


def option(folder: Path, group: str, name: str, text: str) -> str:
    """`<folder>/<group>/<name>.yaml`, and the override putting `folder` on Hydra's search path."""
    (folder / group).mkdir(parents=True, exist_ok=True)
    (folder / group / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{folder}]"


@pytest.fixture
def memory_source():
    data.register(MemoryConfig, load_memory)
    register_schemas()  # as the entry point does at start: data/memory_schema
    yield MemoryConfig
    del data.REGISTRY[MemoryConfig.source]


@pytest.fixture
def half_strategy():
    batching.register("half", half_batches)
    yield "half"
    del batching.STRATEGIES["half"]


def test_a_new_data_source_is_a_config_class_a_load_function_and_a_registry_line(
    make_config, tmp_path, memory_source
):
    searched = option(
        tmp_path / "fork", "data", "memory", "defaults:\n  - memory_schema\n  - _self_\n"
    )
    cfg = make_config(searched, "data=memory", "data.rows=200", *SMALL)
    assert isinstance(cfg.data, MemoryConfig) and cfg.data.rows == 200
    metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["data"] == "memory"
    assert run.data.params["data.source"] == "memory" and run.data.params["data.rows"] == "200"
    assert run.data.params["data_train_size"] == str(round(200 * 0.8 * 0.9))
    assert metrics["served_agreement"] == 1.0
    # its lineage: rows that code made, logged as such and read back as written
    logged = tracking.datasets(cfg.tracking.uri, "textclf", [run.info.run_id])[run.info.run_id]
    assert {s.source for s in logged.values()} == {"memory:memory"}
    assert sum(s.rows for s in logged.values()) == 200


def test_a_key_of_another_source_is_a_compose_time_error(make_config, tmp_path, memory_source):
    searched = option(
        tmp_path / "fork", "data", "memory", "defaults:\n  - memory_schema\n  - _self_\n"
    )
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="text_column"):
        make_config(searched, "data=memory", "data.text_column=review")
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="rows"):
        make_config("data=csv", "data.path=x.csv", "data.rows=10")


def test_a_new_batching_strategy_is_a_function_a_yaml_file_and_a_registry_line(
    make_config, tmp_path, half_strategy
):
    searched = option(tmp_path / "fork", "batching", "half", "strategy: half\n")
    path = write_csv(tmp_path / "r.csv", reviews(240))
    cfg = make_config(searched, "batching=half", "data=csv", f"data.path={path}", *SMALL)
    assert cfg.batching.strategy == "half" and not cfg.batching.truncates
    metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "half·mask_zero·s42"
    assert run.data.tags["batching"] == "half" and run.data.params["batching.strategy"] == "half"
    assert 7 < metrics["batch_rows"] <= 8  # half of 16, the last batch of an epoch smaller
    assert metrics["served_agreement"] == 1.0
