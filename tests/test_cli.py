"""The real entry point on tiny data, read back from the MLflow store it wrote: output, exit
codes, signals and resuming. In a fresh process where signals or determinism across processes
are the point, else in this one (`textclf_here`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from .conftest import quick, reviews, signalled_at_epoch, textclf, textclf_here, write_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_train_logs_run_params_metrics_artifacts_and_a_usable_model(tmp_path, tiny_csv):
    run_dir = tmp_path / "run"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a checkout"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    done = textclf_here(
        "train",
        "data=csv",
        f"data.path={tiny_csv}",
        f"hydra.run.dir={run_dir}",
        *quick(tmp_path),
        "evaluate.plots=true",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.units"] == "8" and run.data.params["data.source"] == "csv"
    for name in (
        "test_loss",
        "test_accuracy",
        "test_precision",
        "test_recall",
        "test_f1",
        "test_auc",
        "padding_efficiency",
        "train_reviews_per_s",
        "epoch_seconds",
        "peak_rss_mb",
    ):
        assert name in run.data.metrics, name
    assert run.data.metrics["test_accuracy"] >= 0.75
    assert 0 < run.data.metrics["padding_efficiency"] <= 1
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3][: len(history)] and history
    tags = run.data.tags
    assert (tags["batching"], tags["padding_side"], tags["masking"], tags["data"]) == (
        "pooled",
        "post",
        "mask_zero",
        "csv",
    )
    assert tags["choice.data"] == "csv"
    # MLflow's own source tags, which fill the UI's Source column: the command and the commit
    assert tags["mlflow.source.name"] == "textclf train"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == head.strip()
    # the run ends by saying how it scored, where it went and what to run next
    last = done.stdout.strip().splitlines()[-5:]
    assert f"test accuracy {run.data.metrics['test_accuracy']:.4f}" in last[0], last
    assert f"served one review at a time {run.data.metrics['served_accuracy']:.4f}" in last[0]
    assert str(run_dir) in last[1] and run.info.run_id in last[2] and "'textclf'" in last[2]
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in last[3]
    assert "make predict ARGS='run_id=" + run.info.run_id in last[4]
    assert "INFO mlflow" not in done.stdout + done.stderr  # MLflow's chatter is quiet
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.keras", "vocabulary.txt", "config.json", "metrics.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "plots/length_histogram.png",
    } <= plots
    assert (run_dir / "train.log").exists() and (run_dir / "model.keras").exists()

    # The saved model takes raw strings in a fresh process (custom layers registered on import).
    script = (
        "import keras, tensorflow as tf, textclf.inference\n"
        f"m = keras.models.load_model({str(run_dir / 'model.keras')!r})\n"
        "p = m.predict(tf.constant(['a wonderful film, i loved every minute of it <br />',"
        " 'a terrible film, boring and pointless', '']), verbose=0)\n"
        "print(' '.join(f'{v:.4f}' for v in p[:, 0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    positive, negative, empty = map(float, out.stdout.split()[-3:])
    assert positive > 0.5 > negative and 0 <= empty <= 1


def test_bad_input_is_one_clear_message_not_a_traceback(tmp_path):
    done = textclf_here(
        "train",
        "data=csv",
        f"data.path={tmp_path / 'missing.csv'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *quick(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_config_error_names_the_key_before_reading_data(tmp_path):
    done = textclf_here(
        "train",
        "data=csv",
        f"data.path={tmp_path / 'missing.csv'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *quick(tmp_path),
        "model.units=-3",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "model.units: must be > 0, got -3" in output
    assert "does not exist" not in output and not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_marks_the_run_killed_not_left_running(tmp_path, tiny_csv):
    """SIGINT (Ctrl-C) as epoch 2 begins; SIGTERM is the resume test's first case."""
    proc = signalled_at_epoch(
        1,
        signal.SIGINT,
        "train",
        *quick(tmp_path),
        "data=csv",
        f"data.path={tiny_csv}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "train.verbose=2",
        cwd=tmp_path,
    )
    rest = proc.communicate(timeout=600)[0]
    assert proc.returncode == 130 and "`make resume`" in rest and "Traceback" not in rest
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["error"]
    assert (tmp_path / "run" / "checkpoint.npz").exists()  # kept for `textclf resume`


def checkpoint_epoch(path: Path) -> int:
    with np.load(path) as saved:
        return json.loads(saved["meta"].item())["epoch"]


