"""The bag-of-n-grams model (`model=bow`): weighted word n-grams → one linear layer, fitted
to convergence by scikit-learn's logistic regression; also the n-gram half of the default
model, mixed with the LSTM (models/fusion.py).

It reads the same padded token ids as the LSTM, so batching, evaluation, export (raw strings
in), `make predict` and serving are shared unchanged: each row's ids are written as a string
of id "words", which `SparseTfIdf` turns into sparse weighted n-gram rows. Words outside
`tokenize.vocab_size` share the OOV id, and `tokenize.max_length` truncates, as for the LSTM.

Why a solver and not Keras' loop: the model is convex, and a few Adam epochs with dropout
stopped early reach less than the converged optimum with a regularisation strength chosen
on validation (IMDB: 0.898 against 0.906 for the same kind of features in scikit-learn,
docs/other_data.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ..config import BatchingConfig, ModelConfig, at_least, check, one_of, positive
from .base import ModelInputs, head

if TYPE_CHECKING:  # a served model loads this module: the solver's imports stay in `solve`
    import scipy.sparse
    from sklearn.linear_model import LogisticRegression

    from ..tokenize import Encoded

WEIGHTING = ("auto", "tfidf", "nb")
LOGITS = "ngram_logits"  # its linear layer's name, unique beside the model it is mixed with


@dataclass
class Ngrams:
    """The n-gram features' settings, shared by bow and late fusion's n-gram half."""

    # the n-gram lengths tried (word n-grams up to each), chosen with C on validation accuracy
    ngrams: list[int] = field(default_factory=lambda: [2, 3])
    # the most frequent n-grams (up to the longest length) of the training texts kept
    ngram_vocab: int = 1000000

    def __post_init__(self) -> None:
        check(
            len(self.ngrams) > 0 and all(n >= 1 for n in self.ngrams),
            "model.ngrams",
            f"must be one or more lengths >= 1, e.g. [2, 3], got {list(self.ngrams)}",
        )
        at_least("model.ngram_vocab", self.ngram_vocab, 2)


@dataclass
class BowConfig(Ngrams, ModelConfig):
    """`model=bow`: logistic (softmax) regression on weighted word n-grams of the token ids."""

    name: ClassVar[str] = "bow"
    # tfidf: sublinear tf-idf; nb: binary n-grams times NB log-count ratios (two classes);
    # auto: nb for two classes, tfidf for more (docs/other_data.md has both measured)
    weighting: str = "auto"
    # scikit-learn's C (inverse L2 strength) tried; the best validation accuracy is kept
    C_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    max_iter: int = 1000  # L-BFGS iterations per C

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self.weighting, "model.weighting", WEIGHTING)
        check(
            len(self.C_grid) > 0 and all(c > 0 for c in self.C_grid),
            "model.C_grid",
            f"must be one or more values > 0, got {list(self.C_grid)}",
        )
        positive("model.max_iter", self.max_iter)

    def run_name(self, batching: BatchingConfig) -> str:
        """`bow`: it solves on the token ids and never batches, so no batching in its name."""
        return self.variant()


@keras.saving.register_keras_serializable(package="textclf")
class IdWords(layers.Layer):
    """Padded ids [batch, time] → one string per row, its non-padding ids joined by spaces."""

    def call(self, ids):
        return words(tf.ragged.boolean_mask(ids, tf.not_equal(ids, 0)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


def words(ids: tf.RaggedTensor) -> tf.Tensor:
    """Ragged ids → "12 7 431 ..." per row."""
    return tf.strings.reduce_join(
        tf.strings.as_string(tf.cast(ids, tf.int64)), axis=1, separator=" "
    )


@keras.saving.register_keras_serializable(package="textclf")
class SparseTfIdf(layers.Layer):
    """Id-word strings → sparse [batch, n-grams] weighted rows of unit length.

    A present n-gram's value is, with `weighting="tfidf"`, (1 + log count) × idf, Keras'
    `log(1 + documents / (1 + document count))` (the mean idf for out-of-vocabulary
    n-grams); with `"nb"`, 1 × its NB log-count ratio `log((p / |p|₁) / (q / |q|₁))`, p and
    q the training rows containing it of class 1 and class 0, plus 1 (NBSVM). Each row is
    then scaled to unit length, as scikit-learn's. The rows stay sparse, counted with
    `output_mode="count"` and weighed here: Keras' sparse tf_idf fails when called
    (docs/design.md). `adapt` sets the vocabulary and weights; model.keras saves both.
    """

    def __init__(
        self, ngrams: int, max_tokens: int, size: int = 1, weighting: str = "tfidf", **kwargs
    ):
        super().__init__(**kwargs)
        self.ngrams, self.max_tokens = ngrams, max_tokens
        self.size, self.weighting = size, weighting
        self.counts = layers.TextVectorization(
            max_tokens=max_tokens,
            standardize=None,
            split="whitespace",
            ngrams=ngrams,
            output_mode="count",
            sparse=True,
            name="ngram_counts",
        )
        self._adapted: np.ndarray | None = None

    def build(self, input_shape) -> None:
        self.weight = self.add_weight(
            shape=(self.size,), initializer="ones", trainable=False, name="idf"
        )
        if self._adapted is not None:
            self.weight.assign(self._adapted)

    def adapt(self, texts: tf.data.Dataset, labels: np.ndarray | None = None) -> None:
        """Vocabulary (the `max_tokens` most frequent n-grams) and weights from batches of
        texts (`labels`, 0 or 1 per text in order, for "nb"); adapted once, before a call."""
        self.counts.adapt(texts)
        size = self.counts.vocabulary_size()
        documents, frequency = 0, np.zeros(2 * size, np.int64)  # rows holding it, per class
        for batch in texts:
            index = self.counts(batch).indices.numpy()  # one entry per (row, n-gram)
            group = 0 if labels is None else labels[documents + index[:, 0]]
            frequency += np.bincount(group * size + index[:, 1], minlength=2 * size)
            documents += int(batch.shape[0])
        self.size, self._frequency, self._documents = size, frequency.reshape(2, size), documents
        self._lengths = self.lengths()  # once: `fit` asks for each length's weights
        self._adapted = self.weights_up_to(self.ngrams)

    def weights_up_to(self, n: int) -> np.ndarray:
        """The adapted weights of n-grams up to length `n`, the longer ones' 0: the weights a
        layer adapted with `ngrams=n` gives the same n-grams (`bow.fit` tries each length)."""
        keep = self._lengths <= n
        if self.weighting == "nb":
            p, q = (np.where(keep, f + 1.0, 0.0) for f in self._frequency[::-1])
            return np.log(np.divide(p / p.sum(), q / q.sum(), out=np.ones_like(p), where=keep))
        documents = self._frequency.sum(axis=0)[1:]
        idf = np.where(keep[1:], np.log1p(self._documents / (1.0 + documents)), 0.0)
        return np.concatenate([[idf[keep[1:]].mean() if keep[1:].any() else 1.0], idf])

    def lengths(self) -> np.ndarray:
        """Each column's n-gram length (the out-of-vocabulary column counts as 1)."""
        vocabulary = self.counts.get_vocabulary()
        return np.array([1] + [token.count(" ") + 1 for token in vocabulary[1:]])

    def call(self, texts):
        counts = self.counts(texts)
        values = ops.take(self.weight, counts.indices[:, 1])
        if self.weighting == "tfidf":
            values = values * (1 + ops.log(ops.cast(counts.values, self.compute_dtype)))
        rows, batch = counts.indices[:, 0], ops.shape(texts)[0]
        squares = tf.math.unsorted_segment_sum(ops.square(values), rows, batch)
        values = values * ops.take(ops.rsqrt(ops.maximum(squares, 1e-12)), rows)
        return tf.SparseTensor(counts.indices, values, counts.dense_shape)

    def compute_output_spec(self, texts):
        return keras.KerasTensor((texts.shape[0], self.size), dtype=self.compute_dtype, sparse=True)

    def get_config(self) -> dict:
        return super().get_config() | {
            "ngrams": self.ngrams,
            "max_tokens": self.max_tokens,
            "size": self.size,
            "weighting": self.weighting,
        }


