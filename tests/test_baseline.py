"""`make baseline`: the reference model sees a training run's rows, scores under its metric
names, picks C on validation, and `make compare` shows it beside the trained runs."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from textclf import data, evaluate, pipeline, tracking
from textclf.config import to_object
from textclf.studies import baseline, compare

from .conftest import compose_baseline, compose_config, reviews, run_pipeline, write_csv

EXPERIMENT = "beside"
TINY = [
    "train.epochs=1",
    "train.learning_rate=0.01",
    "model.units=8",
    "model.embedding_dim=16",
    "model.bidirectional=false",
    "tokenize.vocab_size=200",
    "batching.batch_size=16",
    "evaluate.served_limit=20",
]
NO_TOKEN = "?! ... !?"  # kept by data.load (not empty), dropped by a run's tokenizer
SPACED = "a joy to watch , truly !"  # 7 whitespace tokens, 5 for a run's tokenizer


def record(patch: pytest.MonkeyPatch, module, name: str, calls: list) -> None:
    """Wrap `module.name` so each call's arguments and result land in `calls`."""
    original = getattr(module, name)

    def spy(*args, **kwargs):
        called_ms = time.time() * 1000
        result = original(*args, **kwargs)
        calls.append((args, result, called_ms))
        return result

    patch.setattr(module, name, spy)


@pytest.fixture(scope="module")
def beside(tmp_path_factory, empty_store) -> SimpleNamespace:
    """A Keras run and the reference on the same data, in one experiment, with what the
    reference's fit and scoring were handed."""
    root = tmp_path_factory.mktemp("beside")
    shutil.copyfile(empty_store, root / "mlflow.db")
    train_csv = write_csv(root / "train.csv", [*reviews(200), (NO_TOKEN, "pos"), (NO_TOKEN, "neg")])
    test_csv = write_csv(
        root / "test.csv", [*reviews(60, seed=1), (NO_TOKEN, "pos"), (SPACED, "pos")]
    )
    same = [
        "data=csv",
        f"data.path={train_csv}",
        f"data.test_path={test_csv}",
        "evaluate.length_edges=[8,16]",
        "evaluate.plots=false",
        f"tracking.experiment={EXPERIMENT}",
    ]
    keras_cfg = to_object(compose_config([*same, *TINY], root))
    keras_metrics = run_pipeline(keras_cfg)
    cfg = compose_baseline(same, root)
    fits, scores = [], []
    with pytest.MonkeyPatch.context() as patch:
        record(patch, baseline, "choose_c", fits)
        record(patch, evaluate, "score", scores)
        metrics = baseline.run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    runs = {
        r.data.tags["model"]: r
        for r in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    }
    return SimpleNamespace(
        keras_cfg=keras_cfg,
        keras_metrics=keras_metrics,
        cfg=cfg,
        metrics=metrics,
        fits=fits,
        scores=scores,
        client=client,
        runs=runs,
        root=root,
    )


def test_the_reference_fits_and_scores_exactly_the_rows_of_a_training_run(beside):
    """Same data config → the rows `pipeline.vectorize` gives a run (data.load, then the
    rows its tokenizer leaves no token dropped), and each test review's length as it counts."""
    run_rows = pipeline.vectorize(data.load(beside.keras_cfg.data), beside.keras_cfg)
    assert sum(run_rows.counts[f"no_tokens_dropped_{s}"] for s in ("train", "val")) == 2
    assert run_rows.counts["no_tokens_dropped_test"] == 1  # so the drop is checked too
    [((train, val, _), _, _)] = beside.fits
    for name, split in (("train", train), ("val", val)):
        assert split.texts == run_rows.texts[name]
        np.testing.assert_array_equal(split.labels, run_rows.splits[name].labels)
    [((scored, *_), _, _)] = beside.scores
    np.testing.assert_array_equal(scored.labels, run_rows.splits["test"].labels)
    np.testing.assert_array_equal(scored.lengths, run_rows.splits["test"].lengths)
    logged = beside.runs["reference"].data.params
    by_run = beside.runs[beside.keras_cfg.model.variant()].data.params
    for key in ("train_size", "val_size", "test_size", "no_tokens_dropped_test"):
        assert logged[f"data_{key}"] == by_run[f"data_{key}"] == str(run_rows.counts[key]), key


