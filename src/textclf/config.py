"""Typed configuration: one dataclass per stage, the schema behind `conf/`, and every default
(but the models' and data sources' own, in their modules' config classes). A
`conf/<group>/<option>.yaml` says only what its option changes (a test fails if it repeats a
default). Hydra composes YAML into these schemas, so a wrong type or unknown key fails at
compose time; `__post_init__` then rejects impossible values by their dotted key before any
data is read.

Importing this module imports neither Hydra nor OmegaConf: the logged MLflow model carries it
into environments that have neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

if TYPE_CHECKING:
    from omegaconf import DictConfig

SchemaT = TypeVar("SchemaT")
MISSING: Any = "???"  # omegaconf.MISSING: a value the config must set (Hydra fails if it is not)

STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation", "html", "none")
NAME_SEP = "·"  # between the parts of a run name: `bucket·mask_zero·s0`


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def positive(key: str, value: float | None, null: bool = False, unit: str = "") -> None:
    """Refuse `value` unless it is > 0 (or, with `null`, None); `unit` names what it counts."""
    check(
        (null and value is None) or (value is not None and value > 0),
        key,
        f"must be {'null or ' if null else ''}> 0{unit}, got {value}",
    )


def at_least(key: str, value: float | None, low: float, null: bool = False) -> None:
    """Refuse `value` unless it is >= `low` (or, with `null`, None)."""
    check(
        (null and value is None) or (value is not None and value >= low),
        key,
        f"must be {'null or ' if null else ''}>= {low}, got {value}",
    )


def fraction(key: str, value: float) -> None:
    check(0 < value < 1, key, f"must be in (0, 1), got {value}")


def registered(
    registry: dict[str, Any], key: str, cfg: object, group: str, what: str, how: str
) -> Any:
    """The registry entry for `cfg` (registered under `key` with its config class), or a clear
    error naming what is registered and how to register (models, data sources)."""
    found = registry.get(key)
    if found is None or not isinstance(cfg, found.config):
        raise ConfigError(
            f"{group}: {type(cfg).__name__} is not a registered {what} config "
            f"(registered: {', '.join(registry)}); register it with {how}"
        )
    return found


def one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


@dataclass
class DataConfig:
    """The base of every data source's config: the settings of splitting, subsetting and
    repeated texts. Each source's subclass lives in its module (`data/csv.py`: `CsvConfig`),
    registered in `data/__init__.py` under its `source`, the `data=<source>` option."""

    source: str = MISSING  # the source's name (each source's class sets it): data=<source>
    val_fraction: float = 0.1  # of the training data, carved with `seed`
    # auto: by_movie where each review's movie is known (aclimdb with its URL lists), else
    # random; by_movie: validation movies unseen in training (as aclImdb's test set)
    val_split: str = "auto"
    test_fraction: float = 0.2  # of the training data, when the source has no test split
    limit: int | None = None  # N: a class-balanced subset of N train and N test reviews
    seed: int = 42
    # Repeated texts within a split, texts of training in validation/test (leakage), texts
    # given two labels (conflicts), all counted (data_duplicates_*, _overlap_*, _conflicts_*).
    # keep: warned, used as read (IMDB: 97 repeats in train, 123 test reviews in train); drop:
    # one row per text, none with two labels, none of the test file in training; refuse: error
    duplicates: str = "keep"
    # keep refuses data where more than this fraction of training rows have a text another
    # row labels otherwise (a coin flip to train); 1 keeps all. 50% lets label noise among
    # short repeated texts (a "great" rated 4 and 5 stars) train, with a warning
    max_conflicts: float = 0.5

    def __post_init__(self) -> None:
        own = type(self).source
        check(
            self.source == own,
            "data.source",
            f"is {own!r} for a {type(self).__name__}, got {self.source!r}: choose the source "
            f"with data={self.source}",
        )
        one_of(self.val_split, "data.val_split", ("auto", "random", "by_movie"))
        one_of(self.duplicates, "data.duplicates", ("keep", "drop", "refuse"))
        check(
            0 <= self.max_conflicts <= 1,
            "data.max_conflicts",
            f"must be in [0, 1] (a fraction of training rows), got {self.max_conflicts}",
        )
        fraction("data.val_fraction", self.val_fraction)
        fraction("data.test_fraction", self.test_fraction)
        at_least("data.limit", self.limit, 4, null=True)

    def location(self) -> str | None:
        """The file or folder the source reads, if it reads one (messages name it)."""
        return None

    def origin(self, split: str) -> str:
        """Where the rows of `split` (train | val | test) came from, as its lineage records it:
        an absolute path, or <kind>:<name> for rows that code made or fetched."""
        return f"{self.source}:{self.source}"


@dataclass
class TokenizeConfig:
    vocab_size: int = 20000  # terms kept, the 2 reserved ids (padding, OOV) included
    # html: lowercase, <br /> → space, strip punctuation; or Keras' lower_and_strip_punctuation,
    # lower, strip_punctuation, none
    standardize: str = "html"
    max_length: int | None = 1000  # truncate longer reviews (null: never)

    def __post_init__(self) -> None:
        check(
            self.vocab_size > 2,
            "tokenize.vocab_size",
            f"must exceed the 2 reserved tokens (padding, OOV), got {self.vocab_size}",
        )
        one_of(self.standardize, "tokenize.standardize", STANDARDIZE)
        positive("tokenize.max_length", self.max_length, null=True)


@dataclass(frozen=True)
class Strategy:
    """A batching strategy as `batching.register` records it: the function batching an epoch
    and what the rest of the code needs to know of it (`batching.register` says what each
    trait means)."""

    batch: Callable[..., Any]
    regroups: bool = False
    bucketed: bool = False
    budgeted: bool = False
    truncates: bool = False


# name → Strategy: filled by batching.py's registry lines, so importing textclf.batching (as the
# entry point does before composing a training config, and the pipeline and inference code do)
# registers the project's strategies
STRATEGIES: dict[str, Strategy] = {}


@dataclass
class BatchingConfig:
    strategy: str = MISSING  # a registered strategy (batching.py), as its option file names it
    batch_size: int = 64
    padding_side: str = "post"  # pads after (post) or before (pre) the tokens
    max_length: int | None = None  # fixed only: pad or truncate every review to it
    num_buckets: int = 64  # bucket: boundaries at training-length quantiles (~0.97 efficiency)
    # bucket, pooled: padded tokens per batch (= 64 x 500, one `fixed` batch), so short
    # reviews get wider batches; null: batch_size each
    token_budget: int | None = 32000
    # with a token budget: rows per batch at most (null: no cap; batch_size wins when
    # larger). Without it 10-token texts came in batches of ~3,000 rows, few steps per epoch;
    # IMDB: its shortest ~20% of reviews (under 125 tokens) in more batches, 196 for 190
    max_batch_rows: int | None = 256
    # bucket, a control for the padding study: `random` groups training reviews by the length
    # of a random other review (bucket's batch sizes, members of any length)
    bucket_keys: str = "length"
    pool_batches: int = 8  # pooled: batches per length-sorted pool (1: per_batch; all: sorted)
    round_to: int = 4  # exact: lengths rounded up to a multiple share batches (≤ 3 pads each)
    shuffle_buffer: int = 25000
    TAGS: ClassVar[tuple[str, ...]] = ("batching", "padding_side")

    def __post_init__(self) -> None:
        check(bool(STRATEGIES), "batching.strategy", "none is registered: import textclf.batching")
        one_of(self.strategy, "batching.strategy", tuple(STRATEGIES))
        one_of(self.padding_side, "batching.padding_side", ("post", "pre"))
        positive("batching.batch_size", self.batch_size)
        positive("batching.num_buckets", self.num_buckets)
        one_of(self.bucket_keys, "batching.bucket_keys", ("length", "random"))
        positive("batching.pool_batches", self.pool_batches, unit=" batches per pool")
        positive("batching.round_to", self.round_to)
        positive("batching.shuffle_buffer", self.shuffle_buffer)
        positive("batching.token_budget", self.token_budget, null=True, unit=" tokens per batch")
        positive("batching.max_batch_rows", self.max_batch_rows, null=True, unit=" rows per batch")
        if self.truncates:
            check(
                self.max_length is not None and self.max_length > 0,
                "batching.max_length",
                f"batching={self.strategy} pads and truncates to batching.max_length: set it > 0",
            )

    @property
    def truncates(self) -> bool:
        """Whether the strategy cuts every review at `max_length` (no other strategy takes it)."""
        return STRATEGIES[self.strategy].truncates

    def tags(self) -> dict[str, str]:
        """The run tags it gives (`TAGS`): what `make compare` and the UI group runs by."""
        return dict(zip(self.TAGS, (self.strategy, self.padding_side), strict=True))


@dataclass
class ModelConfig:
    """The base of every model's config. Each model's subclass lives in its module
    (`models/lstm.py`: `LstmConfig`), registered in `models/__init__.py` under `name`, the
    `model=<name>` option."""

    name: ClassVar[str] = "model"

    def variant(self) -> str:
        """The `model` tag of a run: what `make compare` and the UI group runs by."""
        return self.name

    def tags(self) -> dict[str, str]:
        """The settings worth a tag of their own (the variant included)."""
        return {"model": self.variant()}

    def run_name(self, batching: BatchingConfig) -> str:
        """The run name before its seed: what varies between runs first, short enough for the
        MLflow UI's run list (`run_folder.run_name` adds the seed)."""
        return f"{self.variant()}{NAME_SEP}{batching.strategy}"


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    # with patience 2: test accuracy 0.881 vs 0.875 for 1e-3 and patience 1 (docs/results.md)
    learning_rate: float = 5e-4
    weight_decay: float = 0.0  # decoupled (AdamW-style) decay; Keras applies it in any optimizer
    clipnorm: float | None = None  # clip the global gradient norm to this (null: never)
    # constant: a warm-up + cosine schedule (p = 0.22) and label smoothing (p = 0.87) measured
    # no better and were removed (docs/results.md)
    # Training stops at the first of: early stopping (val_loss, `patience`), `epochs`, and
    # `max_steps` optimizer steps rounded up to whole epochs. IMDB (~200 steps an epoch) stops
    # early at epoch 3-5; 10-token texts (~16 steps an epoch) get the epochs they need.
    epochs: int = 100
    max_steps: int | None = 4000  # null: `epochs` alone limits training
    patience: int = 2  # epochs without val_loss improvement before stopping (best weights kept)
    # what counts as improvement: val_loss this fraction below its best. 0 counts any fall,
    # and once the training set is memorised val_loss can fall by 0.3% an epoch for tens of
    # epochs at flat accuracy (BBC news: 15 epochs until stopped by hand, docs/results.md)
    min_delta: float = 0.01
    seed: int = 42
    steps_per_epoch: int | None = None  # null: one pass over the training batches
    verbose: int = 2  # Keras progress output: 1 = bar, 2 = one line per epoch
    deterministic: bool = False  # TF's deterministic kernels: bit-identical reruns
    resume: bool = False  # continue the interrupted run in hydra.run.dir (`make resume`)

    def __post_init__(self) -> None:
        one_of(self.optimizer, "train.optimizer", ("adam", "adamw", "rmsprop", "sgd"))
        positive("train.learning_rate", self.learning_rate)
        positive("train.epochs", self.epochs)
        positive("train.max_steps", self.max_steps, null=True)
        at_least("train.weight_decay", self.weight_decay, 0)
        positive("train.clipnorm", self.clipnorm, null=True)
        at_least("train.patience", self.patience, 0)
        check(
            0 <= self.min_delta < 1,
            "train.min_delta",
            f"must be in [0, 1) (a fraction of the best val_loss), got {self.min_delta}",
        )
        positive("train.steps_per_epoch", self.steps_per_epoch, null=True)


