"""`make tune` (`textclf tune`): an Optuna study whose trials are training runs, with Optuna's
own ask/tell loop (docs/tuning.md says why not Hydra's sweeper).

The study lives in a database of its own (`tune.storage`), so the same command again
continues it. Each trial reports its validation metric after every epoch and the pruner may
end it there. Each trial is an MLflow child run of the search's parent run, and keeps that
run's id as its user attribute `mlflow_run_id`; the parent (whose id the study keeps) holds the
best trial and Optuna's plots.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import keras
import optuna
import sqlalchemy
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState

from .. import pipeline, tracking
from ..config import Config, ConfigError, TuneConfig
from ..run_folder import PARENT_RUN_ID, RunFolder

log = logging.getLogger(__name__)
DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
}
# A trial's user attribute naming its MLflow child run, and the study's naming the search's
# parent run: the names of the run and sweep folder files that hold the same ids
RUN_ID = RunFolder.RUN_ID
METRIC = "optimized_metric"  # the study's user attribute: what its trials return
HISTORY, IMPORTANCE, TRIALS = "optuna_history.png", "optuna_importance.png", "optuna_trials.csv"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A trial's config from its overrides and output folder, with the params and tags of its run:
# cli.py composes it with Hydra, exactly as a `textclf train` with those overrides.
ComposeTrial = Callable[[list[str], str], tuple[Config, dict[str, str], dict[str, str]]]


class Pruned(tracking.Stopped):
    """The pruner ended the trial after an epoch: its run ends KILLED, tagged `stopped`."""


class Pruning(keras.callbacks.Callback):
    """After each epoch: report the validation metric to the trial, and stop training when the
    pruner says so (as Optuna's own Keras integration does, by raising)."""

    def __init__(self, trial: optuna.Trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=epoch + 1)
        if self.trial.should_prune():
            raise Pruned(
                f"pruned by Optuna after epoch {epoch + 1}: {self.metric} {float(value):.4f}"
            )


def distributions(space: dict[str, str]) -> dict[str, BaseDistribution]:
    """`tune.space` (Hydra's sweep syntax) as Optuna distributions: choice and range give a
    categorical one, interval a float one (log-scaled when tagged `log`)."""
    parser = OverridesParser.create()
    found: dict[str, BaseDistribution] = {}
    for key, expression in space.items():
        where = f"tune.space.{key}"
        try:
            [override] = parser.parse_overrides([f"{key}={expression}"])
        except Exception as error:  # Hydra's parser raises its own types
            raise ConfigError(f"{where}: cannot read {expression!r}: {error}") from None
        value = override.value()
        if isinstance(value, ChoiceSweep | RangeSweep):
            # encode keeps a str, int, float or bool as it is and writes anything else as a str
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            found[key] = CategoricalDistribution(cast(list[CategoricalChoiceType], choices))
        elif isinstance(value, IntervalSweep):
            low, high = value.start, value.end
            assert low is not None and high is not None  # interval(low, high) sets both
            if not (low < high and ("log" not in value.tags or low > 0)):
                raise ConfigError(
                    f"{where}: {expression!r} needs low < high (and low > 0 on a log scale)"
                )
            found[key] = FloatDistribution(low, high, log="log" in value.tags)
        else:
            raise ConfigError(
                f"{where}: {expression!r} is not a range to search: use choice(a, b), "
                "range(start, stop), interval(low, high) or tag(log, interval(low, high)); fix "
                f"a value with {key}=<value> on the command line instead"
            )
    return found


def _override(key: str, value: object) -> str:
    """A drawn value as the Hydra override that sets it."""
    if value is None or isinstance(value, bool):
        return f"{key}={str(value).lower() if value is not None else 'null'}"
    return f"{key}={value}"


def pruner(cfg: TuneConfig, direction: str) -> optuna.pruners.BasePruner:
    """The pruner `tune.pruner` names; trials report at steps 1, 2, ... (their epochs)."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.prune_startup_trials, n_warmup_steps=cfg.prune_from_epoch
        )
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.prune_from_epoch)
    if cfg.pruner == "threshold":
        threshold = cfg.prune_threshold
        lower, upper = (threshold, None) if direction == "maximize" else (None, threshold)
        return optuna.pruners.ThresholdPruner(
            lower=lower, upper=upper, n_warmup_steps=cfg.prune_from_epoch
        )
    return optuna.pruners.NopPruner()


def _own_database(storage: str, tracking_uri: str) -> None:
    """Refuse MLflow's database: Optuna's migrations would share its `alembic_version` table."""
    shown = sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    store = tracking.sqlite_path(storage)
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sqlalchemy.create_engine(storage)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as error:  # SQLAlchemy and its drivers raise many types
        raise ConfigError(
            f"tune.storage: cannot open {shown}: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}"
        ) from None
    if storage == tracking_uri or {"experiments", "runs"} <= tables:
        raise ConfigError(
            f"tune.storage: {shown} holds MLflow's tracking store; give Optuna a database of "
            "its own (the default: sqlite:///<project>/outputs/optuna.db; on PostgreSQL "
            "`createdb optuna`, or a schema: ...?options=-csearch_path%3Doptuna)"
        )


def open_study(cfg: TuneConfig, metric: str, tracking_uri: str) -> optuna.Study:
    """The study `cfg.study` in `cfg.storage`, created on first use and continued after."""
    _own_database(cfg.storage, tracking_uri)
    direction = DIRECTIONS[metric]
    study = optuna.create_study(
        storage=cfg.storage, study_name=cfg.study, direction=direction, load_if_exists=True
    )
    made_for = study.user_attrs.get(METRIC)
    if made_for is None:
        study.set_user_attr(METRIC, metric)
    elif made_for != metric:
        raise ConfigError(
            f"tune.study: {cfg.study!r} searches {made_for}, not "
            f"optimized_metric={metric}: name another study (tune.study=...)"
        )
    # a sampler seeded as before would draw the trials already in the study again
    study.sampler = optuna.samplers.TPESampler(
        seed=cfg.seed + len(study.trials), n_startup_trials=cfg.startup_trials
    )
    study.pruner = pruner(cfg, direction)
    return study


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run(cfg: Config, compose: ComposeTrial) -> None:
    """Continue (or start) the study until it holds `tune.n_trials` finished trials, each a
    child of the search's MLflow parent run; exits 1 after the search if a trial failed."""
    tune, uri = cfg.tune, cfg.tracking.uri
    assert tune is not None
    optuna.logging.disable_default_handler()  # Optuna's messages go where the project's go
    optuna.logging.enable_propagation()
    space = distributions(tune.space)
    study = open_study(tune, cfg.optimized_metric, uri)
    todo = tune.n_trials - finished(study)
    log.info(
        "study %r: %d finished trials, %d to run", study.study_name, finished(study), max(todo, 0)
    )
    parent_id = study.user_attrs.get(PARENT_RUN_ID)
    if parent_id and not tracking.run_exists(uri, parent_id):
        parent_id = None  # another tracking store than the one the study began in
    failed = 0
    with tracking.start_run(
        uri,
        cfg.tracking.experiment,
        f"optuna {study.study_name}",
        {"optuna.study": study.study_name, **tracking.source_tags("textclf tune")},
        run_id=parent_id,
    ) as parent:
        study.set_user_attr(PARENT_RUN_ID, parent.run_id)
        parent.set_tags({f"search.{k}": v for k, v in tune.space.items()})
        for _ in range(todo):
            if finished(study) >= tune.n_trials:  # another `make tune` on the same study
                break
            failed += not _trial(study, space, cfg, compose, parent.run_id)
        report(study, cfg.optimized_metric, parent, Path(cfg.output_dir))
    if failed:
        log.error(
            "%d trials failed; their runs hold the error (tag `error`), and `make tune` "
            "again runs as many new ones",
            failed,
        )
        raise SystemExit(1)


def _trial(
    study: optuna.Study,
    space: dict[str, BaseDistribution],
    cfg: Config,
    compose: ComposeTrial,
    parent_run_id: str,
) -> bool:
    """Ask, train, tell: False when the trial failed."""
    trial = study.ask(space)
    folder = RunFolder(Path(cfg.output_dir) / f"trial_{trial.number}")
    (folder / RunFolder.RUN_ID).unlink(missing_ok=True)  # left by a study of the same name
    state, value = TrialState.FAIL, None
    try:
        trial_cfg, params, tags = compose(
            [_override(k, v) for k, v in trial.params.items()], str(folder.path)
        )
        tags |= {"optuna.study": study.study_name, "optuna.trial": str(trial.number)}
        metrics = pipeline.run(
            trial_cfg, params, tags, parent_run_id, [Pruning(trial, cfg.optimized_metric)]
        )
        state, value = TrialState.COMPLETE, metrics[f"best_{cfg.optimized_metric}"]
        log.info(
            "trial %d: %s %.4f with %s", trial.number, cfg.optimized_metric, value, trial.params
        )
    except Pruned as stop:
        state = TrialState.PRUNED
        folder.checkpoint.unlink(missing_ok=True)
        log.info("trial %d %s", trial.number, stop)
    except Exception as error:
        log.exception("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
    finally:  # an interrupted trial (KeyboardInterrupt) is FAIL, and the search stops
        if run_id := folder.run_id():
            trial.set_user_attr(RUN_ID, run_id)
        study.tell(trial, value, state=state)
    return state != TrialState.FAIL


def report(study: optuna.Study, metric: str, parent: tracking.Run, folder: Path) -> None:
    """On the parent run: the trial counts, the best trial (tags `best_trial`, `best_run_id`,
    `best.<key>`, metric `best_<metric>`), the trials as CSV and Optuna's plots."""
    trials = study.get_trials(deepcopy=False)
    parent.log_metrics(
        {
            f"trials_{state.name.lower()}": sum(t.state == state for t in trials)
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(folder / TRIALS, index=False)
    paths = [folder / TRIALS]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        parent.set_tags(
            {
                "best_trial": best.number,
                "best_run_id": best.user_attrs.get(RUN_ID),
                **{f"best.{k}": v for k, v in best.params.items()},
            }
        )
        parent.log_metrics({f"best_{metric}": study.best_value})
        log.info(
            "best trial %d: %s %.4f with %s (MLflow run %s)",
            best.number,
            metric,
            best.value,
            best.params,
            best.user_attrs.get(RUN_ID),
        )
        paths += plots(study, metric, len(complete), folder)
    for path in paths:
        parent.log_artifact(path)


def plots(study: optuna.Study, metric: str, complete: int, folder: Path) -> list[Path]:
    """Optuna's optimization history, and its parameter importances (from the completed
    trials, with Optuna's default evaluator), which need two of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as figures

    def save(axes, path: Path) -> Path:
        axes.figure.set_size_inches(7, 4.5)
        axes.figure.tight_layout()
        axes.figure.savefig(path, dpi=100)
        plt.close(axes.figure)
        return path

    with warnings.catch_warnings():  # the matplotlib figures are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        saved = [
            save(figures.plot_optimization_history(study, target_name=metric), folder / HISTORY)
        ]
        if complete >= 2:
            saved.append(
                save(figures.plot_param_importances(study, target_name=metric), folder / IMPORTANCE)
            )
        else:
            log.info(
                "no parameter importance plot yet: it needs 2 completed trials, the study has %d",
                complete,
            )
    return saved
