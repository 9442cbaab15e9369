"""Sweeps on real cluster engines, all on this machine: a Ray head on 127.0.0.1 and submitit's
local executor; a failed job is recorded and the sweep goes on; an interrupted sweep resumes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import (
    free_port,
    quick,
    reviews,
    signalled_at_epoch,
    textclf,
    textclf_here,
    venv_env,
    write_csv,
)

pytestmark = pytest.mark.slow
VARIANTS = ["per_batch", "exact"]


def parent_and_children(uri: str) -> tuple:
    """The one sweep parent run of the store and its child runs."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def assert_all_finished(uri: str, variants: list[str]) -> None:
    parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_failed"] == "0"
    assert sorted(r.data.tags["batching"] for r in children) == sorted(variants)
    assert all(
        r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children
    ), [(r.data.tags["batching"], r.info.status) for r in children]


def sweep(
    tmp_path: Path,
    *args: str,
    variants: list[str] = VARIANTS,
    data: str | None = None,
    entry=textclf_here,
):
    """A tiny `--multirun` over `variants`, by default in this process (`textclf_here`)."""
    data = data or str(write_csv(tmp_path / "r.csv", reviews(120)))
    return entry(
        "train",
        "--multirun",
        "data=csv",
        f"data.path={data}",
        f"batching={','.join(variants)}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *quick(tmp_path),
        "train.epochs=1",
        *args,
        cwd=tmp_path,
    )


def session_processes(sid: int) -> list[int]:
    """The processes of session `sid`: what one process started with start_new_session left."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found


@pytest.fixture
def ray_head(monkeypatch):
    """A real Ray head with 2 CPUs on free ports, in a session of its own so that stopping it
    ends exactly the processes it started (Ray's workers take their own process groups).

    `--node-ip-address=127.0.0.1` is passed, but Ray replaces a loopback address with this
    machine's own (`services.resolve_ip_for_localhost`) and its servers listen on every
    interface: the traffic stays on this machine, and the head lives only for this test."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed: pip install -e '.[ray]'")
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    # a private HOME for the head and the sweep: Ray reads ~/.ray/auth_token, and a token left
    # there by another cluster makes the driver's connection fail with InvalidAuthToken
    monkeypatch.setenv("HOME", str(temp_dir))
    log = temp_dir / "head.log"
    ports = {
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"{k}={v}" for k, v in ports.items()),
    ]
    with log.open("w") as sink:
        head = subprocess.Popen(
            command,
            env=venv_env(RAY_USAGE_STATS_ENABLED="0"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        # `ray stop` would end every Ray process of the machine; a graceful SIGTERM to the
        # head takes about 30 s here, so the session gets 5 s and then SIGKILL.
        head.terminate()
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_processes(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_sweep_on_a_local_head_is_one_parent_with_finished_children(tmp_path, ray_head):
    done = sweep(  # in a fresh process: Ray's client stays connected in the one it starts in
        tmp_path,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address=127.0.0.1:{ray_head}",
        entry=textclf,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert re.search(
        rf"Connecting to existing Ray cluster at address: [\d.]+:{ray_head}\b", output
    ), output[-3000:]  # the test's head, not a private cluster
    assert_all_finished(f"sqlite:///{tmp_path / 'mlflow.db'}", VARIANTS)


def test_submitit_local_sweep_is_one_parent_with_finished_children(tmp_path):
    done = sweep(tmp_path, "hydra/launcher=submitit_local")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert_all_finished(f"sqlite:///{tmp_path / 'mlflow.db'}", VARIANTS)
    # submitit's own job folders: its pickled job and result, and each job's log
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2


def test_a_failed_submitit_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    good = write_csv(tmp_path / "good.csv", reviews(120))
    done = sweep(
        tmp_path,
        "hydra/launcher=submitit_local",
        variants=["exact"],
        data=f"{good},{tmp_path / 'gone.csv'}",
    )
    assert done.returncode != 0  # the sweep reports its failed job after running all of them
    parent, children = parent_and_children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs_failed"] == "1"
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    [failed] = [r for r in children if r.info.status == "FAILED"]
    assert "gone.csv" in failed.data.tags["error"] and "does not exist" in failed.data.tags["error"]


def test_a_killed_sweep_resumes_its_unfinished_jobs_under_the_same_parent(tmp_path):
    """SIGKILL as the second of three sequential jobs starts its second epoch: the first job is
    done, the
    second has a checkpoint, the third never started; `textclf resume <sweep folder>` skips the
    first, continues the second in its own MLflow run and runs the third."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    variants = ["fixed", "per_batch", "exact"]
    data = write_csv(tmp_path / "r.csv", reviews(240))
    sweep_dir = tmp_path / "sweep"
    first = signalled_at_epoch(
        1,
        signal.SIGKILL,
        "train",
        "--multirun",
        "data=csv",
        f"data.path={data}",
        f"batching={','.join(variants)}",
        f"hydra.sweep.dir={sweep_dir}",
        *quick(tmp_path),
        "train.epochs=3",
        "train.patience=3",
        cwd=tmp_path,
        job=1,
        log=tmp_path / "first.log",
    )
    first.wait(timeout=600)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert list(sweep_dir.glob("1_*/checkpoint.npz"))  # the second job's first epoch
    assert not list(sweep_dir.glob("2_*"))  # the third job never started
    parent, before = parent_and_children(uri)
    assert parent.info.status == "RUNNING"  # SIGKILL: nothing could end it
    [done_before] = [r.info.run_id for r in before if r.info.status == "FINISHED"]
    [killed] = [r.info.run_id for r in before if r.info.status == "RUNNING"]

    resumed = textclf_here("resume", str(sweep_dir), cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "skipped" in output and "resuming from" in output
    assert_all_finished(uri, variants)
    after_parent, after = parent_and_children(uri)
    assert after_parent.info.run_id == parent.info.run_id
    assert {done_before, killed} < {r.info.run_id for r in after}  # the same runs, one new
