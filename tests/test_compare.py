"""`make compare` groups runs into variants over seeds and says which differences are real."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from textclf import data, tracking
from textclf.cli import CONF_DIR
from textclf.config import ConfigError, flatten
from textclf.studies import compare
from textclf.studies.config import CompareConfig

from .conftest import compose_baseline, compose_config

T_975_DF2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (3 runs)
CSV_COLUMNS = [
    "variant",
    "n",
    "test_accuracy_mean",
    "test_accuracy_sd",
    "test_accuracy_ci95",
    "test_f1_mean",
    "test_f1_sd",
    "test_f1_ci95",
    "served_accuracy_mean",
    "served_accuracy_sd",
    "served_accuracy_ci95",
    "served_max_abs_diff_mean",
    "served_max_abs_diff_sd",
    "served_max_abs_diff_ci95",
    "train_reviews_per_s_mean",
    "train_reviews_per_s_sd",
    "train_reviews_per_s_ci95",
    "padding_efficiency_mean",
    "padding_efficiency_sd",
    "padding_efficiency_ci95",
    "p_vs_best",
    "test",
    "vs_best",
    "note",
]
# (batching, masking) → test accuracy per seed 0, 1, 2, reviews/s, padding efficiency
SWEEP = {
    ("bucket", "mask_zero"): ([0.87, 0.88, 0.89], 900.0, 0.97),
    ("per_batch", "none"): ([0.70, 0.72, 0.71], 250.0, 0.27),
}


def metrics(acc: float, speed: float, eff: float) -> dict[str, float]:
    return {
        "test_accuracy": acc,
        "test_f1": acc - 0.01,
        "served_accuracy": acc,
        "served_max_abs_diff": 1e-7 if eff > 0.5 else 0.2,
        "train_reviews_per_s": speed,
        "padding_efficiency": eff,
        "test_accuracy_len_1-128": acc,
        "test_accuracy_len_129-inf": acc - 0.1,
    }


def log_sweep(uri: str, tmp_path, seeds=(0, 1, 2), experiment="compare_padding") -> str:
    """A finished 3-seed × 2-variant sweep logged as `make sweep` logs it (the real config's
    params, the group choices as tags), plus a failed job that must not be averaged."""
    parent = tracking.create_run(uri, experiment, "sweep x", {"sweep_dir": str(tmp_path)})
    for (batching, masking), (accs, speed, eff) in SWEEP.items():
        for seed, acc in zip(seeds, accs, strict=False):
            cfg = compose_config(
                [
                    f"batching={batching}",
                    f"model.masking={masking}",
                    f"train.seed={seed}",
                    f"output_dir={tmp_path / str(acc)}",
                ],
                tmp_path,
            )
            tags = {
                "choice.batching": batching,
                "choice.model": "lstm",
                "batching": batching,
                "padding_side": "post",
                "masking": masking,
            }
            with tracking.start_run(uri, experiment, tags=tags, parent_run_id=parent) as run:
                run.log_params(flatten(cfg))
                run.log_metrics(metrics(acc, speed, eff))
    with pytest.raises(RuntimeError):
        with tracking.start_run(
            uri, experiment, parent_run_id=parent, tags={"choice.batching": "bucket"}
        ) as run:
            cfg = compose_config(["model.masking=mask_zero", "train.seed=3"], tmp_path)
            run.log_params(flatten(cfg))
            raise RuntimeError("diverged")
    tracking.finish(uri, parent)
    return parent


def test_three_seeds_two_variants_give_intervals_and_a_paired_test(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = log_sweep(uri, tmp_path)
    out = tmp_path / "out"
    summary = compare.main(uri, "compare_padding", "latest", out)

    # The variant keys are read from the runs: the batching choice and the masking, not the
    # seed, the output folder, or the batching.* values the choice sets.
    assert summary.attrs["keys"] == ["batching", "masking"]
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv.columns) == CSV_COLUMNS
    assert list(csv["variant"]) == ["bucket/mask_zero", "per_batch/none"]
    assert list(csv["n"]) == [3, 3]
    best = csv.iloc[0]
    assert best["test_accuracy_mean"] == pytest.approx(0.88)
    assert best["test_accuracy_sd"] == pytest.approx(0.01)
    assert best["test_accuracy_ci95"] == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3))
    assert best["train_reviews_per_s_sd"] == pytest.approx(0.0)
    assert best["vs_best"] == "best"
    other = csv.iloc[1]
    assert (other["vs_best"], other["test"]) == ("significant", "paired t-test")
    assert other["p_vs_best"] < 0.05
    assert "1 run(s) not finished" in best["note"]  # the failed job: counted, not averaged

    printed = capsys.readouterr().out
    assert "Best by mean test accuracy: **bucket/mask_zero**" in printed
    assert "| bucket | mask_zero | 3 | 0.880 ± 0.025 |" in printed
    assert "paired t-test" in printed and "α = 0.05" in printed
    for name in (
        "comparison.md",
        "comparison.csv",
        "comparison.png",
        "accuracy_vs_throughput.png",
        "accuracy_by_length.png",
    ):
        assert (out / name).stat().st_size > 0
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "comparison")}
    assert {"comparison/comparison.csv", "comparison/runs.csv"} <= logged

    # The per-run CSV: the six finished runs (not the failed one), each with its variant, seed
    # and run id, so the table can be checked and redrawn without the MLflow store.
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and runs["run_id"].is_unique
    assert sorted(runs["seed"]) == [0, 0, 1, 1, 2, 2]
    per_variant = runs.groupby("variant")["test_accuracy"].mean()
    assert per_variant["bucket/mask_zero"] == pytest.approx(best["test_accuracy_mean"])


def runs_frame(variants: dict[str, dict[int, float]]) -> pd.DataFrame:
    """Finished runs as `tracking.search` returns them: one swept param and the seed."""
    rows = [
        {
            "run_id": f"{name}-{seed}",
            "status": "FINISHED",
            "params.model.masking": name,
            "params.train.seed": str(seed),
            "params.output_dir": f"/runs/{name}/{seed}",
            "metrics.test_accuracy": acc,
        }
        for name, accs in variants.items()
        for seed, acc in accs.items()
    ]
    return pd.DataFrame(rows)


def by_variant(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.set_index("variant")


def test_a_difference_far_beyond_the_spread_is_significant_and_noise_is_not():
    rng = np.random.default_rng(7)
    seeds = range(5)
    good = dict(zip(seeds, rng.normal(0.88, 0.01, 5), strict=True))
    alike = dict(zip(seeds, rng.normal(0.88, 0.01, 5), strict=True))
    worse = dict(zip(seeds, rng.normal(0.70, 0.01, 5), strict=True))
    summary = by_variant(
        compare.summarize(runs_frame({"good": good, "alike": alike, "worse": worse}))
    )
    best = summary.index[summary["vs_best"] == "best"][0]
    assert best in ("good", "alike")
    assert summary.loc["worse", "vs_best"] == "significant"
    assert summary.loc["worse", "p_vs_best"] < 1e-4
    assert summary.loc[({"good", "alike"} - {best}).pop(), "vs_best"] == "not significant"
    assert set(summary["test"]) - {""} == {"paired t-test"}


def test_pairing_by_seed_finds_a_small_consistent_difference_that_welch_cannot():
    """Seeds that move both variants alike hide a small gap from Welch's test, not from a
    paired one; with different seed sets only Welch's applies."""
    base = {0: 0.85, 1: 0.88, 2: 0.91}
    better = {
        seed: acc + gap
        for (seed, acc), gap in zip(base.items(), (0.002, 0.0025, 0.0015), strict=True)
    }
    paired = by_variant(compare.summarize(runs_frame({"better": better, "base": base})))
    assert paired.loc["base", ["test", "vs_best"]].tolist() == ["paired t-test", "significant"]

    shifted = {seed + 10: acc for seed, acc in base.items()}
    welch = by_variant(compare.summarize(runs_frame({"better": better, "base": shifted})))
    assert welch.loc["base", ["test", "vs_best"]].tolist() == ["Welch's t-test", "not significant"]