def weighting(cfg: BowConfig, num_classes: int) -> str:
    """The layer's weighting `cfg.weighting` means for `num_classes` classes."""
    if cfg.weighting == "auto":
        return "nb" if num_classes == 2 else "tfidf"
    check(
        cfg.weighting != "nb" or num_classes == 2,
        "model.weighting",
        f"nb weighs n-grams by two classes' counts; this data has {num_classes}: use tfidf",
    )
    return cfg.weighting


def build(cfg: BowConfig, inputs: ModelInputs) -> keras.Model:
    """An uncompiled model from padded int ids through sparse weighted n-gram rows, their
    vocabulary and weights adapted on the training rows' ids (and labels, for "nb"), to class
    probabilities; its linear layer's weights are set by `fit`."""
    if inputs.train_tokens is None:
        raise ValueError("n-gram features adapt on the training rows: pass train_tokens")
    how = weighting(cfg, inputs.num_classes)
    tfidf = SparseTfIdf(
        max(cfg.ngrams), cfg.ngram_vocab, weighting=how, dtype="float32", name="ngrams"
    )
    labels = None if how != "nb" else np.asarray(inputs.train_labels)
    tfidf.adapt(tf.data.Dataset.from_tensor_slices(words(inputs.train_tokens)).batch(1024), labels)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    features = tfidf(IdWords(name="id_words")(tokens))
    return keras.Model(tokens, head(features, inputs.num_classes, name=LOGITS), name="bow")


