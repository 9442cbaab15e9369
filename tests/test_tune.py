"""`make tune` (textclf tune): an Optuna study in a database of its own that a second run
continues, trials pruned from their per-epoch validation metric, each trial an MLflow child run
whose id it keeps, and the best trial and Optuna's plots on the parent run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from textclf import tracking
from textclf.config import ConfigError, TuneConfig

from .conftest import reviews, textclf_here, write_csv


@pytest.fixture(autouse=True)
def optuna_installed() -> None:
    if importlib.util.find_spec("optuna") is None:
        message = "Optuna is not installed (make install EXTRAS=dev,optuna)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test: {message}")
        pytest.skip(message)


def search(**kw) -> TuneConfig:
    return TuneConfig(**{"space": {"model.units": "choice(4, 8)"}} | kw)


# --- the search space, the pruners and the study, without training ------------------------


def test_the_space_in_hydra_sweep_syntax_becomes_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from textclf.studies.tune import distributions

    found = distributions(
        {
            "model.units": "choice(32, 64)",
            "batching": "choice(bucket,exact)",
            "train.patience": "range(1, 4)",
            "model.dropout": "interval(0, 0.5)",
            "train.learning_rate": "tag(log, interval(0.0001, 0.003))",
        }
    )
    assert found == {
        "model.units": CategoricalDistribution([32, 64]),
        "batching": CategoricalDistribution(["bucket", "exact"]),
        "train.patience": CategoricalDistribution([1, 2, 3]),  # Hydra's range leaves out stop
        "model.dropout": FloatDistribution(0.0, 0.5),
        "train.learning_rate": FloatDistribution(0.0001, 0.003, log=True),
    }
    with pytest.raises(ConfigError, match=r"tune.space.model.units: '64' is not a range"):
        distributions({"model.units": "64"})
    with pytest.raises(
        ConfigError,
        match=r"tune.space.model.dropout: 'interval\(0.5, 0.1\)' "
        "needs low < high",
    ):
        distributions({"model.dropout": "interval(0.5, 0.1)"})
    with pytest.raises(ConfigError, match="tune.space.model.units: cannot read"):
        distributions({"model.units": "choice(4,"})


@pytest.mark.parametrize(
    "kw,pruned",
    [
        ({"pruner": "median", "prune_startup_trials": 1}, True),
        ({"pruner": "median", "prune_startup_trials": 2}, False),  # one finished trial is too few
        ({"pruner": "median", "prune_startup_trials": 1, "prune_from_epoch": 2}, False),
        ({"pruner": "halving"}, True),
        ({"pruner": "threshold", "prune_threshold": 0.6}, True),
        ({"pruner": "threshold", "prune_threshold": 0.4}, False),
        ({"pruner": "none"}, False),
    ],
)
def test_each_pruner_prunes_a_trial_behind_the_finished_one(kw, pruned):
    """A finished trial had val_accuracy 0.9 after epoch 1; a new one reports 0.5."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from textclf.studies.tune import pruner

    study = optuna.create_study(direction="maximize", pruner=pruner(search(**kw), "maximize"))
    space = {"model.units": CategoricalDistribution([4, 8])}
    first = study.ask(space)
    first.report(0.9, step=1)
    assert not first.should_prune()
    study.tell(first, 0.9)
    trial = study.ask(space)
    trial.report(0.5, step=1)
    assert bool(trial.should_prune()) is pruned


def test_a_reopened_study_continues_without_drawing_its_trials_again(tmp_path):
    from textclf.studies.tune import RUN_ID, distributions, open_study

    cfg = search(
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        seed=3,
        startup_trials=10,
        space={"model.dropout": "interval(0, 0.5)"},
    )
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = open_study(cfg, "val_accuracy", mlflow_uri)
    trial = first.ask(distributions(cfg.space))
    trial.set_user_attr(RUN_ID, "run-0")
    first.tell(trial, 0.7)

    again = open_study(cfg, "val_accuracy", mlflow_uri)
    assert [(t.number, t.value, t.user_attrs) for t in again.trials] == [
        (0, 0.7, {RUN_ID: "run-0"})
    ]
    drawn = again.ask(distributions(cfg.space))
    assert drawn.number == 1 and drawn.params != trial.params  # a fixed seed would repeat it
    with pytest.raises(ConfigError, match="searches val_accuracy, not optimized_metric=val_loss"):
        open_study(cfg, "val_loss", mlflow_uri)


def test_the_study_refuses_mlflows_database(tmp_path, empty_store):
    from textclf.studies.tune import open_study

    mlflow_uri = f"sqlite:///{empty_store}"
    for storage in (
        mlflow_uri,
        f"sqlite:///{empty_store.parent}/../{empty_store.parent.name}/{empty_store.name}",
    ):
        with pytest.raises(
            ConfigError, match="holds MLflow's tracking store; give Optuna a database of its own"
        ):
            open_study(search(storage=storage), "val_accuracy", mlflow_uri)
    with pytest.raises(ConfigError, match="tune.storage: cannot open postgresql"):
        open_study(
            search(storage="postgresql+psycopg://nobody@127.0.0.1:1/optuna"),
            "val_accuracy",
            mlflow_uri,
        )


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"space": {}}, "tune.space: is empty"),
        ({"n_trials": 0}, "tune.n_trials: must be > 0"),
        ({"pruner": "hyperband"}, "tune.pruner: 'hyperband' is not one of"),
        ({"pruner": "threshold"}, "tune.prune_threshold: is set with tune.pruner=threshold"),
        ({"prune_threshold": 0.5}, "tune.prune_threshold: is set with tune.pruner=threshold"),
        ({"prune_from_epoch": 0}, "tune.prune_from_epoch: must be >= 1"),
    ],
)
def test_a_search_setting_that_cannot_work_is_named(kw, message):
    with pytest.raises(ConfigError, match=message):
        search(**kw)


