"""The study commands' Hydra apps (`textclf tune | baseline | compare | bench`), which
`cli.main` imports only when one of them runs: importing the entry point, or `textclf train`,
imports no study. Each app validates its DictConfig into a typed config and runs its study.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hydra import compose
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ..cli import App, choice_tags, run_params, stop_on_signals, task_wrapper, usage_error
from ..config import STRATEGIES, BatchingConfig, ConfigError, structured, to_object
from .config import SCHEMAS, BaselineConfig, CompareConfig


def register_schemas() -> None:
    """Hydra's ConfigStore gets the studies' schemas, which conf/compare.yaml and
    conf/baseline.yaml start from."""
    for name, node in SCHEMAS.items():
        ConfigStore.instance().store(name=name, node=node)


def arguments(name: str, args: list[str]) -> tuple[list[str], App]:
    """The command line as Hydra is to read it, and the app of study command `name`
    (`PREPARE`)."""
    register_schemas()
    return PREPARE[name](args)


def tune(space: dict[str, str]) -> Callable[[DictConfig], object]:
    """`textclf tune`: the Optuna study of conf/hparams_search/<file> (`tune.space`), with
    `space` from the command line (its sweeps) added and keys fixed there taken out."""

    @task_wrapper
    def search(cfg: DictConfig) -> None:
        from . import tune as study

        stop_on_signals()
        overrides = list(HydraConfig.get().overrides.task)
        if cfg.get("tune") is None:
            raise ConfigError(
                "tune: hparams_search=none has no search space; name a file of conf/hparams_search/"
            )
        fixed = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        cfg.tune.space = {k: v for k, v in cfg.tune.space.items() if k not in fixed} | space

        def compose_trial(values: list[str], output_dir: str):
            trial = compose(
                "config",
                overrides=[*overrides, *values, f"output_dir={output_dir}"],
                return_hydra_config=True,
            )
            tags = choice_tags(trial.hydra, "tune")
            with open_dict(trial):
                del trial["hydra"]
            return to_object(trial), run_params(trial), tags

        study.run(to_object(cfg), compose_trial)

    return search


def _split_sweeps(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """`textclf tune`'s arguments without their sweeps ('model.units=choice(32,64)', which
    Hydra takes only in a multirun), and those sweeps as `tune.space` entries."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, rest, space = OverridesParser.create(), [], {}
    for arg in args:
        try:
            override = None if arg.startswith("-") else parser.parse_overrides([arg])[0]
        except Exception:  # not an override: Hydra says what is wrong with it
            override = None
        if override is not None and override.is_sweep_override():
            space[override.key_or_group] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, space


@task_wrapper
def baseline(cfg: DictConfig) -> None:
    from . import baseline as reference

    reference.run(structured(cfg, BaselineConfig), choice_tags(HydraConfig.get(), "baseline"))


@task_wrapper
def compare(cfg: DictConfig) -> None:
    from . import compare as report

    config = structured(cfg, CompareConfig)  # validates alpha
    report.main(
        config.tracking.uri,
        config.tracking.experiment,
        config.sweep,
        Path(config.out_dir),
        config.alpha,
        config.mixed_data,
    )


@task_wrapper
def bench(cfg: DictConfig) -> None:
    """Every `batching=` option as composed by Hydra, with the run's batch size and padding
    side, so all strategies train the same model on the same batches."""
    from . import bench as benchmark

    config = to_object(cfg)
    # the command line's batching settings for every strategy, all at the same rows per
    # batch: each ratio then says what padding saves
    same = [o for o in HydraConfig.get().overrides.task if o.startswith("batching.")]
    same.append("batching.token_budget=null")
    length = config.bench.fixed_length if config.bench else None  # bench.yaml sets bench
    cut = [f"batching.max_length={length}"] if length else []  # for a truncating strategy
    names = GlobalHydra.instance().config_loader().get_group_options("batching")
    strategies: dict[str, BatchingConfig] = {}
    for name in names:
        truncate = cut if STRATEGIES[name].truncates else []
        composed = compose("bench", overrides=[f"batching={name}", *same, *truncate])
        strategies[name] = structured(composed.batching, BatchingConfig)
    # the token budget as its own lever: what wider batches of short texts add
    budget = config.batching.token_budget or BatchingConfig.token_budget
    for name in names:
        if STRATEGIES[name].budgeted:
            strategies[f"{name}-budget"] = replace(strategies[name], token_budget=budget)
    benchmark.run(config, strategies)


def _tune_arguments(args: list[str]) -> tuple[list[str], App]:
    if importlib.util.find_spec("optuna") is None:
        usage_error("textclf tune needs Optuna: make install EXTRAS=dev,optuna")
    if {"-m", "--multirun"} & set(args):
        usage_error("textclf tune runs its trials itself: drop --multirun")
    args, space = _split_sweeps(args)
    if not any(a.startswith("hparams_search=") for a in args):
        args.insert(0, "hparams_search=imdb_optuna")
    args.insert(0, "hydra.job.name=tune")  # its log: tune.log
    return args, tune(space)


# study command → (its arguments → the command line Hydra reads, and the app to run)
PREPARE: dict[str, Callable[[list[str]], tuple[list[str], App]]] = {
    "tune": _tune_arguments,
    "baseline": lambda args: (args, baseline),
    "compare": lambda args: (args, compare),
    "bench": lambda args: (args, bench),
}