def test_one_run_per_variant_still_compares_and_says_there_is_no_interval(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep(uri, tmp_path, seeds=(0,))
    summary = compare.main(uri, "compare_padding", "latest", tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "comparison.csv", keep_default_na=False)
    assert list(csv["n"]) == [1, 1]
    assert (csv["test_accuracy_sd"] == "").all() and (csv["test_accuracy_ci95"] == "").all()
    assert (summary["note"].str.contains(compare.SINGLE)).all()
    assert list(summary["vs_best"]) == ["best", "untested"]
    printed = capsys.readouterr().out
    assert "| bucket | mask_zero | 1 | 0.870 |" in printed and compare.SINGLE in printed


def test_a_variant_with_fewer_runs_is_flagged():
    summary = by_variant(
        compare.summarize(
            runs_frame({"full": {0: 0.88, 1: 0.87, 2: 0.89}, "short": {0: 0.86, 1: 0.85}})
        )
    )
    assert summary.loc["short", "n"] == 2
    assert "fewer runs than the others (2 of 3)" in summary.loc["short", "note"]
    assert summary.loc["full", "note"] == ""
    assert summary.loc["short", "test"] == "Welch's t-test"  # seed sets differ


def test_what_a_run_counted_of_its_data_does_not_make_a_variant():
    """`data_*` params are counts (truncated reviews differ with `fixed`'s length), not
    choices: the variants are the batching alone."""
    runs = pd.DataFrame(
        {
            "params.batching.strategy": ["fixed", "fixed", "bucket"],
            "params.train.seed": ["0", "1", "0"],
            "params.data_truncated_train": ["40", "40", "0"],
            "params.data_train_size": ["90", "90", "90"],
        }
    )
    assert compare.variant_keys(runs) == ["params.batching.strategy"]


def test_an_option_added_since_older_runs_makes_a_variant_one_removed_does_not():
    """Runs of today's code beside older ones in one experiment: `model.stop_on_mix`, which
    only the newest runs log, tells them apart; `train.schedule`, which only the older ones
    logged (an option since removed), does not."""
    runs = pd.DataFrame(
        {
            "params.batching.strategy": ["pooled"] * 4,
            "params.train.seed": ["0", "1", "0", "1"],
            "params.train.schedule": ["constant", "constant", None, None],
            "params.model.stop_on_mix": [None, None, "True", "True"],
            "start_time": pd.to_datetime(["2026-12-01", "2026-12-01", "2026-12-07", "2026-12-07"]),
        }
    )
    assert compare.variant_keys(runs) == ["params.model.stop_on_mix"]
    assert list(compare.labels(runs, ["params.model.stop_on_mix"])) == ["-", "-", "True", "True"]
    # a newer run of another model, which has no such option, changes neither
    bow = {"params.batching.strategy": "pooled", "params.train.seed": "0"}
    bow |= {"tags.choice.model": "bow", "start_time": pd.Timestamp("2026-12-08")}
    runs = pd.concat(
        [runs.assign(**{"tags.choice.model": "lstm"}), pd.DataFrame([bow])], ignore_index=True
    )
    assert compare.variant_keys(runs) == ["tags.choice.model", "params.model.stop_on_mix"]


def test_runs_without_params_are_grouped_by_their_variant_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.create_run(uri, "compare_padding", "sweep x", {"sweep_dir": "/tmp/x"})
    for batching, acc in [("fixed", 0.85), ("bucket", 0.87), ("bucket", 0.89)]:
        with tracking.start_run(
            uri,
            "compare_padding",
            parent_run_id=parent,
            tags={"batching": batching, "padding_side": "post", "masking": "mask_zero"},
        ) as run:
            run.log_metrics({"test_accuracy": acc})
    tracking.finish(uri, parent)
    summary = by_variant(compare.main(uri, "compare_padding", "latest", tmp_path / "out"))
    assert summary.loc["bucket/post/mask_zero", "n"] == 2
    assert summary.loc["bucket/post/mask_zero", "test_accuracy_mean"] == pytest.approx(0.88)
    assert summary.loc["fixed/post/mask_zero", "vs_best"] == "untested"


def test_32_variants_are_drawn_as_facets_colours_and_markers(tmp_path):
    rows = [
        {
            "status": "FINISHED",
            "tags.choice.batching": batching,
            "params.batching.padding_side": side,
            "params.model.masking": masking,
            "params.train.seed": str(seed),
            "metrics.test_accuracy": 0.8 + 0.01 * seed,
            "metrics.train_reviews_per_s": 100.0 + seed,
            "metrics.padding_efficiency": 0.5,
            "metrics.test_accuracy_len_1-128": 0.8,
        }
        for batching in ("fixed", "per_batch", "bucket", "exact")
        for side in ("post", "pre")
        for masking in ("mask_zero", "masking_layer", "explicit", "none")
        for seed in (0, 1)
    ]
    runs = pd.DataFrame(rows).assign(run_id=lambda f: [f"run{i}" for i in range(len(f))])
    summary = compare.summarize(runs)
    assert len(summary) == 32 and set(summary["n"]) == {2}
    facet, colour, marker, _ = compare._styles(summary.copy())
    assert facet == "padding_side" and {colour, marker} == {"batching", "masking"}
    paths = compare.figures(summary, runs, tmp_path)
    assert [p.name for p in paths] == [
        "comparison.png",
        "accuracy_vs_throughput.png",
        "accuracy_by_length.png",
    ]


def test_nothing_to_compare_is_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(compare.CompareError, match="no runs"):
        compare.main(uri, "compare_padding", "latest", tmp_path / "out")


def test_an_impossible_significance_level_names_its_key():
    with pytest.raises(ConfigError, match="alpha"):
        CompareConfig(out_dir="x", alpha=1.5)


def test_a_param_missing_from_older_runs_labels_them_instead_of_failing():
    runs = pd.DataFrame({"params.a": ["1", "2"], "params.b": [np.nan, "x"]})
    assert list(compare.labels(runs, ["params.a", "params.b"])) == ["1/-", "2/x"]


def log_reference(uri: str, tmp_path, acc: float, *overrides: str) -> str:
    """A `make baseline` run as it logs itself: its config as params, the reference tags."""
    cfg = compose_baseline(list(overrides), tmp_path)
    tags = {"model": compare.REFERENCE, "reference": "true", "data": cfg.data.source}
    with tracking.start_run(uri, "compare_padding", compare.REFERENCE, tags) as run:
        run.log_params(flatten(asdict(cfg)) | {"C": "10"})
        run.log_metrics({"test_accuracy": acc, "test_f1": acc, "test_accuracy_len_1-128": acc})
    return run.run_id


def test_the_reference_joins_a_sweep_as_its_own_variant_and_is_never_the_best(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_sweep(uri, tmp_path)
    log_reference(uri, tmp_path, 0.50, "data.limit=100")  # older, and on other data
    newest = log_reference(uri, tmp_path, 0.95)
    out = tmp_path / "out"
    summary = by_variant(compare.main(uri, "compare_padding", "latest", out))

    # The sweep's variants and keys are as without the reference (its params do not count).
    assert summary.attrs["keys"] == ["batching", "masking"]
    assert list(summary.index) == ["reference", "bucket/mask_zero", "per_batch/none"]
    reference = summary.loc["reference"]
    assert reference["n"] == 1 and reference["test_accuracy_mean"] == pytest.approx(0.95)
    assert newest in set(pd.read_csv(out / "runs.csv")["run_id"])  # the newest stands for it
    # Above every trained variant, yet the best is the best trained one, tested against it.
    assert summary.loc["bucket/mask_zero", "vs_best"] == "best"
    assert summary.loc["per_batch/none", "test"] == compare.PAIRED  # as without the reference
    assert (reference["test"], reference["vs_best"]) == (compare.ONE_SAMPLE, "significant")
    assert reference["note"] == ""  # same data as the sweep; one fit is no shortcoming
    printed = capsys.readouterr().out
    assert "Best by mean test accuracy: **bucket/mask_zero**" in printed
    assert "| reference | - | 1 | 0.950 |" in printed and "(one-sample)" in printed

    # A reference on other data is flagged, and its values do not become variant keys.
    log_reference(uri, tmp_path, 0.60, "data.limit=100")
    summary = by_variant(compare.main(uri, "compare_padding", "latest", out))
    assert "other data than the trained runs: data.limit=100" in summary.loc["reference", "note"]
    assert summary.attrs["keys"] == ["batching", "masking"]
    assert set(summary.index) == {"reference", "bucket/mask_zero", "per_batch/none"}


def log_on_data(uri: str, parent: str, acc: float, seed: int, digests: str | None) -> str:
    """A finished sweep job that logged its three splits (digests `<train><val><test>`, one
    letter each) as datasets; None: an older run that logged none."""
    with tracking.start_run(
        uri,
        "compare_padding",
        parent_run_id=parent,
        tags={"batching": "bucket", "padding_side": "post", "masking": "mask_zero"},
    ) as run:
        if digests:
            run.log_datasets(
                [
                    data.Lineage(name, "/data/reviews.csv", 100, letter * 16)
                    for name, letter in zip(("train", "val", "test"), digests, strict=True)
                ]
            )
        run.log_params({"train.seed": str(seed)})
        run.log_metrics({"test_accuracy": acc})
    return run.run_id


def test_runs_trained_on_different_data_are_refused_in_one_table_unless_told(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.create_run(uri, "compare_padding", "sweep x", {"sweep_dir": "/tmp/x"})
    same = [log_on_data(uri, parent, 0.80 + seed / 100, seed, "abc") for seed in (0, 1)]
    other = log_on_data(uri, parent, 0.95, 2, "abd")  # another test split
    tracking.finish(uri, parent)
    with pytest.raises(compare.CompareError) as refused:
        compare.main(uri, "compare_padding", "latest", tmp_path / "out")
    message = str(refused.value)
    assert "trained on different data (2 groups by dataset digest)" in message
    assert (
        "[1] 2 run(s) on train aaaaaaaa (100 rows of /data/reviews.csv), val bbbbbbbb "
        "(100 rows of /data/reviews.csv), test cccccccc (100 rows"
    ) in message
    assert "[2] 1 run(s) on train aaaaaaaa" in message and "test dddddddd" in message
    assert all(run_id[:8] in message for run_id in [*same, other])
    assert "mixed_data=true" in message and not (tmp_path / "out").exists()

    summary = compare.main(uri, "compare_padding", "latest", tmp_path / "out", mixed_data=True)
    assert summary["n"].sum() == 3
    written = (tmp_path / "out" / "comparison.md").read_text()
    assert "Runs trained on different data (mixed_data=true): [1] 2 run(s)" in written


def test_runs_that_logged_no_datasets_are_compared_with_a_warning(tmp_path, caplog):
    """Older runs cannot be checked: they join the table, and the warning names them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.create_run(uri, "compare_padding", "sweep x", {"sweep_dir": "/tmp/x"})
    for seed in (0, 1):
        log_on_data(uri, parent, 0.80 + seed / 100, seed, "abc")
    older = log_on_data(uri, parent, 0.83, 2, None)
    tracking.finish(uri, parent)
    with caplog.at_level("WARNING", logger="textclf.studies.compare"):
        summary = compare.main(uri, "compare_padding", "latest", tmp_path / "out")
    assert summary["n"].sum() == 3
    assert "1 finished run(s) logged no datasets (older runs)" in caplog.text
    assert older[:8] in caplog.text


def test_the_override_is_a_key_of_the_compare_command():
    from textclf.studies import commands

    commands.register_schemas()  # as `textclf compare` does
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("compare", overrides=["mixed_data=true", "out_dir=x"])
    assert OmegaConf.to_object(cfg).mixed_data is True
    assert CompareConfig(out_dir="x").mixed_data is False  # refused by default


def test_a_dataset_another_job_logs_in_the_same_instant_is_logged_again_not_failed(
    tmp_path, monkeypatch
):
    """MLflow's SQL store looks a dataset up, then inserts it; in a parallel sweep two jobs can
    both miss it and one insert then fails on the unique key (PostgreSQL, seen in CI). Here
    the other job's insert lands first and the store answers as it does then."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    splits = [
        data.Lineage(name, "/data/reviews.csv", 100, name[0] * 16)
        for name in ("train", "val", "test")
    ]
    with (
        tracking.start_run(uri, "compare_padding") as other,
        tracking.start_run(uri, "compare_padding") as run,
    ):
        log_inputs, calls = run.client.log_inputs, []

        def lose_the_race(run_id, datasets):
            calls.append(run_id)
            if len(calls) == 1:
                log_inputs(other.run_id, datasets=datasets)  # the other job's insert wins
                raise MlflowException(
                    sqlalchemy.exc.IntegrityError(
                        "INSERT INTO datasets ...", {}, Exception("UNIQUE constraint failed")
                    ),
                    error_code=BAD_REQUEST,
                )
            return log_inputs(run_id, datasets=datasets)

        monkeypatch.setattr(run.client, "log_inputs", lose_the_race)
        run.log_datasets(splits)
        assert calls == [run.run_id, run.run_id]
        logged = tracking.datasets(uri, "compare_padding", [run.run_id, other.run_id])
        assert logged[run.run_id] == logged[other.run_id]
        assert logged[run.run_id] == {split.name: split for split in splits}

        def refuse(run_id, datasets):
            raise MlflowException("Run 'x' is not active", error_code=BAD_REQUEST)

        monkeypatch.setattr(run.client, "log_inputs", refuse)
        with pytest.raises(MlflowException, match="not active"):
            run.log_datasets(splits)  # any other error is the caller's to see
