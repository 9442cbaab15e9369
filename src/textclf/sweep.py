"""Hydra callbacks that make a multirun one MLflow parent run with a child run per job.

The parent process creates the store, the experiment and the parent run before any job
starts (parallel jobs racing to create a fresh SQLite store fail in its migrations), and
writes the parent's id into the sweep folder, where every job, local or on a cluster, reads it.
A resumed sweep reopens that parent run: FINISHED jobs are skipped, started ones continue from
their checkpoints, and jobs that never started run afresh.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .config import Config
from .run_folder import PARENT_RUN_ID, RunFolder

log = logging.getLogger(__name__)
PROJECT_STORE = "/outputs/mlflow.db"  # the end of the store's path `make ui` and make compare use


def saved_parent(sweep_dir: str | Path) -> str | None:
    """The parent run id saved in a sweep's folder, if it has one yet."""
    path = Path(sweep_dir) / PARENT_RUN_ID
    return path.read_text().strip() if path.exists() else None


def parent_run_id() -> str | None:
    """The sweep's parent run id when this job is part of a multirun."""
    hydra_cfg = HydraConfig.get()
    return saved_parent(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def finished_before(config: Config) -> dict[str, float] | None:
    """In a resumed sweep: this job's metrics when its run under the parent FINISHED before."""
    parent, folder = parent_run_id(), RunFolder(Path(config.output_dir))
    if parent is None or folder.missing(RunFolder.METRICS):
        return None
    done = any(
        run.info.status == "FINISHED" and run.data.tags.get("output_dir") == config.output_dir
        for run in tracking.children(config.tracking.uri, parent)
    )
    return folder.read_json(RunFolder.METRICS) if done else None


def resumable(config: Config) -> Config:
    """In a resumed sweep: `config` as is when this job started before (its folder holds its
    config), else with `train.resume` off, as the job never ran."""
    if not RunFolder(Path(config.output_dir)).missing(RunFolder.CONFIG):
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, resume=False))


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper launches for this multirun: the product of every
    swept list (the experiment's `hydra.sweeper.params`, then the command line's, which win as
    in the sweeper). None for other sweepers, which choose as they go."""
    if not str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{key}={value}" for key, value in params.items()]
    overrides = OverridesParser.create().parse_overrides([*args, *config.hydra.overrides.task])
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))


class MlflowSweep(Callback):
    """Also says, as each job starts, which job of how many it is and the time left at the
    pace so far (jobs launched in this process: the default launcher)."""

    _open: str | None = None
    _jobs: int | None = None
    _started: float = 0.0
    _done: int = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._jobs, self._started, self._done = planned_jobs(config), time.monotonic(), 0
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        resumed = OmegaConf.select(config, "train.resume", default=False)
        run_id = saved_parent(sweep_dir) if resumed else None
        if run_id is not None:
            tracking.finish(config.tracking.uri, run_id, "RUNNING", {"resumed": "true"})
            log.info("resuming sweep %s under its MLflow parent run %s", sweep_dir, run_id)
        else:
            overrides = " ".join(config.hydra.overrides.task)
            run_id = tracking.create_run(
                config.tracking.uri,
                config.tracking.experiment,
                run_name=f"sweep {sweep_dir.name}",
                tags={
                    "sweep_dir": str(sweep_dir),
                    "overrides": overrides,
                    **tracking.source_tags("textclf train --multirun"),
                    **tracking.note(
                        f"Sweep `{overrides}`, in `{sweep_dir}`: one child run per job (expand "
                        "this run). `make compare` (textclf compare tracking.experiment="
                        f"{config.tracking.experiment}) logs its table and figures to this "
                        "run, under `comparison/`."
                    ),
                },
            )
            (sweep_dir / PARENT_RUN_ID).write_text(run_id)
            log.info("MLflow parent run %s for sweep %s", run_id, sweep_dir)
        # Interrupted before on_multirun_end: the parent must not stay RUNNING.
        self._open = run_id
        atexit.register(self._kill_if_open, config.tracking.uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._jobs:
            return
        done, elapsed = self._done, time.monotonic() - self._started
        left = f", about {elapsed / done * (self._jobs - done) / 60:.0f} min left" if done else ""
        log.info(
            "sweep job %d of %d: %s (%d done in %.0f min%s)",
            done + 1,
            self._jobs,
            " ".join(config.hydra.overrides.task),
            done,
            elapsed / 60,
            left,
        )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._done += 1

    def _kill_if_open(self, uri: str) -> None:
        if self._open:
            tracking.finish(uri, self._open, "KILLED", {"error": "sweep interrupted"})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_id = saved_parent(config.hydra.sweep.dir)
        if run_id is None:
            return
        statuses = [r.info.status for r in tracking.children(config.tracking.uri, run_id)]
        failed = sum(s != "FINISHED" for s in statuses)
        tracking.finish(
            config.tracking.uri, run_id, "FINISHED", {"jobs": len(statuses), "jobs_failed": failed}
        )
        self._open = None
        uri, experiment = config.tracking.uri, config.tracking.experiment
        _, experiment_id = tracking.connect(uri, experiment)
        log.info(
            "sweep done: %d runs, %d not finished (parent run %s)\n"
            "  compare  make compare ARGS='tracking.experiment=%s%s'\n"
            "  see it   %s (make ui serves the project's store), grouped by batching: %s",
            len(statuses),
            failed,
            run_id,
            experiment,
            "" if uri.endswith(PROJECT_STORE) else f" tracking.uri={uri}",
            tracking.ui_link(uri, experiment_id),
            tracking.ui_link(uri, experiment_id, view="batching"),
        )
        if failed:
            log.error(
                "%d of %d jobs failed; their runs hold the error (tag `error`) and "
                "each job's log is in %s",
                failed,
                len(statuses),
                config.hydra.sweep.dir,
            )
            raise SystemExit(1)
