"""On a subset of the real IMDB archive the model learns: clearly above chance."""

from __future__ import annotations

import json

import pytest

from .conftest import textclf_here

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_model_learns_on_a_subset_of_real_imdb(tmp_path, archive):
    run_dir = tmp_path / "run"
    done = textclf_here(
        "train",
        "data=aclimdb",
        f"data.path={archive}",
        "data.limit=1000",
        "train.epochs=2",
        "evaluate.served_limit=200",  # served answers are tested on tiny data; spare 1,800 calls
        f"hydra.run.dir={run_dir}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.70, metrics  # chance is 0.5 on the balanced subset
    # the default length-sorted pools on real lengths: 0.81 here (random batches of 64: 0.27)
    assert metrics["padding_efficiency"] >= 0.75


def test_the_shared_url_lists_give_every_training_review_its_movie(archive):
    """aclImdb's training reviews cover 3,456 movies (README of shared/data)."""
    from textclf import data
    from textclf.data.aclimdb import AclImdbConfig

    if not (archive.parent / data.aclimdb.URLS_FOLDER).is_dir():
        pytest.skip(f"no {data.aclimdb.URLS_FOLDER}/ beside {archive}")
    ds = data.load(AclImdbConfig(path=str(archive)))
    assert ds.stats["val_movies"] + ds.stats["train_movies"] == 3456
    assert not set(ds.val.groups.tolist()) & set(ds.train.groups.tolist())
    assert abs(len(ds.val) - 2500) < 60  # whole movies of up to 30 reviews make up 10%