@dataclass
class EvaluateConfig:
    # accuracy is reported per review-length bucket cut here (tokens)
    length_edges: list[int] = field(default_factory=lambda: [128, 256, 512])
    # PNGs under the run's plots/: learning curves, confusion matrix, length histogram, ROC,
    # precision-recall and calibration curves (docs/usage.md says which runs get which)
    plots: bool = True
    # test reviews classified one per call through the exported model (class-balanced sample
    # drawn with data.seed) for the served_* metrics; null: the whole test split
    served_limit: int | None = 2000

    def __post_init__(self) -> None:
        positive("evaluate.served_limit", self.served_limit, null=True)
        edges = list(self.length_edges)
        check(
            edges == sorted(set(edges)) and all(e > 0 for e in edges),
            "evaluate.length_edges",
            f"must be increasing positive token counts, got {edges}",
        )


@dataclass
class TrackingConfig:
    uri: str = MISSING  # conf/tracking/sqlite.yaml: the project's SQLite store
    experiment: str = "textclf"
    run_name: str | None = None  # default: the variant and seed (run_folder.run_name)
    registered_model: str | None = None  # also register each trained model under this name
    # MLflow's system metrics (system/*: CPU, memory, disk, network, GPU) of each training
    # run, a sample every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it); false: none
    system_metrics: bool = True