def test_the_reference_logs_a_training_runs_metric_names_tags_and_no_model(beside):
    trained = beside.runs[beside.keras_cfg.model.variant()].data.metrics
    reference = beside.runs["reference"]
    names = {k for k in reference.data.metrics if k.startswith("test_")}
    assert names == {k for k in trained if k.startswith("test_")}
    assert len([k for k in names if k.startswith("test_accuracy_len_")]) >= 2
    assert "best_val_accuracy" in trained and "best_val_accuracy" in reference.data.metrics
    assert reference.data.metrics["test_accuracy"] == pytest.approx(beside.metrics["test_accuracy"])
    assert reference.info.status == "FINISHED" and reference.info.run_name == "reference"
    # dated from when its work began, not from when it was opened, after the fit
    [(_, _, fit_ms)] = beside.fits
    assert reference.info.start_time <= fit_ms < reference.info.end_time
    assert reference.data.tags["model"] == "reference"
    assert reference.data.tags["reference"] == "true"
    assert tracking.MODEL_TAG not in reference.data.tags  # not served: make predict skips it
    assert "model" not in {a.path for a in beside.client.list_artifacts(reference.info.run_id)}
    params = reference.data.params
    grid = beside.cfg.C_grid
    assert params["C_grid"] == str(grid) and float(params["C"]) in grid
    val = {c: reference.data.metrics[f"val_accuracy_C_{c:g}"] for c in grid}
    assert val[float(params["C"])] == max(val.values())
    assert (
        params["data.path"]
        == beside.runs[beside.keras_cfg.model.variant()].data.params["data.path"]
    )


def test_c_is_chosen_on_validation_even_where_test_would_choose_otherwise(tmp_path, empty_store):
    """Training rows 60/40 pos/neg; test labels inverted. On validation a large C fits
    (accuracy 1) and a tiny one predicts the majority (0.6); on the inverted test the tiny C
    wins. A reference picking C on test would pick 0.001."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    rows = [r for r in reviews(400) if r[1] == "pos"][:144] + [
        r for r in reviews(400) if r[1] == "neg"
    ][:96]
    inverted = [(t, "neg" if y == "pos" else "pos") for t, y in reviews(60, seed=1)]
    cfg = compose_baseline(
        [
            "data=csv",
            f"data.path={write_csv(tmp_path / 'a.csv', rows)}",
            f"data.test_path={write_csv(tmp_path / 'b.csv', inverted)}",
            "C_grid=[0.001,100]",
            "evaluate.plots=false",
        ],
        tmp_path,
    )
    metrics = baseline.run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.data.params["C"] == "100"
    assert metrics["val_accuracy_C_100"] == 1.0 > metrics["val_accuracy_C_0.001"]
    # the premise: on test, C=0.001 would have scored higher than the chosen C=100
    dataset = data.load(cfg.data)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = tfidf.fit_transform(dataset.train.texts)
    tiny = LogisticRegression(C=0.001, max_iter=cfg.max_iter).fit(x, dataset.train.labels)
    on_test = (tiny.predict(tfidf.transform(dataset.test.texts)) == dataset.test.labels).mean()
    assert metrics["test_accuracy"] < on_test


def test_make_compare_lists_the_reference_beside_the_keras_run(beside, capsys):
    out = beside.root / "compare"
    summary = compare.main(f"sqlite:///{beside.root / 'mlflow.db'}", EXPERIMENT, "all", out)
    assert len(summary) == 2 and compare.REFERENCE in set(summary["variant"])
    trained = summary[summary["variant"] != compare.REFERENCE].iloc[0]
    assert trained["vs_best"] == "best"  # the reference is the yardstick, never the best
    row = summary.set_index("variant").loc[compare.REFERENCE]
    assert row["n"] == 1
    assert row["test_accuracy_mean"] == pytest.approx(beside.metrics["test_accuracy"])
    assert f"| {compare.REFERENCE} |" in capsys.readouterr().out
    runs = pd.read_csv(out / "runs.csv")
    assert beside.runs["reference"].info.run_id in set(runs["run_id"])
    assert (out / "accuracy_by_length.png").stat().st_size > 0


def test_the_reference_logs_a_training_runs_datasets_so_compare_can_check_them(beside, tmp_path):
    """Same data config → the same three datasets (source, rows, digest) as the Keras run; a
    reference on other rows (another data.seed carves another validation split) is refused
    beside it, in a copy of the store."""
    uri = f"sqlite:///{beside.root / 'mlflow.db'}"
    ids = [r.info.run_id for r in beside.runs.values()]
    logged = tracking.datasets(uri, EXPERIMENT, ids)
    trained, reference = (
        logged[beside.runs[m].info.run_id] for m in (beside.keras_cfg.model.variant(), "reference")
    )
    assert reference == trained and set(reference) == {"train", "val", "test"}
    assert reference["test"].source == str(beside.root / "test.csv")

    shutil.copyfile(beside.root / "mlflow.db", tmp_path / "mlflow.db")
    store = replace(beside.cfg.tracking, uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    other = replace(
        beside.cfg, data=replace(beside.cfg.data, seed=7), tracking=store, output_dir=str(tmp_path)
    )
    baseline.run(other)
    with pytest.raises(compare.CompareError, match=r"different data \(2 groups"):
        compare.main(other.tracking.uri, EXPERIMENT, "all", tmp_path / "compare")


def test_the_reference_logs_the_same_test_plots_as_a_run(tmp_path, empty_store):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    train_csv = write_csv(tmp_path / "train.csv", reviews(120))
    cfg = compose_baseline(["data=csv", f"data.path={train_csv}", "C_grid=[1.0]"], tmp_path)
    baseline.run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        f"plots/{name}.png"
        for name in ("confusion_matrix", "roc_curve", "precision_recall_curve", "calibration_curve")
    }