def grid(cfg: BowConfig) -> list[tuple[int, float]]:
    """The (n-gram length, C) pairs `fit` solves, in its order: each length's C rising."""
    return [(n, c) for n in sorted(set(cfg.ngrams)) for c in sorted(cfg.C_grid)]


def fit(
    net: keras.Model,
    train: Encoded,
    val: Encoded,
    cfg: BowConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[dict[str, list[float]], list[float], int, str]:
    """Logistic (softmax) regression on the model's own n-gram rows (`solve`) for each
    n-gram length of `cfg.ngrams` and C of `cfg.C_grid` (each pair an "epoch" of the history
    and MLflow's per-step metrics, in `grid`'s order); the pair of the best validation accuracy
    (ties: the shorter n-grams, the smaller C) is written into the model: its weights into the
    linear layer, its length as the n-gram layer's weights (`SparseTfIdf.weights_up_to`: the
    longer n-grams weigh 0), so one vocabulary serves every length. Returns the history,
    seconds per pair, the kept pair's index and why."""
    ngrams = net.get_layer("ngrams")
    history: dict[str, list[float]] = {}
    seconds: list[float] = []
    kept: tuple[int, int, LogisticRegression] | None = None

    def on_step(i: int, c: float, logs: dict[str, float]) -> None:
        for callback in callbacks:
            callback.set_model(net)
            callback.on_epoch_end(len(seconds) + i, logs)

    for n in sorted(set(cfg.ngrams)):
        ngrams.weight.assign(ngrams.weights_up_to(n))
        model, part, took, best = solve(
            ngram_rows(ngrams, train.tokens),
            train.labels,
            ngram_rows(ngrams, val.tokens),
            val.labels,
            cfg.C_grid,
            cfg.max_iter,
            on_step,
        )
        if kept is None or part["val_accuracy"][best] > history["val_accuracy"][kept[0]]:
            kept = (len(seconds) + best, n, model)
        seconds += took
        for key, values in part.items():
            history.setdefault(key, []).extend(values)
    assert kept is not None  # ngrams holds one length at least (BowConfig checks it)
    index, n, model = kept
    ngrams.weight.assign(ngrams.weights_up_to(n))
    net.get_layer(LOGITS).set_weights(
        [model.coef_.T.astype("float32"), model.intercept_.astype("float32")]
    )
    return (
        history,
        seconds,
        index,
        f"solved: n-grams up to {n} of model.ngrams and C={model.C:g} of model.C_grid, "
        "the best validation accuracy",
    )


def solve(
    x_train,
    y_train: np.ndarray,
    x_val,
    y_val: np.ndarray,
    grid: Sequence[float],
    max_iter: int,
    on_step: Callable[[int, float, dict[str, float]], None] | None = None,
) -> tuple[LogisticRegression, dict[str, list[float]], list[float], int]:
    """scikit-learn's L-BFGS logistic regression for each C of `grid`, rising; the model of
    the best validation accuracy (ties: the smaller C), each C's training and validation loss
    and accuracy, its seconds, and the kept C's index. bow and the reference both choose so."""
    from sklearn.linear_model import LogisticRegression

    from ..progress import bar

    history: dict[str, list[float]] = {}
    seconds, kept, best = [], None, 0
    # one tick per C: on a large training split one C can take minutes
    for i, c in enumerate(bar(sorted(grid), desc="C grid", unit="C")):
        started = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=max_iter).fit(x_train, y_train)
        seconds.append(time.perf_counter() - started)
        logs = _scores(model, x_train, y_train) | {
            f"val_{k}": v for k, v in _scores(model, x_val, y_val).items()
        }
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if on_step:
            on_step(i, c, logs)
        if kept is None or logs["val_accuracy"] > history["val_accuracy"][best]:
            kept, best = model, i
    return kept, history, seconds, best


def ngram_rows(
    ngrams: SparseTfIdf, tokens: tf.RaggedTensor, batch: int = 4096
) -> scipy.sparse.csr_matrix:
    """The n-gram rows of ragged ids, as scikit-learn reads them."""
    import scipy.sparse

    parts = []
    for start in range(0, int(tokens.nrows()), batch):
        rows = ngrams(words(tokens[start : start + batch]))
        index = rows.indices.numpy()
        parts.append(
            scipy.sparse.csr_matrix(
                (rows.values.numpy(), (index[:, 0], index[:, 1])), shape=rows.dense_shape.numpy()
            )
        )
    rows = scipy.sparse.vstack(parts).tocsr()
    rows.eliminate_zeros()  # the n-grams longer than the chosen length (`fit`) weigh 0
    return rows


def _scores(model: LogisticRegression, x: scipy.sparse.csr_matrix, y: np.ndarray) -> dict:
    from sklearn.metrics import log_loss

    probabilities = model.predict_proba(x)
    return {
        "loss": float(log_loss(y, probabilities, labels=model.classes_)),
        "accuracy": float((model.classes_[probabilities.argmax(axis=1)] == y).mean()),
    }
