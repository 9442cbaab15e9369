"""Hydra callbacks that make a multirun one MLflow parent run with a child run per job.

The parent process creates the store, the experiment and the parent run before any job
starts (parallel jobs racing to create a fresh SQLite store fail in its migrations), and
writes the parent's id into the sweep folder, where every job, local or on a cluster, reads it.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from . import tracking

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"


def parent_run_id() -> str | None:
    """The sweep's parent run id when this job is part of a multirun."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


class MlflowSweep(Callback):
    _open: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = " ".join(config.hydra.overrides.task)
        run_id = tracking.create_run(
            config.tracking.uri,
            config.tracking.experiment,
            run_name=f"sweep {sweep_dir.name}",
            tags={
                "sweep_dir": str(sweep_dir),
                "overrides": overrides,
                "git_commit": tracking.git_commit(),
            },
        )
        (sweep_dir / PARENT_FILE).write_text(run_id)
        log.info("MLflow parent run %s for sweep %s", run_id, sweep_dir)
        # Interrupted before on_multirun_end: the parent must not stay RUNNING.
        self._open = run_id
        atexit.register(self._kill_if_open, config.tracking.uri)

    def _kill_if_open(self, uri: str) -> None:
        if self._open:
            tracking.finish(uri, self._open, "KILLED", {"error": "sweep interrupted"})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / PARENT_FILE
        if not path.exists():
            return
        run_id = path.read_text().strip()
        statuses = [r.info.status for r in tracking.children(config.tracking.uri, run_id)]
        failed = sum(s != "FINISHED" for s in statuses)
        tracking.finish(
            config.tracking.uri, run_id, "FINISHED", {"jobs": len(statuses), "jobs_failed": failed}
        )
        self._open = None
        log.info(
            "sweep done: %d runs, %d not finished (parent run %s)", len(statuses), failed, run_id
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
