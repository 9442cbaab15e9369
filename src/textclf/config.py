"""Typed configuration: one dataclass per stage, the schema behind `conf/`.

Hydra composes YAML into these schemas (registered in the ConfigStore), so a wrong type or
unknown key fails at compose time; `__post_init__` then rejects impossible values with the
key's dotted name before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

DATA_SOURCES = ("imdb", "aclimdb", "csv")
STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation", "html", "none")
BATCHING = ("fixed", "per_batch", "bucket", "exact")
PADDING_SIDES = ("post", "pre")
MASKING = ("mask_zero", "masking_layer", "explicit", "none")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


@dataclass
class DataConfig:
    source: str = "imdb"
    path: str | None = None
    test_path: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = True
    text_column: str = "text"
    label_column: str = "label"
    classes: list[str] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    limit: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        _one_of(self.source, "data.source", DATA_SOURCES)
        _check(
            0 < self.val_fraction < 1,
            "data.val_fraction",
            f"must be in (0, 1), got {self.val_fraction}",
        )
        _check(
            0 < self.test_fraction < 1,
            "data.test_fraction",
            f"must be in (0, 1), got {self.test_fraction}",
        )
        _check(
            self.limit is None or self.limit >= 4,
            "data.limit",
            f"must be null or >= 4, got {self.limit}",
        )
        if self.source in ("aclimdb", "csv"):
            _check(
                bool(self.path),
                "data.path",
                f"is required for data={self.source}: pass data.path=<file or folder>",
            )


@dataclass
class TokenizeConfig:
    vocab_size: int = 20000
    standardize: str = "html"
    max_length: int | None = 1000

    def __post_init__(self) -> None:
        _check(
            self.vocab_size > 2,
            "tokenize.vocab_size",
            f"must exceed the 2 reserved tokens (padding, OOV), got {self.vocab_size}",
        )
        _one_of(self.standardize, "tokenize.standardize", STANDARDIZE)
        _check(
            self.max_length is None or self.max_length > 0,
            "tokenize.max_length",
            f"must be null or > 0, got {self.max_length}",
        )


@dataclass
class BatchingConfig:
    strategy: str = "per_batch"
    batch_size: int = 64
    padding_side: str = "post"
    max_length: int | None = None
    num_buckets: int = 64
    round_to: int = 1
    token_budget: int | None = None
    shuffle_buffer: int = 25000

    def __post_init__(self) -> None:
        _one_of(self.strategy, "batching.strategy", BATCHING)
        _one_of(self.padding_side, "batching.padding_side", PADDING_SIDES)
        _check(self.batch_size > 0, "batching.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.num_buckets > 0, "batching.num_buckets", f"must be > 0, got {self.num_buckets}")
        _check(self.round_to > 0, "batching.round_to", f"must be > 0, got {self.round_to}")
        _check(self.shuffle_buffer > 0, "batching.shuffle_buffer", "must be > 0")
        _check(self.token_budget is None or self.token_budget > 0, "batching.token_budget",
               f"must be null or > 0 tokens per batch, got {self.token_budget}")
        if self.strategy == "fixed":
            _check(
                self.max_length is not None and self.max_length > 0,
                "batching.max_length",
                "batching=fixed pads and truncates to batching.max_length: set it > 0",
            )


@dataclass
class ModelConfig:
    embedding_dim: int = 128
    units: int = 64
    bidirectional: bool = False
    dropout: float = 0.3
    masking: str = "mask_zero"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        _one_of(self.pooling, "model.pooling", ("mean", "last"))
        _check(
            self.embedding_dim > 0, "model.embedding_dim", f"must be > 0, got {self.embedding_dim}"
        )
        _check(self.units > 0, "model.units", f"must be > 0, got {self.units}")
        _check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _one_of(self.masking, "model.masking", MASKING)


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    learning_rate: float = 5e-4
    epochs: int = 10
    patience: int = 2
    seed: int = 42
    steps_per_epoch: int | None = None
    verbose: int = 2
    strategy: str = "default"
    mixed_precision: bool = False
    deterministic: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        _one_of(self.optimizer, "train.optimizer", OPTIMIZERS)
        _one_of(self.strategy, "train.strategy", ("default", "mirrored", "multi_worker"))
        _check(
            self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}"
        )
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _check(self.patience >= 0, "train.patience", f"must be >= 0, got {self.patience}")
        _check(
            self.steps_per_epoch is None or self.steps_per_epoch > 0,
            "train.steps_per_epoch",
            "must be null or > 0",
        )


@dataclass
class EvaluateConfig:
    length_edges: list[int] = field(default_factory=lambda: [128, 256, 512])
    plots: bool = True

    def __post_init__(self) -> None:
        edges = list(self.length_edges)
        _check(
            edges == sorted(set(edges)) and all(e > 0 for e in edges),
            "evaluate.length_edges",
            f"must be increasing positive token counts, got {edges}",
        )


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = "textclf"
    run_name: str | None = None
    registered_model: str | None = None  # also register each trained model under this name


@dataclass
class BenchConfig:
    steps: int = 60
    repeats: int = 3
    inference_reviews: int = 2000
    latency_calls: int = 200
    quick: bool = False
    out_dir: str = MISSING


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = MISSING
    bench: BenchConfig | None = None  # set only by `textclf bench`

    def __post_init__(self) -> None:
        _check(
            self.batching.strategy == "fixed" or self.batching.max_length is None,
            "batching.max_length",
            f"applies only to batching=fixed (got batching="
            f"{self.batching.strategy}); truncate with tokenize.max_length instead",
        )


@dataclass
class CompareConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: str = "latest"
    out_dir: str = MISSING


@dataclass
class PredictConfig:
    """`textclf predict`: which texts, which model (at most one source; default the newest run)."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    text: Any = None  # one text or a list of texts
    file: str | None = None  # lines of a text file, or `column` of a .csv/.jsonl
    column: str = "text"
    run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None  # with model_name; default: its latest version
    model_path: str | None = None  # a model.keras file
    out: str | None = None  # .csv or .jsonl; default: a table on screen
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check(
            (self.text is None) != (self.file is None),
            "text/file",
            'give exactly one: text="a review" (or a list), or file=<.txt/.csv/.jsonl>',
        )
        sources = [k for k in ("run_id", "model_name", "model_path") if getattr(self, k)]
        _check(len(sources) <= 1, "model", f"give at most one of {', '.join(sources)}")
        _check(
            self.model_version is None or bool(self.model_name),
            "model_version",
            "needs model_name=<registered model>",
        )
        _check(
            self.out is None or self.out.lower().endswith((".csv", ".jsonl")),
            "out",
            f"must end in .csv or .jsonl, got {self.out!r}",
        )
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


def register() -> None:
    """Make the schemas available to the defaults lists of `conf/*.yaml`."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(name="config_schema_compare", node=CompareConfig)
    store.store(name="config_schema_predict", node=PredictConfig)


def to_object(cfg: DictConfig) -> Config:
    """Resolve and validate Hydra's config into the typed `Config` (raises ConfigError)."""
    obj: Any = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):
        raise ConfigError("the composed config does not use the config_schema defaults entry")
    return obj


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys → string values, the shape MLflow params want."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
