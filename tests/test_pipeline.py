"""The real entry point on tiny data, read back from the MLflow store it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def textclf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "textclf.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def quick(tmp_path: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.epochs=3",
        "train.learning_rate=0.01",
        "model.units=8",
        "model.embedding_dim=16",
        "tokenize.vocab_size=200",
        "batching.batch_size=16",
        "train.verbose=0",
    ]


def test_train_logs_run_params_metrics_artifacts_and_a_usable_model(tmp_path, tiny_csv):
    run_dir = tmp_path / "run"
    done = textclf(
        "train",
        "data=csv",
        f"data.path={tiny_csv}",
        f"hydra.run.dir={run_dir}",
        *quick(tmp_path),
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
        "bucket",
        "post",
        "mask_zero",
        "csv",
    )
    assert tags["choice.data"] == "csv" and len(tags["git_commit"]) >= 7
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
        "import keras, tensorflow as tf, textclf.pipeline\n"
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
    done = textclf(
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
    done = textclf(
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


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_is_marked_killed_not_left_running(tmp_path, tiny_csv, how):
    command = [sys.executable, "-m", "textclf.cli", "train", "data=csv", f"data.path={tiny_csv}",
               f"hydra.run.dir={tmp_path / 'run'}", *quick(tmp_path), "train.epochs=500",
               "train.patience=500", "train.verbose=2"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait for training to be under way
            if line.startswith("Epoch 2/"):
                break
        proc.send_signal(how)
        proc.wait(timeout=300)  # generous: CI machines may be busy
    finally:
        proc.kill()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["error"]


def test_same_seed_data_and_config_give_the_same_metrics(tmp_path, tiny_csv):
    results = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        done = textclf("train", "data=csv", f"data.path={tiny_csv}", f"hydra.run.dir={run_dir}",
                       *quick(tmp_path), "train.deterministic=true", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results.append({k: v for k, v in metrics.items()
                        if k.startswith("test_") or k == "padding_efficiency"})
    assert results[0] == results[1]