@dataclass
class BenchConfig:
    steps: int = 60  # timed training steps per strategy and repeat (after a compiling step)
    repeats: int = 3  # rounds; strategies take turns in rotated order, medians reported
    inference_reviews: int = 2000
    latency_calls: int = 200
    quick: bool = False  # --quick: 10 steps, 1 repeat (a CI smoke test; numbers mean little)
    # the length `fixed` pads and truncates to (null: conf/batching/fixed.yaml's); set it
    # near the data's 95th percentile, as for training (Banking77: 32)
    fixed_length: int | None = None
    out_dir: str = MISSING


@dataclass
class TuneConfig:
    """`make tune` (conf/hparams_search/): an Optuna study whose trials are training runs. The
    study lives in `storage`, so the same `study` there continues where it stopped."""

    study: str = "textclf"
    # Optuna's own database, never MLflow's (both keep an `alembic_version` table): a SQLite
    # file by default; on a team's PostgreSQL its own database or schema, e.g.
    # postgresql+psycopg://<user>@<host>:5432/optuna (password in PGPASSWORD or ~/.pgpass)
    storage: str = "sqlite:///${root:}/outputs/optuna.db"
    # finished (complete or pruned) trials the study holds when the search stops, counted over
    # every `make tune` of it; failed trials do not count
    n_trials: int = 20
    # config key -> Hydra sweep syntax: choice(a, b), range(start, stop), interval(low, high),
    # tag(log, interval(low, high)); a group (batching) takes choice
    space: dict[str, str] = field(default_factory=dict)
    seed: int = 42  # TPE's; offset by the trials already in the study, so none is drawn twice
    startup_trials: int = 5  # random trials before TPE models the results
    # median: a trial whose best value so far is worse than the median of earlier trials at
    # the same epoch; halving: successive halving (rungs from prune_from_epoch); threshold:
    # worse than prune_threshold; none: never
    pruner: str = "median"
    prune_from_epoch: int = 1  # the first epoch (from 1) after which a trial may be pruned
    prune_startup_trials: int = 3  # median: finished trials before it prunes any
    prune_threshold: float | None = None  # threshold: of optimized_metric

    def __post_init__(self) -> None:
        check(bool(self.study.strip()), "tune.study", "must be a name")
        positive("tune.n_trials", self.n_trials)
        check(
            bool(self.space),
            "tune.space",
            "is empty: name what to search, e.g. "
            "tune.space={model.units: 'choice(32, 64)'} or hparams_search=<file>",
        )
        at_least("tune.startup_trials", self.startup_trials, 0)
        one_of(self.pruner, "tune.pruner", ("median", "halving", "threshold", "none"))
        at_least("tune.prune_from_epoch", self.prune_from_epoch, 1)
        at_least("tune.prune_startup_trials", self.prune_startup_trials, 0)
        check(
            (self.pruner == "threshold") == (self.prune_threshold is not None),
            "tune.prune_threshold",
            "is set with tune.pruner=threshold, and only then",
        )


