"""The training run in-process on tiny data: what it logs, and how its model answers when served
one review at a time."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import ClassVar

import keras
import pytest
from mlflow.tracking import MlflowClient

from textclf import data, inference, models, tracking
from textclf.config import ConfigError, to_object
from textclf.models.fused import FusedLSTM, lstm_layers
from textclf.models.fusion import MIN_GAIN_Z, LateFusion
from textclf.run_folder import RunFolder

from .conftest import compose_config, reviews, run_pipeline, trained_once, write_csv

TINY = [
    "train.epochs=2",
    "train.learning_rate=0.01",
    "model.units=8",
    "model.embedding_dim=16",
    "model.bidirectional=false",
    "tokenize.vocab_size=200",
    "batching.batch_size=16",
]
# for tests of the LSTM's own answers: no n-gram half mixed in, no plots (default_run has both)
LSTM_ONLY = ["model.ngram_branch=false", "evaluate.plots=false"]


def train_here(make_config, tmp_path, *overrides: str) -> tuple[dict, MlflowClient]:
    cfg = make_config(
        "data=csv", f"data.path={write_csv(tmp_path / 'r.csv', reviews(240))}", *TINY, *overrides
    )
    metrics = run_pipeline(cfg)
    return metrics, MlflowClient(cfg.tracking.uri)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, empty_store) -> SimpleNamespace:
    """The defaults (the LSTM both ways, served with the fused kernel), shrunk."""
    return trained_once(
        tmp_path_factory, empty_store, *TINY, "model.bidirectional=true", "evaluate.served_limit=20"
    )


@pytest.fixture(scope="module")
def levers_run(tmp_path_factory, empty_store) -> SimpleNamespace:
    """AdamW with weight decay and gradient clipping, a step budget, and Keras' LSTM served as
    trained."""
    return trained_once(
        tmp_path_factory,
        empty_store,
        *TINY,
        "model.bidirectional=true",
        "model.serve_lstm=trained",
        "train.optimizer=adamw",
        "train.weight_decay=0.01",
        "train.clipnorm=1.0",
        "train.max_steps=60",
        "evaluate.served_limit=20",
        "tracking.system_metrics=false",
        *LSTM_ONLY,
    )


def test_a_run_logs_metrics_served_scores_artifacts_and_a_raw_text_model(default_run):
    metrics, client, run = default_run.metrics, default_run.client, default_run.run
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    for name in (
        "test_accuracy",
        "test_f1",
        "test_auc",
        "padding_efficiency",
        "best_val_accuracy",
        "best_val_loss",
        "served_accuracy",
        "served_agreement",
        "served_max_abs_diff",
    ):
        assert logged[name] == pytest.approx(metrics[name]), name
    assert logged["served_reviews"] == 20  # evaluate.served_limit, balanced over the classes
    assert metrics["best_val_loss"] == min(
        m.value for m in client.get_metric_history(run.info.run_id, "val_loss")
    )
    assert run.data.tags["batching"] == "pooled" and run.data.params["model.units"] == "8"
    # what the UI shows: the run's description, and the experiment's, which says how to compare
    assert f"**{metrics['test_accuracy']:.4f}**" in run.data.tags["mlflow.note.content"]
    assert "batching `pooled`, padding_side `post`" in run.data.tags["mlflow.note.content"]
    experiment = client.get_experiment(run.info.experiment_id).tags
    assert "**Group by** the tag `batching`" in experiment["mlflow.note.content"]
    assert experiment["mlflow.experimentKind"] == "custom_model_development"
    for key in ("batching", "masking"):  # saved views: grouped by the tag, test accuracy first
        view = json.loads(experiment[f"mlflow.sharedViewState.textclf-by-{key}"])
        state = json.loads(view["state"])
        assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": key}]
        assert state["compareRunCharts"][0]["metricKey"] == "test_accuracy"
        assert f"viewStateShareKey=textclf-by-{key}" in experiment["mlflow.note.content"]
    out = default_run.out
    assert json.loads((out / "classes.json").read_text()) == ["neg", "pos"]
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    assert not (out / RunFolder.CHECKPOINT).exists()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.keras", "classes.json", "config.json", "data_report.json", "plots"} <= artifacts
    report = json.loads((out / RunFolder.DATA_REPORT).read_text())
    assert report["classes"] == ["neg", "pos"] and report["counts"]["rows_read_train"] == 240
    # the report's counts are params, beside the config, not metrics crowding the charts
    counted = {k: int(v) for k, v in run.data.params.items() if k.startswith("data_")}
    assert {f"data_{k}": n for k, n in report["counts"].items()}.items() <= counted.items()
    assert not [k for k in logged if k.startswith("data_")]
    for per_class in report["splits"].values():  # rows per class, as trained on: the report's
        assert all(n > 0 for n in per_class.values())
    assert (
        sum(report["splits"]["train"].values())
        == counted["data_train_size"] - counted["data_no_tokens_dropped_train"]
    )


def test_a_binary_run_logs_roc_precision_recall_and_calibration_curves_unless_plots_are_off(
    default_run, levers_run
):
    run_id = default_run.run.info.run_id
    plots = {a.path for a in default_run.client.list_artifacts(run_id, RunFolder.PLOTS)}
    assert {
        f"{RunFolder.PLOTS}/{name}.png"
        for name in ("confusion_matrix", "roc_curve", "precision_recall_curve", "calibration_curve")
    } <= plots
    off = levers_run.run.info.run_id  # evaluate.plots=false
    assert RunFolder.PLOTS not in {a.path for a in levers_run.client.list_artifacts(off)}


def datasets(trained: SimpleNamespace) -> dict:
    run = trained.client.get_run(trained.run.info.run_id)
    return {d.dataset.name: d for d in run.inputs.dataset_inputs}


def test_a_run_logs_its_splits_as_datasets_with_rows_and_a_digest_of_the_data(
    default_run, levers_run
):
    """Two runs on the same rows (each read from its own copy of the file) log equal digests;
    the digest follows the texts, the labels and their order, not the file's path."""
    first, second = datasets(default_run), datasets(levers_run)
    assert set(first) == set(second) == {"train", "val", "test"}
    contexts = {
        n: {t.key: t.value for t in d.tags}["mlflow.data.context"] for n, d in first.items()
    }
    assert contexts == {"train": "training", "val": "validation", "test": "testing"}
    logged = default_run.run.data.params
    for name in ("train", "val", "test"):
        one, other = first[name].dataset, second[name].dataset
        assert json.loads(one.profile)["num_rows"] == int(logged[f"data_{name}_size"]) > 0
        assert json.loads(one.source) == {"uri": str(default_run.root / "r.csv")}
        assert json.loads(other.source) == {"uri": str(levers_run.root / "r.csv")}
        assert one.digest == other.digest and len(one.digest) == 16
    assert len({first[n].dataset.digest for n in first}) == 3  # three different splits
    # what `make compare` reads back: the same records
    read = tracking.datasets(
        default_run.client.tracking_uri, "textclf", [default_run.run.info.run_id]
    )[default_run.run.info.run_id]
    assert read["test"] == data.Lineage(
        "test",
        str(default_run.root / "r.csv"),
        int(logged["data_test_size"]),
        first["test"].dataset.digest,
    )

    cfg = to_object(
        compose_config(["data=csv", f"data.path={default_run.root / 'r.csv'}"], default_run.root)
    )
    loaded = data.load(cfg.data)
    train, names = loaded.train, loaded.class_names
    assert data.digest(train, names) == first["train"].dataset.digest
    flipped = train.labels.copy()
    flipped[0] = 1 - flipped[0]
    swapped = [train.texts[1], train.texts[0], *train.texts[2:]]
    changed = [
        data.Split(train.texts, flipped),
        data.Split(swapped, train.labels),
        data.Split([train.texts[0] + " ", *train.texts[1:]], train.labels),
        data.Split([train.texts[0] + train.texts[1], "", *train.texts[2:]], train.labels),
    ]
    assert len({data.digest(part, names) for part in changed} - {data.digest(train, names)}) == len(
        changed
    )
    assert data.digest(train, ["pos", "neg"]) != data.digest(train, names)  # labels renamed


