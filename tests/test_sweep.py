"""Sweeps with parallel processes lose no run, against SQLite and against a real MLflow server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import free_port, quick, reviews, textclf, textclf_here, write_csv

pytestmark = pytest.mark.e2e
STRATEGIES = ["fixed", "per_batch", "bucket", "exact"]


def sweep_children(uri: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def parallel_sweep(tmp_path: Path, uri: str) -> subprocess.CompletedProcess:
    data = write_csv(tmp_path / "r.csv", reviews(160))
    return textclf(
        "train",
        "--multirun",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "data=csv",
        f"data.path={data}",
        f"batching={','.join(STRATEGIES)}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *quick(tmp_path),
        "train.epochs=1",
        f"tracking.uri={uri}",
        cwd=tmp_path,
    )


def test_parallel_sweep_on_sqlite_loses_no_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = parallel_sweep(tmp_path, uri)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    children = sweep_children(uri)
    assert sorted(r.data.tags["batching"] for r in children) == sorted(STRATEGIES)
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children)


@pytest.mark.slow
def test_parallel_sweep_against_a_tracking_server(tmp_path, mlflow_server):
    done = parallel_sweep(tmp_path, mlflow_server)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    children = sweep_children(mlflow_server)
    assert sorted(r.data.tags["batching"] for r in children) == sorted(STRATEGIES)
    client = MlflowClient(mlflow_server)
    for run in children:
        assert run.info.status == "FINISHED"
        assert "model.keras" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_unreachable_tracking_store_fails_before_training_naming_the_uri(tmp_path, tiny_csv):
    uri = f"http://127.0.0.1:{free_port()}"
    done = textclf_here(
        "train",
        "data=csv",
        f"data.path={tiny_csv}",
        f"hydra.run.dir={tmp_path / 'r'}",
        *quick(tmp_path),
        f"tracking.uri={uri}",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and uri in output and "Traceback" not in output
    assert "Epoch" not in output  # it stopped before training, not after MLflow's retries


def test_sweep_is_a_parent_run_with_one_child_per_job_and_survives_a_failed_job(tmp_path):
    good = write_csv(tmp_path / "good.csv", reviews(120))
    done = textclf_here(
        "train",
        "--multirun",
        "data=csv",
        f"data.path={good},{tmp_path / 'gone.csv'}",
        "batching=per_batch,exact",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *quick(tmp_path),
        "train.epochs=1",
        cwd=tmp_path,
    )
    assert done.returncode != 0  # Hydra reports the failed job after running all of them
    said = [
        line for line in done.stdout.splitlines() + done.stderr.splitlines() if "sweep job" in line
    ]
    assert [line.split("sweep job ")[1].split(":")[0] for line in said] == [
        f"{n} of 4" for n in (1, 2, 3, 4)
    ]
    assert "min left" in said[-1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("textclf").experiment_id
    runs = client.search_runs([experiment])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    statuses = sorted((r.data.tags["batching"], r.info.status) for r in children)
    assert statuses == [
        ("exact", "FAILED"),
        ("exact", "FINISHED"),
        ("per_batch", "FAILED"),
        ("per_batch", "FINISHED"),
    ]
    failed = [r for r in children if r.info.status == "FAILED"]
    assert all("does not exist" in r.data.tags["error"] for r in failed)
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_failed"] == "2"


@pytest.mark.parametrize(
    ("overrides", "jobs"),
    [
        (["experiment=compare_strategies"], 15),  # the experiment's 3 seeds x 5 batchings
        (["experiment=compare_strategies", "batching=bucket,pooled"], 6),  # the command line wins
        (["experiment=compare_strategies", "train.seed=0", "batching=bucket"], 1),
        (["model.units=8,16", "train.seed=0,1,2"], 6),
    ],
)
def test_planned_jobs_counts_the_sweep_as_hydras_basic_sweeper_will(overrides, jobs):
    from hydra import compose, initialize_config_dir

    from textclf.cli import CONF_DIR, register_schemas
    from textclf.sweep import planned_jobs

    register_schemas(with_models=True)
    experiment = [o for o in overrides if o.startswith("experiment=")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", overrides=experiment, return_hydra_config=True)
    # a multirun's config holds its command line, swept lists included, here
    config.hydra.overrides.task = overrides
    assert planned_jobs(config) == jobs
