"""The Hydra callback of `make tune` (conf/hparams_search/): the Optuna sweeper's best trial and
a plot of the search, on the sweep's MLflow parent run.

Each trial is already a child run of that parent (`sweep.MlflowSweep`); Optuna's study lives in
memory (its RDB storage fails on SQLAlchemy 2, see pyproject.toml), so MLflow is the record of
every trial. Runs before `MlflowSweep` finishes the parent (Hydra ends callbacks in reverse).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .run_folder import PARENT_RUN_ID

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep folder
PLOT_FILE = "search.png"
DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize"}


class OptunaReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        metric, direction = config.optimized_metric, str(config.hydra.sweeper.direction)
        if DIRECTIONS.get(metric) != direction.split(".")[-1]:
            log.error("hydra.sweeper.direction=%s does not fit optimized_metric=%s: set "
                      "hydra.sweeper.direction=%s", direction, metric, DIRECTIONS.get(metric))
            raise SystemExit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results, parent = sweep_dir / RESULTS_FILE, sweep_dir / PARENT_RUN_ID
        if not results.exists() or not parent.exists():
            return
        best = OmegaConf.to_container(OmegaConf.load(results))
        report(config.tracking.uri, parent.read_text().strip(), config.optimized_metric,
               best["best_params"], float(best["best_value"]),
               dict(config.hydra.sweeper.params or {}), sweep_dir)


def report(uri: str, run_id: str, metric: str, best_params: dict[str, Any], best_value: float,
           space: dict[str, Any], sweep_dir: Path) -> None:
    """Log the search space, the best trial's parameters and value, its run id and the plot."""
    key = f"best_{metric}"
    trials = sorted((r for r in tracking.children(uri, run_id)
                     if r.info.status == "FINISHED" and key in r.data.metrics),
                    key=lambda r: r.info.start_time)
    winner = [r.info.run_id for r in trials
              if all(r.data.params.get(k) == str(v) for k, v in best_params.items())]
    tracking.log_results(
        uri, run_id,
        params={**{f"search.{k}": v for k, v in space.items()},
                **{f"best.{k}": v for k, v in best_params.items()},
                **({"best_run_id": winner[0]} if winner else {})},
        metrics={key: best_value, "trials_finished": len(trials)})
    values = [r.data.metrics[key] for r in trials]
    plot(values, metric, best_value, sweep_dir / PLOT_FILE)
    tracking.log_artifacts(uri, run_id, [sweep_dir / RESULTS_FILE, sweep_dir / PLOT_FILE])
    log.info("best %s %.4f with %s (run %s); the plot is %s", metric, best_value, best_params,
             winner[0] if winner else "?", sweep_dir / PLOT_FILE)


def plot(values: list[float], metric: str, best_value: float, path: Path) -> None:
    """Each finished trial's value in the order they ran, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    better = max if DIRECTIONS.get(metric) == "maximize" else min
    so_far = [better(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    trials = range(1, len(values) + 1)
    ax.scatter(trials, values, label="trial")
    ax.step(trials, so_far, where="post", color="tab:orange", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial (in the order run)", ylabel=f"best {metric} of the trial",
           title=f"Optuna search: {len(values)} trials, best {metric} {best_value:.4f}")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
