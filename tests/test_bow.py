"""`model=bow`, the bag-of-n-grams baseline, and the LSTM mixed with it (late fusion,
`model.ngram_branch=true`): each trains, exports, predicts and serves like the LSTM.

One in-process run per model on tiny separable reviews (tests/conftest.py) is shared by the
tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from textclf import inference, models, tracking
from textclf.models import bow

from .conftest import padded, reviews, trained_once

# (override, model tag, run name)
MODELS = {
    "bow": ("model=bow", "bow", "bow·s42"),  # two classes: NB weights (weighting=auto)
    "bow-tfidf": ("model=bow model.weighting=tfidf", "bow", "bow·s42"),
    "lstm+ngrams": (
        # a high learning rate: the LSTM half learns the reviews in the 3 epochs it gets
        "model=lstm model.units=8 model.embedding_dim=16 train.epochs=3 train.learning_rate=0.01",
        "lstm+ngrams",
        "pooled·mask_zero+ngrams·s42",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, empty_store) -> dict[str, SimpleNamespace]:
    """Each model of MODELS trained once, for every test of the module."""
    trained = {}
    for key, (override, tag, name) in MODELS.items():
        run = trained_once(
            tmp_path_factory,
            empty_store,
            *override.split(),
            "evaluate.served_limit=20",
            "evaluate.plots=false",
            rows=400,
        )
        run.tag, run.name = tag, name
        trained[key] = run
    return trained


@pytest.fixture(params=list(MODELS))
def run(runs, request) -> SimpleNamespace:
    return runs[request.param]


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
    net = inference.Classifier.from_files(run.out / "model.keras").model
    exported = {layer.name for layer in _layers(net)}
    assert {"ngrams", "id_words"} <= exported
    assert ("bilstm" in exported) == ("mix" in exported) == (run.tag == "lstm+ngrams")


def test_late_fusion_logs_what_its_halves_and_their_mix_scored_on_validation(run):
    if run.tag != "lstm+ngrams":
        assert "mix_lstm" not in run.metrics
        return
    for half in ("lstm", "ngrams", "mixed"):
        assert 0.5 <= run.metrics[f"val_accuracy_{half}"] <= 1
    assert run.metrics["ngrams_C"] in bow.BowConfig().C_grid
    assert run.metrics["ngrams_n"] in bow.BowConfig().ngrams
    # each half scored alone on test; weight 0 gives the n-grams' answer exactly
    assert 0.5 <= run.metrics["ngrams_test_accuracy"] <= 1
    assert 0 <= run.metrics["trained_test_accuracy"] <= 1
    if run.metrics["mix_lstm"] == 0:
        assert run.metrics["ngrams_test_accuracy"] == run.metrics["test_accuracy"]
    net = inference.Classifier.from_files(run.out / "model.keras").model
    [mix] = [layer for layer in _layers(net) if layer.name == "mix"]
    np.testing.assert_allclose(
        mix.scales.numpy(), [run.metrics["mix_lstm"], run.metrics["mix_ngrams"]], rtol=1e-6
    )


def test_each_model_weighs_its_ngrams_as_configured(run, request):
    """Two classes: NB ratios (auto, for bow and the LSTM's mix alike); asked for tf-idf:
    sublinear tf-idf."""
    net = inference.Classifier.from_files(run.out / "model.keras").model
    [ngrams] = [layer for layer in _layers(net) if layer.name == "ngrams"]
    expected = {"bow": "nb", "bow-tfidf": "tfidf", "lstm+ngrams": "nb"}
    assert ngrams.weighting == expected[request.node.callspec.params["run"]]


def _layers(layer) -> list:
    return [layer, *(x for inner in getattr(layer, "layers", []) for x in _layers(inner))]


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


def test_the_saved_models_load_and_answer_in_a_fresh_process(runs):
    """Custom layers registered on import: nothing of the training process is needed. One
    process loads every model: each process importing TensorFlow costs seconds."""
    code = (
        "import sys; from textclf import inference\n"
        "for path in sys.argv[1:]:\n"
        "    c = inference.Classifier.from_files(path)\n"
        "    print(c.predict(['a wonderful film', 'a terrible film'])['label'].tolist())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *(str(run.out / "model.keras") for run in runs.values())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["['pos', 'neg']"] * len(runs)


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


def test_ngrams_outside_training_are_a_clear_error(make_config):
    with pytest.raises(ValueError, match="adapt on the training rows"):
        models.build(make_config("model=bow").model, models.ModelInputs(100, 2, padded()))


def test_an_ngram_branch_on_bow_is_refused(make_config):
    with pytest.raises(Exception, match="model.ngram_branch"):
        make_config("model=bow", "model.ngram_branch=true")


def test_sparse_tf_idf_rows_are_sublinear_tf_idf_rows_of_unit_length():
    """SparseTfIdf's rows are (1 + log count) x Keras' idf (TextVectorization's vocabulary,
    idf and out-of-vocabulary weight), each of unit length (the NumPy formula below), kept
    sparse; saved and loaded with its vocabulary and idf."""
    train = tf.constant(["1 2 3", "2 3 4 5", "5 6 7 2", "1 2", "8 9 2 3 3"])
    dense = keras.layers.TextVectorization(
        max_tokens=12, standardize=None, split="whitespace", ngrams=2, output_mode="tf_idf"
    )
    dense.adapt(train)
    counted = keras.layers.TextVectorization(
        max_tokens=12, standardize=None, split="whitespace", ngrams=2, output_mode="count"
    )
    counted.adapt(train)
    sparse = bow.SparseTfIdf(ngrams=2, max_tokens=12, weighting="tfidf")
    sparse.adapt(tf.data.Dataset.from_tensor_slices(train).batch(2))
    assert sparse.counts.get_vocabulary() == dense.get_vocabulary()
    texts = tf.constant(["1 2 3 3 77", "5 6", "99"])
    counts = counted(texts).numpy().astype("float64")
    idf = np.divide(dense(texts).numpy(), counts, out=np.zeros_like(counts), where=counts > 0)
    weighted = np.where(counts > 0, (1 + np.log(np.maximum(counts, 1))) * idf, 0)
    expected = weighted / np.linalg.norm(weighted, axis=1, keepdims=True)
    assert (counts.max(axis=1) > 1).any()  # a repeated n-gram: sublinear differs from raw
    rows = sparse(texts)
    assert isinstance(rows, tf.SparseTensor)
    np.testing.assert_allclose(tf.sparse.to_dense(rows).numpy(), expected, rtol=1e-5)

    inputs = keras.Input(shape=(), dtype="string")
    net = keras.Model(inputs, models.head(sparse(inputs), 2))
    net.get_layer("logits").set_weights(
        [np.arange(12, dtype="float32")[:, None] / 10, np.zeros(1, "float32")]
    )
    with tempfile.TemporaryDirectory() as folder:
        net.save(f"{folder}/m.keras")
        loaded = keras.models.load_model(f"{folder}/m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded(texts).numpy(), net(texts).numpy(), rtol=1e-6)


def test_nb_rows_are_binary_ngrams_times_log_count_ratios_at_unit_length():
    """NBSVM's features (Wang & Manning 2012): a present n-gram's value is its log-count
    ratio log((p / |p|1) / (q / |q|1)), p and q one plus the class-1 and class-0 training
    rows holding it; each row then has unit length, and a saved layer keeps the ratios."""
    train = tf.constant(["1 2", "1 3", "2 3 3", "4 4"])
    labels = np.array([1, 1, 0, 0])
    layer = bow.SparseTfIdf(ngrams=1, max_tokens=10, weighting="nb")
    layer.adapt(tf.data.Dataset.from_tensor_slices(train).batch(3), labels)
    vocabulary = layer.counts.get_vocabulary()  # "[UNK]" first, then by frequency
    holds = {w: [w in t.split() for t in train.numpy().astype(str)] for w in vocabulary}
    p = np.array(
        [1 + sum(h for h, y in zip(holds[w], labels, strict=True) if y == 1) for w in vocabulary]
    )
    q = np.array(
        [1 + sum(h for h, y in zip(holds[w], labels, strict=True) if y == 0) for w in vocabulary]
    )
    ratio = np.log((p / p.sum()) / (q / q.sum()))
    texts = tf.constant(["1 1 2", "4 9"])
    present = np.array([[w in t.split() for w in vocabulary] for t in ["1 1 2", "4 9"]])
    present[1, 0] = True  # "9" is out of vocabulary: the [UNK] column
    expected = np.where(present, ratio, 0.0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(tf.sparse.to_dense(layer(texts)).numpy(), expected, rtol=1e-5)
    assert ratio[vocabulary.index("1")] > 0 > ratio[vocabulary.index("4")]

    inputs = keras.Input(shape=(), dtype="string")
    net = keras.Model(inputs, layer(inputs))
    with tempfile.TemporaryDirectory() as folder:
        net.save(f"{folder}/m.keras")
        loaded = keras.models.load_model(f"{folder}/m.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(tf.sparse.to_dense(loaded(texts)).numpy(), expected, rtol=1e-5)


def test_bow_is_scikit_learns_logistic_regression_with_c_chosen_on_validation(make_config):
    """`fit` solves the model's own rows for each C and keeps the best validation accuracy:
    the Keras model then answers as scikit-learn's logistic regression of that C does."""
    from sklearn.linear_model import LogisticRegression

    from textclf.tokenize import Encoded

    rng = np.random.default_rng(0)
    ids = [rng.integers(2, 40, size=rng.integers(3, 12)).tolist() for _ in range(160)]
    labels = np.array([int(sum(i < 20 for i in row) * 2 > len(row)) for row in ids])
    tokens = tf.ragged.constant(ids, dtype=tf.int32)
    train = Encoded(tokens[:120], labels[:120], 0)
    val = Encoded(tokens[120:], labels[120:], 0)
    cfg = make_config("model=bow", "model.ngrams=[2]", "model.C_grid=[0.01,1.0,100.0]").model
    net = models.build(cfg, models.ModelInputs(40, 2, padded(), train.tokens, train.labels))
    seen = []
    history, _, kept, reason = bow.fit(
        net,
        train,
        val,
        cfg,
        [
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: seen.append((epoch, logs["val_accuracy"]))
            )
        ],
    )
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert history["val_accuracy"] == [acc for _, acc in seen]
    best = int(np.argmax(history["val_accuracy"]))  # the first of the best
    assert kept == best and f"C={[0.01, 1.0, 100.0][best]:g}" in reason

    x_train = bow.ngram_rows(net.get_layer("ngrams"), train.tokens)
    x_val = bow.ngram_rows(net.get_layer("ngrams"), val.tokens)
    reference = LogisticRegression(C=[0.01, 1.0, 100.0][best], max_iter=1000)
    reference.fit(x_train, train.labels)
    got, expected = net(val.tokens.to_tensor()).numpy()[:, 0], reference.predict_proba(x_val)[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _order_data(rule: str) -> tuple:
    """Texts of filler words around two three-word patterns: labels that only the patterns'
    trigrams tell apart (`rule="trigrams"`: every uni- and bigram is in both classes), or
    that one word tells (`"word"`)."""
    from textclf.tokenize import Encoded

    rng = np.random.default_rng(0)
    ids, labels = [], []
    for i in range(240):
        label = i % 2
        first, second = ([5, 6, 7], [9, 6, 8]) if label else ([5, 6, 8], [9, 6, 7])
        filler = rng.integers(10, 30, size=6).tolist()
        if rule == "word":
            first = [4] if label else [3]
        ids.append(filler[:2] + first + filler[2:4] + second + filler[4:])
        labels.append(label)
    tokens, labels = tf.ragged.constant(ids, dtype=tf.int32), np.array(labels)
    return Encoded(tokens[:160], labels[:160], 0), Encoded(tokens[160:], labels[160:], 0)


def _fitted(make_config, train, val, lengths: str):
    cfg = make_config("model=bow", f"model.ngrams={lengths}", "model.C_grid=[1.0,100.0]").model
    net = models.build(cfg, models.ModelInputs(30, 2, padded(), train.tokens, train.labels))
    return net, bow.fit(net, train, val, cfg)


def test_the_ngram_length_is_chosen_on_validation_with_c(make_config):
    """Labels only trigrams tell: n-grams up to 2 score chance on validation, up to 3 are
    kept, each (length, C) pair an epoch of the history; the kept layer weighs trigrams."""
    train, val = _order_data("trigrams")
    net, (history, seconds, kept, reason) = _fitted(make_config, train, val, "[2,3]")
    assert len(history["val_accuracy"]) == len(seconds) == 4  # (2, 1), (2, 100), (3, 1), (3, 100)
    assert max(history["val_accuracy"][:2]) < 0.75 < history["val_accuracy"][kept]
    assert kept >= 2 and "n-grams up to 3" in reason
    ngrams = net.get_layer("ngrams")
    assert np.all(ngrams.weight.numpy()[ngrams.lengths() == 3] != 0)
    predicted = net(val.tokens.to_tensor()).numpy()[:, 0] > 0.5
    assert (predicted == val.labels).mean() == history["val_accuracy"][kept]


def test_a_shorter_length_kept_is_the_model_of_that_length_alone(make_config):
    """Where one word tells the labels, the tie keeps the shorter n-grams: trigrams weigh 0,
    and the model answers as one adapted and solved on n-grams up to 2 only."""
    train, val = _order_data("word")
    net, (_, _, _, reason) = _fitted(make_config, train, val, "[3,2]")
    alone, _ = _fitted(make_config, train, val, "[2]")
    assert "n-grams up to 2" in reason
    ngrams = net.get_layer("ngrams")
    assert np.all(ngrams.weight.numpy()[ngrams.lengths() == 3] == 0)
    assert ngrams.lengths().max() == 3 and alone.get_layer("ngrams").lengths().max() == 2
    probe = tf.ragged.constant([[11, 5, 6, 7, 4, 12], [5, 6, 8, 3, 20], [9, 6, 7]]).to_tensor()
    np.testing.assert_allclose(net(probe).numpy(), alone(probe).numpy(), atol=1e-5)


def test_nb_weighting_needs_two_classes(make_config):
    tokens = tf.ragged.constant([[2, 3], [3, 4], [4, 5]], dtype=tf.int32)
    cfg = make_config("model=bow", "model.weighting=nb").model
    with pytest.raises(Exception, match="model.weighting.*two classes"):
        models.build(cfg, models.ModelInputs(10, 3, padded(), tokens, np.array([0, 1, 2])))


@pytest.mark.parametrize("classes", [2, 4])
def test_the_mix_weights_fit_the_validation_labels_better_than_either_half(classes):
    """Two noisy views of the same logits: the fitted mix's log loss is below the best of
    either half alone (a or b fixed at 0), and it leans on the less noisy half."""
    from scipy.special import log_softmax

    from textclf.models.fusion import mix_weights

    rng = np.random.default_rng(0)
    width = 1 if classes == 2 else classes
    truth = rng.normal(0, 2, (2000, width))
    if classes == 2:
        labels = (rng.random(2000) < 1 / (1 + np.exp(-truth[:, 0]))).astype(int)
    else:
        labels = np.array([rng.choice(classes, p=np.exp(log_softmax(t))) for t in truth])
    sharp, blurred = truth + rng.normal(0, 0.5, truth.shape), truth + rng.normal(0, 2, truth.shape)

    def loss(z):
        if classes == 2:
            return np.mean(np.logaddexp(0, z[:, 0]) - labels * z[:, 0])
        return -np.mean(log_softmax(z, axis=1)[np.arange(len(z)), labels])

    (a, b), c = mix_weights(sharp, blurred, labels)
    mixed = loss(a * sharp + b * blurred + c)
    (a1, _), c1 = mix_weights(sharp, np.zeros_like(blurred), labels)
    (_, b2), c2 = mix_weights(np.zeros_like(sharp), blurred, labels)
    assert mixed < min(loss(a1 * sharp + c1), loss(b2 * blurred + c2))
    assert a > b > 0


def test_the_lift_counts_what_the_model_adds_to_the_ngrams_beyond_noise():
    """Cross-fitted, paired: a model with its own signal lifts the n-grams far beyond noise;
    pure noise and a copy of the n-grams do not (the mix fit on the rows it is scored on
    would credit both)."""
    from textclf.models.fusion import MIN_GAIN_Z, lift_z

    rng = np.random.default_rng(0)
    seen, unseen = rng.normal(0, 2, (2, 2000, 1))
    labels = (rng.random(2000) < 1 / (1 + np.exp(-(seen + unseen)[:, 0]))).astype(int)
    assert lift_z(unseen, seen, labels) > 5 * MIN_GAIN_Z
    assert lift_z(rng.normal(0, 1, seen.shape), seen, labels) < MIN_GAIN_Z
    assert lift_z(seen.copy(), seen, labels) < MIN_GAIN_Z


def test_an_lstm_that_cannot_lift_the_ngrams_stops_early_and_gets_weight_0(
    tmp_path, empty_store, caplog
):
    """One keyword decides the label, 20% of labels flipped: the n-grams reach what the data
    allow and the LSTM can add nothing. Its own early stopping ends training long before its 30
    epochs; the mix keeps the n-grams alone (weight 0), and the log says why."""
    import logging
    import random
    import shutil

    from omegaconf import OmegaConf

    from .conftest import compose_config, run_pipeline, write_csv

    rng = random.Random(0)
    rows = []
    for _ in range(600):
        good = rng.random() < 0.5
        text = [f"w{rng.randrange(40)}" for _ in range(rng.randint(3, 12))]
        text.insert(rng.randrange(len(text) + 1), "great" if good else "awful")
        rows.append((" ".join(text), "pos" if good == (rng.random() < 0.8) else "neg"))
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    overrides = [
        "data=csv",
        f"data.path={write_csv(tmp_path / 'keyword.csv', rows)}",
        *"model.units=8 model.embedding_dim=16 train.learning_rate=0.01".split(),
        *"train.epochs=30 train.max_steps=null evaluate.plots=false".split(),
        "evaluate.served_limit=20",
    ]
    with caplog.at_level(logging.INFO, logger="textclf"):
        metrics = run_pipeline(OmegaConf.to_object(compose_config(overrides, tmp_path)))
    assert metrics["mix_lstm"] == 0 and metrics["mix_ngrams"] == 1
    assert metrics["mix_lift_z"] < 2
    assert "weight 0, the n-grams' answer kept" in caplog.text
    assert "early_stopping: val_loss" in caplog.text
    assert metrics["epochs_run"] <= 15 < metrics["epoch_limit"]  # 11 on this data and seed
    assert metrics["test_accuracy"] == metrics["ngrams_test_accuracy"]
    assert metrics["served_agreement"] == 1.0


def test_the_mix_that_scores_a_validation_row_was_never_fit_on_it(monkeypatch):
    """The weight-0 rule's cross-fitting, row by row: each row's log loss comes from the mix
    fit on the other folds (a mix fit on the rows it scores never looks worse than the n-grams
    alone). The model's logits carry each row's index, so every fit says which rows it saw."""
    from scipy.special import expit

    from textclf.models import fusion

    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, n)
    ngrams = (2 * labels - 1 + rng.normal(0, 1.5, n))[:, None]
    model = np.arange(n, dtype="float64")[:, None] / n  # row i's logit: i / n
    real, fits = fusion.mix_weights, []

    def spy(m, g, y):
        fits.append(((m[:, 0] * n).round().astype(int), real(m, g, y)))
        return fits[-1][1]

    monkeypatch.setattr(fusion, "mix_weights", spy)
    losses = fusion.out_of_fold_losses(model, ngrams, labels)
    assert len(fits) == fusion.FOLDS
    for i in range(n):
        unseen = [weights for seen, weights in fits if i not in seen]
        assert len(unseen) == 1, f"row {i} was left out of {len(unseen)} fits, not one"
        (a, b), c = unseen[0]
        z = a * model[i, 0] + b * ngrams[i, 0] + c[0]
        expected = -np.log(expit(z) if labels[i] else 1 - expit(z))
        np.testing.assert_allclose(losses[i], expected, rtol=1e-4)