RESUMED = ("train.epochs=8", "train.patience=8", "train.deterministic=true", "model.dropout=0.3")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    """The run the interrupted ones must end up equal to: its data file and final metrics."""
    tmp_path = tmp_path_factory.mktemp("whole")
    data = write_csv(tmp_path / "reviews.csv", reviews(800))
    whole = textclf_here(
        "train",
        *quick(tmp_path),
        "data=csv",
        f"data.path={data}",
        *RESUMED,
        f"hydra.run.dir={tmp_path / 'whole'}",
        cwd=tmp_path,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    return data, json.loads((tmp_path / "whole" / "metrics.json").read_text())


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_resumes_in_its_folder_and_mlflow_run_to_the_same_result(
    tmp_path, how, uninterrupted
):
    data, expected = uninterrupted
    same = ["data=csv", f"data.path={data}", *RESUMED]

    run_dir, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint.npz"
    proc = signalled_at_epoch(
        2, how, "train", *quick(tmp_path), *same, f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == (-how if how == signal.SIGKILL else 130), output[-3000:]
    done_epochs = checkpoint_epoch(checkpoint)
    assert done_epochs == 2  # the epochs before the signal, and no more
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the store stays readable
    experiment = client.get_experiment_by_name("textclf").experiment_id
    [killed] = client.search_runs([experiment])
    assert killed.info.status == ("RUNNING" if how == signal.SIGKILL else "KILLED")

    if how == signal.SIGTERM:  # what the run says and the refusals: checked once
        assert "`make resume`" in output and "Traceback" not in output
        assert "interrupted" in killed.data.tags["error"]
        changed = textclf_here("resume", str(run_dir), "model.units=9", cwd=tmp_path)
        assert changed.returncode == 2 and "model.units: 8 -> 9" in changed.stdout + changed.stderr
        empty = textclf_here(
            "train",
            *quick(tmp_path),
            "train.resume=true",
            f"hydra.run.dir={tmp_path / 'empty'}",
            cwd=tmp_path,
        )
        assert empty.returncode == 2 and "holds no earlier run" in empty.stdout + empty.stderr

    resumed = textclf_here("resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 2" in resumed.stdout + resumed.stderr
    [run] = client.search_runs([experiment])  # the same run, now complete
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")][-1] == 8
    assert not checkpoint.exists()
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in [k for k in expected if k.startswith("test_")] + ["epochs_run", "best_epoch"]:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_same_seed_data_and_config_give_the_same_metrics(tmp_path, tiny_csv):
    """Once in a fresh process, once in this one: nothing but the seed decides."""
    results = []
    for name, entry in (("a", textclf), ("b", textclf_here)):
        run_dir = tmp_path / name
        done = entry(
            "train",
            "data=csv",
            f"data.path={tiny_csv}",
            f"hydra.run.dir={run_dir}",
            *quick(tmp_path),
            "train.deterministic=true",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results.append(
            {k: v for k, v in metrics.items() if k.startswith("test_") or k == "padding_efficiency"}
        )
    assert results[0] == results[1]


def test_resume_without_a_folder_takes_the_newest_interrupted_run(tmp_path):
    from textclf import resume

    for name, age in (("runs/old", 100), ("sweeps/s/0_x", 50), ("runs/finished", 0)):
        folder = tmp_path / "outputs" / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- model.units=8\n- train.resume=true\n- tracking.run_name={name.replace('/', '-')}\n"
        )
        if name != "runs/finished":  # a finished run has deleted its checkpoint
            checkpoint = folder / "checkpoint.npz"
            checkpoint.write_bytes(b"")
            os.utime(checkpoint, (time.time() - age, time.time() - age))
    newest = (tmp_path / "outputs" / "sweeps" / "s" / "0_x").resolve()
    assert resume.arguments(["train.verbose=0"], tmp_path / "outputs") == [
        "model.units=8",
        "tracking.run_name=sweeps-s-0_x",
        f"hydra.run.dir={newest}",
        "hydra.output_subdir=null",
        "train.resume=true",
        "train.verbose=0",
    ]
    with pytest.raises(SystemExit, match="not a run folder"):
        resume.arguments([str(tmp_path)], tmp_path / "outputs")


def test_sweep_job_folders_stay_short_and_distinct():
    from textclf.cli import SHORT_NAME, short_name

    few = "batching=bucket,train.seed=0"
    assert short_name(few) == few
    many = [",".join(f"key{i}.value=é{i}{suffix}" for i in range(30)) for suffix in "ab"]
    names = [short_name(m) for m in many]
    assert all(len(n.encode()) <= SHORT_NAME for n in names) and names[0] != names[1]
    assert names[0].startswith("key0.value=é0a")
    assert short_name("data.test_path=/data/test.csv") == "data.test_path=_data_test.csv"


def test_the_usage_line_names_every_command(capsys):
    from textclf import cli

    with pytest.raises(SystemExit) as stop, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["textclf", "--help"])
        cli.main()
    assert stop.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    for command in [*cli.COMMANDS, "log-model"]:
        assert command in usage, command


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_made_is_named_before_hydra_starts(tmp_path, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [
        "train",
        *(["--multirun"] if key == "hydra.sweep.dir" else []),
        f"{key}={blocker / 'run'}",
        *quick(tmp_path),
    ]
    done = textclf_here(*args, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert f"cannot create or write the output folder {blocker / 'run'}" in output
    assert "Traceback" not in output and not (tmp_path / "mlflow.db").exists()