# --- textclf tune end to end, on tiny data --------------------------------------------------

# `textclf tune` sent SIGTERM as its training number `n` (from 0) begins: the search is
# interrupted during a known trial, not at a moment a timer guesses.
SIGNAL_AT_TRAINING = """
import os, signal, sys
from textclf import cli, train
at, begun = int(sys.argv[1]), []
def on_train_begin(self, logs=None):
    begun.append(1)
    if len(begun) == at + 1:
        os.kill(os.getpid(), signal.SIGTERM)
train.StopRequest.on_train_begin = on_train_begin
sys.argv = ["textclf", *sys.argv[2:]]
cli.main()
"""


def tiny_search(tmp_path: Path, data: Path) -> list[str]:
    return [
        "tune",
        "data=csv",
        f"data.path={data}",
        f"hydra.run.dir={tmp_path / 'search'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}",
        "tune.n_trials=3",
        "model.units=choice(4,8)",
        "tokenize.vocab_size=choice(100,200)",
        "model.embedding_dim=16",
        "batching.batch_size=16",
        "train.epochs=2",
        "train.verbose=0",
        "evaluate.served_limit=20",
        "evaluate.plots=false",
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_an_interrupted_search_continues_its_study_and_prunes(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from textclf.studies.tune import HISTORY, IMPORTANCE, PARENT_RUN_ID, RUN_ID, TRIALS

    args = tiny_search(tmp_path, write_csv(tmp_path / "reviews.csv", reviews(160)))
    stopped = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_TRAINING, "1", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 130, output[-4000:]
    assert "`make tune` (textclf tune) again continues the study" in output
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="imdb_optuna", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    best = study.best_trial
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = study.user_attrs[PARENT_RUN_ID]
    assert client.get_run(parent_id).info.status == "KILLED"

    # again, now with a pruner no trial passes (val_accuracy never exceeds 1): the study goes
    # on from its two trials, the new ones stop after their first epoch
    done = textclf_here(*args, "tune.pruner=threshold", "tune.prune_threshold=1.01", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    study = optuna.load_study(study_name="imdb_optuna", storage=storage)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
        TrialState.PRUNED,
    ]
    assert study.best_trial.number == best.number and study.best_value == best.value
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # none drawn twice
    for trial in study.trials[2:]:
        assert list(trial.intermediate_values) == [1]  # reported after epoch 1, then pruned

    # each trial a child of the same parent run, which the second search reopened
    runs = {t.number: client.get_run(t.user_attrs[RUN_ID]) for t in study.trials}
    assert {r.data.tags[tracking.PARENT_TAG] for r in runs.values()} == {parent_id}
    assert {n: r.info.status for n, r in runs.items()} == {
        0: "FINISHED",
        1: "KILLED",
        2: "KILLED",
        3: "KILLED",
    }
    for number in (2, 3):
        assert runs[number].data.tags["stopped"].startswith("pruned by Optuna after epoch 1")
        steps = [
            m.step for m in client.get_metric_history(runs[number].info.run_id, "val_accuracy")
        ]
        assert steps == [1]
    assert runs[0].data.tags["optuna.trial"] == "0"
    assert runs[0].data.metrics["best_val_accuracy"] == best.value
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs[RUN_ID]
    assert parent.data.tags["best.model.units"] == str(best.params["model.units"])
    assert parent.data.tags["search.model.units"] == "choice(4,8)"
    assert parent.data.tags["search.model.dropout"] == "interval(0.0, 0.5)"
    assert parent.data.metrics["best_val_accuracy"] == best.value
    assert {k: parent.data.metrics[f"trials_{k}"] for k in ("complete", "pruned", "fail")} == {
        "complete": 1,
        "pruned": 2,
        "fail": 1,
    }
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {HISTORY, TRIALS} <= artifacts and IMPORTANCE not in artifacts  # one complete trial
    assert "no parameter importance plot yet: it needs 2 completed trials" in done.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_failed_trials_are_failed_runs_and_the_search_says_so(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from textclf.studies.tune import RUN_ID

    args = [*tiny_search(tmp_path, tmp_path / "gone.csv"), "tune.n_trials=2"]
    done = textclf_here(*args, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert "2 trials failed; their runs hold the error" in output
    study = optuna.load_study(
        study_name="imdb_optuna", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in study.trials:
        run = client.get_run(trial.user_attrs[RUN_ID])
        assert run.info.status == "FAILED" and "does not exist" in run.data.tags["error"]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_fail"] == 2
    assert "best_trial" not in parent.data.tags


@pytest.mark.e2e
def test_textclf_train_refuses_a_search_config(tmp_path):
    done = textclf_here(
        "train", "hparams_search=imdb_optuna", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "a search runs with `textclf tune` (make tune)" in output
    assert "Traceback" not in output
