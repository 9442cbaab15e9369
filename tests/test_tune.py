"""`make tune`: Hydra's Optuna sweeper over conf/hparams_search/imdb_optuna.yaml; every trial is a
child MLflow run, and the parent holds the best trial's parameters, value and a plot."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from textclf import tracking
from textclf.cli import ROOT
from textclf.tune import PLOT_FILE, RESULTS_FILE

from .conftest import quick, reviews, textclf, venv_env, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
TRIALS = 3


@pytest.fixture(autouse=True)
def optuna_sweeper() -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        message = "Hydra's Optuna sweeper is not installed (.venv/bin/pip install -e '.[optuna]')"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test: {message}")
        pytest.skip(message)


def test_make_tune_runs_each_trial_as_a_child_and_logs_the_best_on_the_parent(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", reviews(160))
    sweep_dir, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = (f"data=csv data.path={data} hydra.sweep.dir={sweep_dir} tracking.uri={uri} "
            f"hydra.sweeper.n_trials={TRIALS} 'model.units=choice(4,8)' "
            "'tokenize.vocab_size=choice(100,200)' model.embedding_dim=16 batching.batch_size=16 "
            "train.epochs=2 train.verbose=0 evaluate.served_limit=20")
    env = {k: v for k, v in venv_env().items() if not k.startswith(("MAKE", "MFLAGS"))}
    done = subprocess.run(["make", "-C", str(ROOT), "tune", f"ARGS={args}"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imdb_optuna").experiment_id])
    [parent] = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(trials) == TRIALS
    for trial in trials:  # each ran with values drawn from the search space
        params = trial.data.params
        assert trial.info.status == "FINISHED" and "best_val_accuracy" in trial.data.metrics
        assert params["model.units"] in {"4", "8"}
        assert params["tokenize.vocab_size"] in {"100", "200"}
        assert 0.0 <= float(params["model.dropout"]) <= 0.5
        assert 1e-4 <= float(params["train.learning_rate"]) <= 3e-3
        assert params["model.embedding_dim"] == "16"  # fixed values reach every trial
    assert len({(t.data.params["model.dropout"], t.data.params["train.learning_rate"])
                for t in trials}) == TRIALS

    best = OmegaConf.load(sweep_dir / RESULTS_FILE)
    values = {t.info.run_id: t.data.metrics["best_val_accuracy"] for t in trials}
    assert best.best_value == max(values.values())  # maximized, over validation accuracy
    logged = parent.data
    assert logged.metrics["best_val_accuracy"] == best.best_value
    assert logged.metrics["trials_finished"] == TRIALS
    assert {k: logged.params[f"best.{k}"] for k in best.best_params} == {
        k: str(v) for k, v in best.best_params.items()}
    assert values[logged.params["best_run_id"]] == best.best_value
    assert logged.params["search.model.dropout"] == "interval(0.0, 0.5)"
    assert {RESULTS_FILE, PLOT_FILE} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert (sweep_dir / PLOT_FILE).stat().st_size > 0


def test_a_failed_trial_is_a_failed_run_and_the_search_goes_on(tmp_path):
    good, gone = write_csv(tmp_path / "reviews.csv", reviews(120)), tmp_path / "gone.csv"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the sampler's fixed seed (conf/hparams_search/imdb_optuna.yaml) picks both files in 4
    done = textclf("train", "--multirun", "hparams_search=imdb_optuna", "hydra.sweeper.n_trials=4",
                   "data=csv", f"data.path=choice({good},{gone})",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", *quick(tmp_path), "train.epochs=1",
                   f"tracking.uri={uri}", "evaluate.served_limit=20", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]  # reported at the end, after every trial

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imdb_optuna").experiment_id])
    [parent] = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    trials = [r for r in runs if r is not parent]
    statuses = {(r.data.params["data.path"], r.info.status) for r in trials}
    assert statuses == {(str(good), "FINISHED"), (str(gone), "FAILED")} and len(trials) == 4
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert all("does not exist" in r.data.tags["error"] for r in failed)
    assert f"{len(failed)} of 4 jobs failed" in output
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_failed"] == str(len(failed))
    assert parent.data.params["best.data.path"] == str(good)
    assert parent.data.metrics["trials_finished"] == 4 - len(failed)
