"""A training run's folder: the files it holds, and the MLflow run name and tags it is logged
under, each defined here once. The name and tags are saved in the folder when the run starts,
so a run logged later (`textclf log-model`) carries exactly the ones it started with.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import NAME_SEP, ConfigError

if TYPE_CHECKING:
    from .config import Config

PARENT_RUN_ID = "mlflow_parent_run_id"  # in a sweep folder: the sweep's MLflow parent run


def ensure_writable(folder: Path) -> None:
    """Create `folder` and prove that it takes a file; OSError says why not."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


@dataclass(frozen=True)
class RunFolder:
    path: Path

    CONFIG = "config.json"  # the resolved, typed configuration of the run
    IDENTITY = "run.json"  # the MLflow run name and tags
    RUN_ID = "mlflow_run_id"  # the MLflow run `train.resume` continues
    CHECKPOINT = "checkpoint.npz"  # the training state after the last completed epoch
    VOCABULARY = "vocabulary.txt"
    METRICS = "metrics.json"
    DATA_REPORT = "data_report.json"  # rows read, dropped per reason, classes per split
    MODEL = "model.keras"  # raw strings in, class probabilities out
    CLASSES = "classes.json"  # beside the model: the class names, in output order
    PENDING = "pending_metrics.json"  # epoch metrics a tracking server never got
    PLOTS = "plots"
    LOGGED = (CONFIG, VOCABULARY, METRICS, DATA_REPORT, MODEL, CLASSES)  # the run's artifacts

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def model(self) -> Path:
        return self / self.MODEL

    @property
    def classes(self) -> Path:
        return self / self.CLASSES

    @property
    def checkpoint(self) -> Path:
        return self / self.CHECKPOINT

    @property
    def plots(self) -> Path:
        return self / self.PLOTS

    def prepare(self) -> None:
        """Create the folder and prove that it takes files, before any data is read or any run
        is started: a run that cannot save its model should not train first."""
        try:
            ensure_writable(self.path)
        except OSError as error:
            raise ConfigError(
                f"output_dir: cannot create or write {self.path} ({error.strerror or error}). "
                "Give a folder you can write (hydra.run.dir=<folder>), or free or fix that "
                "path."
            ) from error

    def logged(self) -> list[Path]:
        """The files of `LOGGED` the folder holds."""
        return [self / name for name in self.LOGGED if (self / name).is_file()]

    def missing(self, *names: str) -> list[str]:
        return [name for name in names if not (self / name).is_file()]

    def read_json(self, name: str):
        return json.loads((self / name).read_text(encoding="utf-8"))

    def write_json(self, name: str, value: object) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        (self / name).write_text(json.dumps(value, indent=2), encoding="utf-8")
        return self / name

    def run_id(self) -> str | None:
        saved = self / self.RUN_ID
        return saved.read_text().strip() if saved.is_file() else None

    def save_run_id(self, run_id: str) -> None:
        (self / self.RUN_ID).write_text(run_id)

    def identity(self) -> tuple[str, dict[str, str]]:
        """The run name and tags saved when the run started."""
        saved = self.read_json(self.IDENTITY)
        return saved["name"], saved["tags"]

    def save_identity(self, name: str, tags: dict[str, str]) -> None:
        self.write_json(self.IDENTITY, {"name": name, "tags": tags})

    def add_tags(self, tags: dict[str, str]) -> None:
        """Tags the run gained after it started (e.g. the bucket boundaries)."""
        name, saved = self.identity()
        self.save_identity(name, saved | tags)


def run_name(cfg: Config) -> str:
    """`tracking.run_name`, else the model's own and the seed (`bucket·mask_zero+ngrams·s0`):
    what tells a sweep's runs apart comes first, so the UI's narrow run list still shows it."""
    own = cfg.model.run_name(cfg.batching)
    return cfg.tracking.run_name or f"{own}{NAME_SEP}s{cfg.train.seed}"


def tags(cfg: Config) -> dict[str, str]:
    """The variant as tags, so the MLflow UI and `make compare` can group runs by them."""
    return {
        **cfg.model.tags(),
        **cfg.batching.tags(),
        "data": cfg.data.source,
        "output_dir": cfg.output_dir,
    }


def description(cfg: Config, metrics: dict[str, float] | None = None) -> str:
    """The run's description in the MLflow UI: what it is and, once it ended, how it scored."""
    what = ", ".join(f"{key} `{value}`" for key, value in tags(cfg).items() if key != "output_dir")
    text = f"{what}, seed {cfg.train.seed}. Run folder: `{cfg.output_dir}`."
    if metrics:
        served = metrics.get("served_accuracy", float("nan"))
        text += (
            f"\n\nTest accuracy **{metrics['test_accuracy']:.4f}** (served one review at a "
            f"time: {served:.4f}), test F1 {metrics['test_f1']:.4f}, "
            f"{metrics['epochs_run']:g} epoch(s)."
        )
    return text


def data_params(report: dict) -> dict[str, int]:
    """The data report's counts as `data_*` params (`data_train_size`): beside the config in
    the MLflow UI, not charted among the metrics that compare runs. Rows per class stay in
    `data_report.json` (an artifact): a many-class dataset would bury the config."""
    return {f"data_{key}": n for key, n in report["counts"].items()}
