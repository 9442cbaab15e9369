"""The real config composes for every option of every group, and bad values name their key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from textclf.cli import CONF_DIR
from textclf.config import Config, ConfigError, flatten

from .conftest import compose_config

GROUPS = ["data", "tokenize", "batching", "model", "train", "evaluate", "tracking"]
NEEDS_PATH = {"aclimdb", "csv"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_into_the_typed_config(group, option, make_config):
    extra = ["data.path=x.csv"] if group == "data" and option in NEEDS_PATH else []
    config = make_config(f"{group}={option}", *extra)
    assert isinstance(config, Config)


def test_default_is_the_documented_pipeline(make_config):
    config = make_config()
    assert (config.data.source, config.batching.strategy, config.model.masking) == (
        "imdb",
        "pooled",
        "mask_zero",
    )
    assert config.tracking.uri.startswith("sqlite:///") and config.tracking.uri.endswith(
        "mlflow.db"
    )


def test_experiment_presets_compose(make_config):
    for preset in (CONF_DIR / "experiment").glob("*.yaml"):
        assert isinstance(make_config(f"experiment={preset.stem}"), Config)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.units=-1", "model.units"),
        ("batching.batch_size=0", "batching.batch_size"),
        ("tokenize.vocab_size=2", "tokenize.vocab_size"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("model.masking=sometimes", "model.masking"),
        ("batching.padding_side=middle", "batching.padding_side"),
        ("batching.max_length=100", "batching.max_length"),  # only fixed truncates in batching
        ("model.dropout=1.0", "model.dropout"),
        ("train.learning_rate=0", "train.learning_rate"),
    ],
)
def test_impossible_values_are_rejected_with_the_key(override, key, make_config):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(override)


def test_aclimdb_without_path_says_how_to_fix(make_config):
    with pytest.raises(Exception, match="data.path"):
        make_config("data=aclimdb")


def test_unknown_key_fails_at_compose_time(tmp_path):
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="unit"):
        compose_config(["model.unit=3"], tmp_path)


def test_unknown_option_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="per_batch"):
        compose_config(["batching=sorted"], tmp_path)


def test_flatten_gives_dotted_string_params(tmp_path):
    flat = flatten(compose_config([], tmp_path))
    assert flat["model.units"] == "64" and flat["batching.strategy"] == "pooled"
    assert all(isinstance(v, str) for v in flat.values())


@pytest.mark.parametrize(
    "overrides,name",
    [
        ((), "pooled·mask_zero+ngrams·s42"),
        (("model.ngram_branch=false", "train.seed=0"), "pooled·mask_zero·s0"),
        (
            ("batching=per_batch", "batching.padding_side=pre", "model.masking=none"),
            "per_batch·none+ngrams·pre·s42",
        ),
        (("model=bow", "train.seed=2"), "bow·s2"),  # bow never batches: no strategy
        (("tracking.run_name=mine",), "mine"),
    ],
)
def test_run_names_put_the_variant_first_and_end_with_the_seed(overrides, name, make_config):
    from textclf import run_folder

    assert run_folder.run_name(make_config(*overrides)) == name


def test_the_project_store_is_one_sqlite_uri(tmp_path):
    """conf/tracking/sqlite.yaml's store is the one `make ui` serves (`cli.project_store`), and
    one pair of functions builds and reads an SQLite store's URI."""
    from omegaconf import OmegaConf

    from textclf import cli, tracking

    store = cli.ROOT / "outputs" / "mlflow.db"
    composed = OmegaConf.load(CONF_DIR / "tracking" / "sqlite.yaml").uri  # ${root:} resolved
    assert composed == cli.project_store() == tracking.sqlite_uri(store)
    assert tracking.sqlite_path(cli.project_store()) == store
    assert tracking.sqlite_path("http://127.0.0.1:5000") is None
    assert cli.where_to_look(cli.project_store(), "<link>") == "make ui, then <link>"
    other = tracking.sqlite_uri(tmp_path / "mlflow.db")
    assert other == f"sqlite:///{tmp_path}/mlflow.db"
    shown = cli.where_to_look(other, "<link>")
    assert shown == f"mlflow ui --backend-store-uri {other}, then <link>"
    assert cli.where_to_look("http://127.0.0.1:5000", "<link>") == "<link>"
