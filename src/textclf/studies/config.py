"""The studies' own schemas and their defaults: `textclf compare` (conf/compare.yaml) and
`textclf baseline` (conf/baseline.yaml). `bench` and `tune` settings are the training config's
(`Config.bench`, `Config.tune`), since their configs extend it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import (
    MISSING,
    DataConfig,
    EvaluateConfig,
    TokenizeConfig,
    TrackingConfig,
    check,
    positive,
)


@dataclass
class CompareConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: str = "latest"  # latest | all | <parent run id of a sweep>
    out_dir: str = MISSING
    alpha: float = 0.05  # significance level of the tests against the best variant
    # true: compare runs trained on different data (other dataset digests) in one table
    mixed_data: bool = False

    def __post_init__(self) -> None:
        check(0 < self.alpha < 1, "alpha", f"must be between 0 and 1, got {self.alpha}")


@dataclass
class BaselineConfig:
    """`textclf baseline`: the reference model (TF-IDF n-grams + logistic regression) on the
    split a training run with the same `data.*` uses; `tokenize.*` as that run's, since its
    tokenizer decides which rows a run drops and how long each test review counts."""

    data: DataConfig = MISSING  # conf/data/<source>.yaml chooses the class (data/)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # inverse regularisation strengths tried; the one of best validation accuracy is kept
    # bow's grid: the best C sat at 30, the old top, on two development sets (docs/results.md)
    C_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    max_iter: int = 2000  # lbfgs iterations per fit
    output_dir: str = MISSING

    def __post_init__(self) -> None:
        check(
            len(self.C_grid) > 0 and all(c > 0 for c in self.C_grid),
            "C_grid",
            f"must be one or more values > 0, got {list(self.C_grid)}",
        )
        positive("max_iter", self.max_iter)


# by the name conf/compare.yaml and conf/baseline.yaml start from (`commands.register_schemas`)
SCHEMAS: dict[str, type] = {
    "config_schema_compare": CompareConfig,
    "config_schema_baseline": BaselineConfig,
}
