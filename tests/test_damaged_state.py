"""Damaged state fails fast and clearly: a broken checkpoint, an output folder that cannot be
written, and a setting whose name Hydra would read as a config group."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from textclf import data, train
from textclf.cli import CONF_DIR
from textclf.config import ConfigError, EvaluateModelConfig
from textclf.run_folder import RunFolder

from .conftest import reviews, run_pipeline, write_csv

TINY = ["train.epochs=1", "model.units=4", "model.embedding_dim=4", "tokenize.vocab_size=50"]


def checkpoint_file(path: Path, meta: dict | None = None) -> Path:
    """A small .npz shaped like a Checkpoint's: a `meta` record and one array."""
    arrays = {"model_0": np.zeros((3, 2), np.float32)}
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


DAMAGES = {
    "truncated": lambda p: p.write_bytes(checkpoint_file(p, {"epoch": 1}).read_bytes()[:200]),
    "not a zip": lambda p: p.write_bytes(b"no checkpoint at all"),
    "no record": lambda p: checkpoint_file(p),
    "a partial record": lambda p: checkpoint_file(p, {"epoch": 1}),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_is_one_message_naming_it_and_the_ways_on(tmp_path, damage):
    path = tmp_path / RunFolder.CHECKPOINT
    DAMAGES[damage](path)
    with pytest.raises(train.CheckpointMismatch) as error:
        train.Checkpoint(path, train.EarlyStopping(2, 0.0), train.Timer())
    message = str(error.value)
    assert f"the checkpoint {path} is damaged" in message
    assert f"rm {path}" in message and "without train.resume" in message
    assert len(message) < 600 and "\n" not in message  # one screen, no traceback text


def resumable_config(make_config, tmp_path: Path, *overrides: str):
    return make_config(
        "data=csv", f"data.path={write_csv(tmp_path / 'r.csv', reviews(40))}", *TINY, *overrides
    )


def fail_if_data_is_read(monkeypatch) -> None:
    monkeypatch.setattr(data, "load", lambda *a: pytest.fail("the data were read first"))


def test_resuming_from_a_damaged_checkpoint_fails_before_the_data_and_the_run_is_failed(
    make_config, tmp_path, monkeypatch
):
    cfg = resumable_config(make_config, tmp_path, "train.resume=true")
    folder = RunFolder(Path(cfg.output_dir))
    folder.write_json(RunFolder.CONFIG, asdict(cfg))  # as the interrupted run left it
    DAMAGES["truncated"](folder.checkpoint)
    fail_if_data_is_read(monkeypatch)
    with pytest.raises(train.CheckpointMismatch, match="is damaged"):
        run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("CheckpointMismatch: the checkpoint")


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_an_output_folder_that_cannot_be_written_is_named_before_anything_runs(
    make_config, tmp_path, monkeypatch, where
):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "run" if where == "under a file" else blocker
    cfg = resumable_config(make_config, tmp_path, f"output_dir={out}")
    fail_if_data_is_read(monkeypatch)
    with pytest.raises(ConfigError, match=f"output_dir: cannot create or write {out} "):
        run_pipeline(cfg)
    assert MlflowClient(cfg.tracking.uri).get_experiment_by_name("textclf") is None  # no run


def test_the_evaluation_experiment_is_set_without_colliding_with_hydras_group(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "evaluate_model",
            overrides=[
                "evaluate_experiment=holdout",
                "data=csv",
                "data.path=r.csv",
                f"output_dir={tmp_path}",
                f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
            ],
        )
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, EvaluateModelConfig) and config.evaluate_experiment == "holdout"
    assert "experiment" not in cfg  # `experiment=<name>` stays Hydra's config group
