"""`model=bow`, the bag-of-n-grams baseline, and the LSTM with its n-gram branch
(`model.ngram_branch=true`): each trains, exports, predicts and serves like the LSTM.

One in-process run per model on tiny separable reviews (tests/conftest.py) is shared by the
tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from textclf import inference, models, pipeline, tracking
from textclf.config import flatten
from textclf.models import bow

from .conftest import compose_config, reviews, write_csv

# (override, model tag, run name)
MODELS = {
    "bow": ("model=bow", "bow", "bow-bucket"),
    "lstm+ngrams": (
        "model=lstm model.units=8 model.embedding_dim=16",
        "lstm+ngrams",
        "bucket-post-mask_zero+ngrams",
    ),
}


@pytest.fixture(scope="module", params=list(MODELS))
def run(tmp_path_factory, request) -> SimpleNamespace:
    from textclf.config import to_object

    override, tag, name = MODELS[request.param]
    root = tmp_path_factory.mktemp("bow")
    data = write_csv(root / "reviews.csv", reviews(400))
    cfg = to_object(
        compose_config(
            [
                *override.split(),
                "data=csv",
                f"data.path={data}",
                "train.epochs=10",
                "evaluate.served_limit=20",
                "evaluate.plots=false",
            ],
            root,
        )
    )
    metrics = pipeline.run(cfg, flatten(asdict(cfg)), {})
    return SimpleNamespace(cfg=cfg, metrics=metrics, out=Path(cfg.output_dir), tag=tag, name=name)


def test_it_trains_and_beats_chance_on_separable_reviews(run):
    assert run.metrics["test_accuracy"] >= 0.9
    assert run.metrics["best_val_loss"] < np.log(2)  # better than a coin's cross-entropy
    client = MlflowClient(run.cfg.tracking.uri)
    [logged] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    assert logged.data.tags["model"] == run.tag and logged.info.run_name == run.name
    assert logged.data.metrics["test_accuracy"] == pytest.approx(run.metrics["test_accuracy"])


def test_single_reviews_served_answer_like_the_batched_evaluation(run):
    # Token ids become the same n-grams whatever the padding: no mask needed for them.
    assert run.metrics["served_agreement"] == 1.0
    assert run.metrics["served_max_abs_diff"] <= 1e-5


def test_the_ngram_branch_sits_beside_the_lstm(run):
    def names(layer) -> set[str]:
        return {layer.name}.union(*(names(inner) for inner in getattr(layer, "layers", [])))

    exported = names(inference.Classifier.from_files(run.out / "model.keras").model)
    assert {"ngrams", "id_words"} <= exported
    assert ("bilstm" in exported) == (run.tag == "lstm+ngrams")


def test_the_exported_model_takes_raw_strings_and_predicts_through_the_classifier(run):
    path = run.out / "model.keras"
    classifier = inference.Classifier.from_files(path)
    assert classifier.model.inputs[0].dtype == "string"
    texts = [
        "a wonderful film, i loved every minute of it",
        "a terrible film, boring and pointless",
        "brilliant, moving and funny",
        "",
    ]
    frame = classifier.predict(texts)
    assert frame["label"].tolist()[:3] == ["pos", "neg", "pos"]
    assert frame["error"].tolist()[3] == inference.EMPTY
    # several texts go through sorted, length-batched calls; one call per text agrees
    one_by_one = np.concatenate([classifier.probabilities([t]) for t in texts[:3]])
    np.testing.assert_allclose(classifier.probabilities(texts[:3]), one_by_one, atol=1e-6)
    whole = inference.class_probabilities(classifier.model(tf.constant(texts[:3])).numpy())
    np.testing.assert_allclose(one_by_one, whole, atol=1e-6)


def test_the_saved_model_loads_and_answers_in_a_fresh_process(run):
    """Custom layers registered on import: nothing of the training process is needed."""
    code = (
        "import sys; from textclf import inference; "
        "c = inference.Classifier.from_files(sys.argv[1]); "
        "print(c.predict(['a wonderful film', 'a terrible film'])['label'].tolist())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run.out / "model.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['pos', 'neg']" in done.stdout


def test_the_mlflow_model_gives_the_same_probabilities(run):
    client = MlflowClient(run.cfg.tracking.uri)
    [logged] = client.search_runs([client.get_experiment_by_name("textclf").experiment_id])
    pyfunc = tracking.load_model(run.cfg.tracking.uri, f"runs:/{logged.info.run_id}/model")
    texts = [t for t, _ in reviews(12, seed=5)]
    got = pyfunc.predict(pd.DataFrame({"text": texts}))
    expected = inference.Classifier.from_files(run.out / "model.keras").predict(texts)
    np.testing.assert_allclose(
        got[["prob_neg", "prob_pos"]].to_numpy(),
        expected[["prob_neg", "prob_pos"]].to_numpy(),
        atol=1e-6,
    )
    assert got["label"].tolist() == expected["label"].tolist()


def test_ids_become_the_same_words_whatever_the_padding_side():
    post = tf.constant([[5, 7, 9, 0, 0], [3, 0, 0, 0, 0]])
    pre = tf.constant([[0, 0, 5, 7, 9], [0, 0, 0, 0, 3]])
    expected = [b"5 7 9", b"3"]
    assert bow.IdWords()(post).numpy().tolist() == expected
    assert bow.IdWords()(pre).numpy().tolist() == expected


@pytest.mark.parametrize("override", ["model=bow", "model.ngram_branch=true"])
def test_ngrams_outside_training_are_a_clear_error(make_config, override):
    with pytest.raises(ValueError, match="adapt on the training rows"):
        models.build(make_config(override).model, models.ModelInputs(100, 2, "post"))


def test_an_ngram_branch_on_bow_is_refused(make_config):
    with pytest.raises(Exception, match="model.ngram_branch"):
        make_config("model=bow", "model.ngram_branch=true")


def test_sparse_tf_idf_rows_are_keras_tf_idf_rows_scaled():
    """SparseTfIdf gives Keras' dense TextVectorization(output_mode="tf_idf") rows (vocabulary,
    idf, out-of-vocabulary weight), each scaled so its present values have a root mean square
    of SCALE (the NumPy formula below), kept sparse; saved and loaded with its vocabulary and
    idf."""
    train = tf.constant(["1 2 3", "2 3 4 5", "5 6 7 2", "1 2", "8 9 2 3 3"])
    dense = keras.layers.TextVectorization(
        max_tokens=12, standardize=None, split="whitespace", ngrams=2, output_mode="tf_idf"
    )
    dense.adapt(train)
    sparse = bow.SparseTfIdf(ngrams=2, max_tokens=12, rate=0.5)
    sparse.adapt(tf.data.Dataset.from_tensor_slices(train).batch(2))
    assert sparse.counts.get_vocabulary() == dense.get_vocabulary()
    texts = tf.constant(["1 2 3 3 77", "5 6", "99"])
    tf_idf = dense(texts).numpy()
    present = (tf_idf != 0).sum(axis=1, keepdims=True)
    rms = np.sqrt((tf_idf**2).sum(axis=1, keepdims=True) / present)
    expected = tf_idf * bow.SCALE / rms
    rows = sparse(texts)
    assert isinstance(rows, tf.SparseTensor)
    np.testing.assert_allclose(tf.sparse.to_dense(rows).numpy(), expected, rtol=1e-5)
    # dropout while training: present n-grams only, the kept ones scaled by 1 / (1 - rate)
    dropped = tf.sparse.to_dense(sparse(texts, training=True)).numpy()
    kept = dropped != 0
    assert kept.sum() < (expected != 0).sum() and not (kept & (expected == 0)).any()
    np.testing.assert_allclose(dropped[kept], 2 * expected[kept], rtol=1e-5)

    inputs = keras.Input(shape=(), dtype="string")
    net = keras.Model(inputs, bow.head([sparse(inputs)], 2))
    net.get_layer("logits").set_weights(
        [np.arange(12, dtype="float32")[:, None] / 10, np.zeros(1, "float32")]
    )
    with tempfile.TemporaryDirectory() as folder:
        net.save(f"{folder}/m.keras")
        loaded = keras.models.load_model(f"{folder}/m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded(texts).numpy(), net(texts).numpy(), rtol=1e-6)