@dataclass
class Config:
    data: DataConfig = MISSING  # conf/data/<source>.yaml chooses the class (data/)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    batching: BatchingConfig = MISSING
    model: ModelConfig = MISSING  # conf/model/<name>.yaml chooses the class (models/)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = MISSING
    # what a training run returns to a sweeper or a `make tune` trial: this validation metric
    # of the kept (best) epoch, logged as best_<name>; never a test metric
    optimized_metric: str = "val_accuracy"
    bench: BenchConfig | None = None  # set only by `textclf bench`
    tune: TuneConfig | None = None  # set by conf/hparams_search/, read by `textclf tune`

    def __post_init__(self) -> None:
        one_of(self.optimized_metric, "optimized_metric", ("val_accuracy", "val_loss"))
        truncating = "|".join(n for n, s in STRATEGIES.items() if s.truncates)
        check(
            self.batching.truncates or self.batching.max_length is None,
            "batching.max_length",
            f"applies only to batching={truncating} (got batching="
            f"{self.batching.strategy}); truncate with tokenize.max_length instead",
        )


@dataclass
class ModelChoice:
    """Which trained model: the newest FINISHED run of `tracking.experiment` unless one of
    `run_id`, `model_uri`, `model_name` (+ `model_version`) or `model_path` says otherwise."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_id: str | None = None
    # an MLflow model URI: models:/<name>@<alias> (make register sets aliases),
    # models:/<name>/<version> or runs:/<run id>/model
    model_uri: str | None = None
    model_name: str | None = None  # a registered model (see tracking.registered_model) ...
    model_version: str | None = None  # ... and its version; default: its latest version
    model_path: str | None = None  # a model.keras file (class names from classes.json beside it)
    batch_size: int = 64  # texts per inference call

    def __post_init__(self) -> None:
        sources = [
            k for k in ("run_id", "model_uri", "model_name", "model_path") if getattr(self, k)
        ]
        check(len(sources) <= 1, "model", f"give at most one of {', '.join(sources)}")
        check(
            self.model_uri is None or self.model_uri.startswith(("models:/", "runs:/")),
            "model_uri",
            f"must start with models:/ or runs:/, got {self.model_uri!r}: "
            "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>/model",
        )
        check(
            self.model_version is None or bool(self.model_name),
            "model_version",
            "needs model_name=<registered model>",
        )
        positive("batch_size", self.batch_size)


@dataclass
class PredictConfig(ModelChoice):
    """`textclf predict`: which texts, and which model."""

    text: Any = None  # one text, or a list: text='["great fun","a dull film"]'
    file: str | None = None  # lines of a text file, or `column` of a .csv/.tsv/.jsonl
    column: str = "text"
    out: str | None = None  # .csv or .jsonl; default: a table on screen

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            (self.text is None) != (self.file is None),
            "text/file",
            'give exactly one: text="a review" (or a list), or file=<.txt/.csv/.jsonl>',
        )
        check(
            self.out is None or self.out.lower().endswith((".csv", ".jsonl")),
            "out",
            f"must end in .csv or .jsonl, got {self.out!r}",
        )


@dataclass
class EvaluateModelConfig(ModelChoice):
    """`textclf evaluate`: a saved model scored on labelled data, logged to MLflow."""

    data: DataConfig = MISSING  # conf/data/<source>.yaml chooses the class (data/)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # test: the source's test split (data.test_path, aclImdb's test/, or the carved fraction);
    # all: every labelled row of the source, for data the model never saw
    split: str = "test"
    # the MLflow experiment the evaluation runs are logged in (not `experiment`: on a command
    # line Hydra reads that as its config group)
    evaluate_experiment: str = "evaluate"
    output_dir: str = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self.split, "split", ("test", "all"))


@dataclass
class RegisterConfig:
    """`textclf register`: a run's model as a version of a registered model, with an alias
    (`models:/<name>@<alias>` then loads it)."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_id: str | None = None  # default: the newest FINISHED run of tracking.experiment
    name: str | None = None  # the registered model
    alias: str | None = None  # e.g. champion; moved from the version that had it

    def __post_init__(self) -> None:
        how = (
            "make register NAME=<model> ALIAS=<alias> (textclf register name=<model> alias=<alias>)"
        )
        check(bool(self.name), "name", f"give the registered model's name: {how}")
        check(bool(self.alias), "alias", f"give the alias to set: {how}")


# The schemas the primary configs' defaults lists start from (`conf/<command>.yaml`), by the
# name the entry point stores them under (`cli.register_schemas`); the studies' own are
# studies/config.py's.
SCHEMAS: dict[str, type] = {
    "config_schema": Config,
    "config_schema_predict": PredictConfig,
    "config_schema_evaluate_model": EvaluateModelConfig,
    "config_schema_register": RegisterConfig,
}


def to_object(cfg: DictConfig) -> Config:
    """Resolve and validate Hydra's config into the typed `Config` (raises ConfigError)."""
    return structured(cfg, Config)


def structured(cfg: DictConfig, schema: type[SchemaT]) -> SchemaT:
    """Resolve and validate Hydra's config into `schema`, the dataclass it was composed from
    (raises ConfigError)."""
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError(
            f"the composed config is not a {schema.__name__}: its defaults list must start "
            f"from that schema ({', '.join(SCHEMAS)})"
        )
    return obj


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys → string values, the shape MLflow params want."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):  # its container is a dict, its keys strings
        cfg = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