def test_training_runs_log_system_metrics_unless_switched_off(default_run, levers_run):
    on, off = default_run.run.data.metrics, levers_run.run.data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(on)
    assert not [name for name in off if name.startswith("system/")]  # tracking.system_metrics=false
    # the sampling thread ended with its run
    assert "SystemMetricsMonitor" not in {t.name for t in threading.enumerate()}


@pytest.mark.parametrize(
    "trained, served_class", [("default_run", "FusedLSTM"), ("levers_run", "LSTM")]
)
def test_the_exported_model_runs_the_lstm_serve_lstm_names(request, trained, served_class):
    trained = request.getfixturevalue(trained)
    exported = inference.load_keras(trained.out / "model.keras")
    bilstm = exported.layers[-1].get_layer("bilstm")
    assert {type(bilstm.forward_layer).__name__, type(bilstm.backward_layer).__name__} == {
        served_class
    }
    metrics = trained.metrics
    assert metrics["served_max_abs_diff"] <= 1e-4 and metrics["served_agreement"] == 1.0


@pytest.mark.parametrize("masking", ["mask_zero", "masking_layer", "explicit", "none"])
def test_served_answers_equal_batched_ones_only_when_the_model_masks(
    make_config, tmp_path, masking
):
    """Random batches padded to their longest review: a masked model's single-review answers
    are the batched ones up to float noise; an unmasked one's move with the padding. The
    exported model.keras keeps cuDNN off in both directions where the left-padded input is
    masked (cuDNN takes only right-padded masks)."""
    metrics, _ = train_here(
        make_config,
        tmp_path,
        "batching=per_batch",
        "batching.padding_side=pre",
        f"model.masking={masking}",
        "model.bidirectional=true",
        *LSTM_ONLY,
    )
    exported = inference.load_keras(tmp_path / "run" / "model.keras")
    layers = lstm_layers(exported.layers[-1])
    assert len(layers) == 2 and all(type(layer) is FusedLSTM for layer in layers)
    assert {layer.use_cudnn for layer in layers} == {"auto" if masking == "none" else False}
    assert metrics["padding_efficiency"] < 0.8  # the batched evaluation saw much padding
    if masking == "none":
        assert metrics["served_max_abs_diff"] > 1e-3
    else:
        assert metrics["served_max_abs_diff"] <= 1e-4
        assert metrics["served_agreement"] == 1.0
        assert metrics["served_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_a_fixed_length_model_is_served_cut_where_it_was_trained(make_config, tmp_path):
    """`fixed` cuts reviews to batching.max_length; the exported model cuts them there too, so
    single reviews longer than that get the batched evaluation's answer."""
    metrics, _ = train_here(
        make_config,
        tmp_path,
        "batching=fixed",
        "batching.max_length=3",
        "evaluate.served_limit=40",
        *LSTM_ONLY,
    )

    served = inference.Classifier.from_files(tmp_path / "run" / "model.keras")
    counts = served.token_counts([text for text, _ in reviews(40, seed=3)])
    assert counts.max() == 3  # longer reviews, cut to the trained length
    assert metrics["served_max_abs_diff"] <= 1e-4 and metrics["served_agreement"] == 1.0


@pytest.mark.parametrize(
    ("side", "mixed"), [("post", False), ("pre", False), ("post", True)], ids=str
)
def test_a_segmented_model_serves_as_it_evaluated(make_config, tmp_path, side, mixed):
    """`model.segment`: reviews shorter and longer than a window (3 tokens), in random
    batches, alone and mixed with the n-grams; the exported model cuts each review where
    training did."""
    metrics, _ = train_here(
        make_config,
        tmp_path,
        "batching=per_batch",
        f"batching.padding_side={side}",
        "model.segment=3",
        "model.bidirectional=true",
        "evaluate.served_limit=40",
        *(["evaluate.plots=false"] if mixed else LSTM_ONLY),
    )
    assert metrics["padding_efficiency"] < 0.8
    assert metrics["served_max_abs_diff"] <= 1e-4 and metrics["served_agreement"] == 1.0


def test_the_training_levers_run_through_the_pipeline(levers_run):
    """The optimizer's knobs together (AdamW, weight decay, clipping): a run that logs them,
    finishes and serves as it evaluated."""
    metrics, run = levers_run.metrics, levers_run.run
    assert run.info.status == "FINISHED"
    assert run.data.params["train.optimizer"] == "adamw"
    assert run.data.params["train.weight_decay"] == "0.01"
    assert run.data.params["train.clipnorm"] == "1.0"
    assert metrics["served_max_abs_diff"] <= 1e-4 and metrics["test_accuracy"] > 0.5


@dataclass
class ToyConfig(LateFusion):
    """A model the project does not ship: the mean of its token embeddings → the head. Its
    config offers late fusion (`LateFusion`, `model.ngram_branch`) and its network ends in
    `models.head`: that is all the n-gram mix asks."""

    name: ClassVar[str] = "toy"
    embedding_dim: int = 8


def build_toy(cfg: ToyConfig, inputs: models.ModelInputs) -> keras.Model:
    tokens = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(inputs.vocab_size, cfg.embedding_dim, mask_zero=True)(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, models.head(x, inputs.num_classes))


@pytest.fixture
def toy_model():
    models.register(ToyConfig, build_toy)
    yield ToyConfig
    del models.REGISTRY[ToyConfig.name]


def test_a_new_model_is_a_config_class_a_build_function_and_a_registry_line(
    make_config, tmp_path, toy_model
):
    """Registered here alone: no edit of pipeline, tracking or compare, and it trains, logs,
    exports and serves like the project's own models, mixed with the n-grams as the LSTM is."""
    cfg = make_config(
        "data=csv",
        f"data.path={write_csv(tmp_path / 'r.csv', reviews(240))}",
        "train.epochs=2",
        "evaluate.served_limit=20",
    )
    cfg = replace(cfg, model=toy_model(embedding_dim=4))
    metrics = run_pipeline(cfg)
    client = MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "toy+ngrams·pooled·s42"
    assert run.data.tags["model"] == "toy+ngrams" and run.data.params["model.embedding_dim"] == "4"
    mixed = {"mix_toy", "mix_ngrams", "mix_lift_z", "val_accuracy_toy", "val_accuracy_mixed"}
    assert mixed | {"ngrams_C"} <= set(run.data.metrics)
    # mixed, or the n-grams alone (weight 0) when the toy's lift is within its noise
    kept_alone = metrics["mix_lift_z"] < MIN_GAIN_Z
    assert (metrics["mix_toy"] == 0 and metrics["mix_ngrams"] == 1) == kept_alone
    assert metrics["served_agreement"] == 1.0 and metrics["served_max_abs_diff"] <= 1e-5
    served = inference.Classifier.from_files(tmp_path / "run" / "model.keras")
    assert served.predict(["a wonderful film"])["label"].tolist()[0] in ("neg", "pos")


def test_a_mixed_model_without_a_head_is_refused_before_training(toy_model):
    """The n-gram mix needs the network's logits: a network not ending in `models.head` is a
    clear error when it is built, not after training."""

    def headless(cfg, inputs):
        tokens = keras.Input(shape=(None,), dtype="int32")
        x = keras.layers.Embedding(inputs.vocab_size, 4)(tokens)
        return keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid")(x[:, 0]))

    models.register(ToyConfig, headless)
    inputs = models.ModelInputs(50, 2, None)
    with pytest.raises(ConfigError, match="model.ngram_branch: .*models.head"):
        models.build(ToyConfig(), inputs)
    assert models.build(ToyConfig(ngram_branch=False), inputs) is not None


def test_a_run_logged_later_into_an_empty_store_keeps_its_name_and_tags(default_run):
    """`textclf log-model` into a store that never saw the run: the same name and tags."""
    original = default_run.run
    other = f"sqlite:///{default_run.root / 'other.db'}"
    run_id = tracking.log_run_folder(RunFolder(default_run.out), other)
    logged = MlflowClient(other).get_run(run_id)
    assert run_id != original.info.run_id and logged.info.status == "FINISHED"
    assert logged.info.run_name == original.info.run_name == "pooled·mask_zero+ngrams·s42"
    kept = {
        k: v
        for k, v in original.data.tags.items()
        if not k.startswith("mlflow.") and k not in ("model_uri", "logged_model_id")
    }
    assert {
        "model",
        "batching",
        "masking",
        "stop_reason",
    } <= kept.keys()  # stop_reason: added mid-run
    assert {k: logged.data.tags.get(k) for k in kept} == kept
    # the params the command line logs: the run's config without train.resume (how it ran)
    assert logged.data.params == {
        k: v for k, v in original.data.params.items() if k != "train.resume"
    }
    assert logged.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
