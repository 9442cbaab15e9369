"""`train.strategy=mirrored` end to end on two logical CPU devices."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from .conftest import quick

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from textclf.cli import main
sys.argv = ["textclf", *sys.argv[1:]]
main()
"""


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path, tiny_csv):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            "train",
            "data=csv",
            f"data.path={tiny_csv}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *quick(tmp_path),
            "train.strategy=mirrored",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    log = (tmp_path / "run" / "train.log").read_text() + done.stderr
    assert "CPU:0" in log and "CPU:1" in log  # MirroredStrategy reports its two replicas
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.strategy"] == "mirrored"
    assert run.data.metrics["test_accuracy"] >= 0.75
