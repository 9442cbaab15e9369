"""Token ids → padded `tf.data` batches: the one place where padding happens.

A strategy is a function batching one epoch of examples, registered below with one line,
`register(name, function, <traits>)`, and a `conf/batching/<name>.yaml` setting
`strategy: <name>` (and what it changes). The project's own:
- `fixed`: pad or truncate every review to `max_length` (the classic `pad_sequences` way);
- `per_batch`: random batches padded to their own longest review;
- `bucket`: `bucket_by_sequence_length` with boundaries from the training-length quantiles;
- `exact`: `group_by_window` on the (rounded) length, so a batch holds reviews of one length;
- `pooled`: shuffled pools of `pool_batches` batches, each sorted by length and cut into
  batches (Hugging Face's `group_by_length`): every batch full, its members drawn from one pool.
`bucket` and `pooled` take a token budget: short reviews then come in wider batches.
Padding goes after (`post`) or before (`pre`) the tokens; id 0 is always the pad.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .config import STRATEGIES, BatchingConfig, Strategy

AUTOTUNE = tf.data.AUTOTUNE


def padded(side: str = "post") -> BatchingConfig:
    """Batches of random composition padded on `side` (after: post, before: pre), as a model
    or an exported model reads them."""
    return BatchingConfig(strategy="per_batch", padding_side=side)


def bucket_boundaries(lengths: np.ndarray, num_buckets: int) -> list[int]:
    """Upper bounds (exclusive) splitting `lengths` into equally populated buckets."""
    quantiles = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:-1], method="lower")
    return sorted({int(q) + 1 for q in quantiles if q >= 1})


def bucket_batch_sizes(
    boundaries: list[int], batch_size: int, token_budget: int | None, max_rows: int | None = None
) -> list[int]:
    """One batch size per bucket: `batch_size`, or with a token budget, as many reviews as fit
    in `token_budget` padded tokens, at most `max_rows` (but never fewer than `batch_size`).
    On a CPU an LSTM time step costs nearly as much for 64 rows as for 256, so short reviews in
    wide batches are cheaper; the cap keeps enough optimizer steps per epoch for short texts."""
    sizes = [batch_size] * (len(boundaries) + 1)  # the last bucket has no upper bound
    if token_budget:
        sizes[:-1] = [
            max(batch_size, min(max_rows or sys.maxsize, token_budget // max(1, upper - 1)))
            for upper in boundaries
        ]
    return sizes


def _pre_pad(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Move each row's trailing padding to its front: [a b c 0 0] → [0 0 a b c]."""
    lengths = tf.math.count_nonzero(x, axis=1)
    return tf.reverse(tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0), axis=[1]), y


def _trim(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Drop the columns that are padding in every row of a right-padded batch."""
    return x[:, : tf.reduce_max(tf.math.count_nonzero(x, axis=1, dtype=tf.int32))], y


def length_batches(
    sorted_lengths: np.ndarray, batch_size: int, token_budget: int, max_rows: int | None = None
) -> list[tuple[int, int]]:
    """[start, stop) ranges over ascending lengths: at least `batch_size` rows each, more while
    rows × the batch's longest length stay within `token_budget` (and rows ≤ `max_rows`)."""
    ranges, start, n = [], 0, len(sorted_lengths)
    cap = max(batch_size, max_rows or n)
    while start < n:
        stop = min(start + batch_size, n)
        while (
            stop < n
            and stop - start < cap
            and (stop + 1 - start) * sorted_lengths[stop] <= token_budget
        ):
            stop += 1
        ranges.append((start, stop))
        start = stop
    return ranges


def examples(tokens: tf.RaggedTensor, labels: np.ndarray) -> tf.data.Dataset:
    """(ids, label) pairs, one dense row per review. Build it once per split and batch it for
    every epoch: each `from_tensor_slices` of a ragged tensor holds its own copy of the ids."""
    # The identity map turns each ragged row into a dense 1-D tensor, which padding needs.
    return tf.data.Dataset.from_tensor_slices((tokens, labels)).map(lambda x, y: (x, y))


@dataclass(frozen=True)
class Epoch:
    """What a strategy may need besides the (shuffled) examples and its config."""

    examples: tf.data.Dataset  # the examples in their stored order, before this epoch's shuffle
    boundaries: list[int]  # bucket limits, for a strategy registered with `bucketed`
    shuffle: bool  # training: the order is random (seeded by `seed`)
    seed: int  # this epoch's shuffle seed, from (seed, epoch)


Batcher = Callable[[tf.data.Dataset, BatchingConfig, Epoch], tf.data.Dataset]


def register(
    name: str,
    batch: Batcher,
    *,
    regroups: bool = False,
    bucketed: bool = False,
    budgeted: bool = False,
    truncates: bool = False,
) -> None:
    """Make `batch` the strategy `batching=<name>` selects (`conf/batching/<name>.yaml` sets
    `strategy: <name>`). `regroups`: it emits batches grouped by length, so training shuffles
    the batches again; `bucketed`: it needs bucket boundaries from the training lengths;
    `budgeted`: it reads `batching.token_budget`; `truncates`: it cuts every review at
    `batching.max_length`, which it then requires (and no other strategy takes)."""
    STRATEGIES[name] = Strategy(batch, regroups, bucketed, budgeted, truncates)


def strategy(spec: BatchingConfig) -> Strategy:
    """The registered strategy `spec` names (BatchingConfig checked it when it was built)."""
    return STRATEGIES[spec.strategy]


def _fixed(ds: tf.data.Dataset, spec: BatchingConfig, epoch: Epoch) -> tf.data.Dataset:
    length = spec.max_length
    return ds.map(lambda x, y: (x[:length], y)).padded_batch(
        spec.batch_size, padded_shapes=([length], [])
    )


def _per_batch(ds: tf.data.Dataset, spec: BatchingConfig, epoch: Epoch) -> tf.data.Dataset:
    return ds.padded_batch(spec.batch_size)


def _bucket(ds: tf.data.Dataset, spec: BatchingConfig, epoch: Epoch) -> tf.data.Dataset:
    bounds = epoch.boundaries
    sizes = bucket_batch_sizes(bounds, spec.batch_size, spec.token_budget, spec.max_batch_rows)
    if spec.bucket_keys == "random" and epoch.shuffle:
        # each review keyed by the length of a random other review (the stored examples
        # shuffled apart): bucket's usual batch sizes, members that ignore their length
        others = epoch.examples.shuffle(epoch.examples.cardinality(), seed=epoch.seed + 2)
        keys = others.map(lambda x, y: tf.shape(x)[0])
        keyed = tf.data.Dataset.zip(ds, keys).bucket_by_sequence_length(
            lambda e, key: key, bounds, sizes, pad_to_bucket_boundary=False
        )
        return keyed.map(lambda e, key: e)
    return ds.bucket_by_sequence_length(
        lambda x, y: tf.shape(x)[0], bounds, sizes, pad_to_bucket_boundary=False
    )


def _pooled(ds: tf.data.Dataset, spec: BatchingConfig, epoch: Epoch) -> tf.data.Dataset:
    """Pools of `pool_batches` batches of consecutive reviews, each sorted by length and cut
    into batches (with a token budget: wider batches of short reviews, `length_batches`, and
    pools of `pool_batches` of the widest, `max_batch_rows`, so a pool still holds about
    `pool_batches` batches): padding as in a sorted epoch, members as random as one pool
    allows."""
    size, budget = spec.batch_size, spec.token_budget

    def limits(lengths: np.ndarray) -> np.ndarray:
        ranges = length_batches(lengths, size, budget or 0, spec.max_batch_rows)
        return np.array([stop for _, stop in ranges], np.int64)

    def cut(x: tf.RaggedTensor, y: tf.Tensor) -> tf.data.Dataset:
        order = tf.argsort(x.row_lengths(), stable=True)
        ids, labels = tf.gather(x, order).to_tensor(), tf.gather(y, order)
        if not budget:
            return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(size).map(_trim)
        stops = tf.numpy_function(limits, [tf.gather(x.row_lengths(), order)], tf.int64)
        starts = tf.concat([[0], stops[:-1]], 0)
        spans = tf.data.Dataset.from_tensor_slices((starts, stops))
        return spans.map(lambda a, b: _trim(ids[a:b], labels[a:b]))

    widest = max(size, spec.max_batch_rows or size) if budget else size
    return ds.ragged_batch(widest * spec.pool_batches).flat_map(cut)


def _exact(ds: tf.data.Dataset, spec: BatchingConfig, epoch: Epoch) -> tf.data.Dataset:
    step, size = spec.round_to, spec.batch_size
    return ds.group_by_window(
        key_func=lambda x, y: tf.cast((tf.shape(x)[0] + step - 1) // step, tf.int64),
        reduce_func=lambda key, window: window.padded_batch(size),
        window_size=size,
    )


register("fixed", _fixed, truncates=True)
register("per_batch", _per_batch)
register("bucket", _bucket, regroups=True, bucketed=True, budgeted=True)
register("exact", _exact, regroups=True)
register("pooled", _pooled, regroups=True, budgeted=True)


def boundaries_for(spec: BatchingConfig, lengths: np.ndarray) -> list[int] | None:
    """The bucket limits `spec`'s strategy needs from the training `lengths`, or None."""
    return bucket_boundaries(lengths, spec.num_buckets) if strategy(spec).bucketed else None


def make_dataset(
    ds: tf.data.Dataset,
    spec: BatchingConfig,
    boundaries: list[int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> tf.data.Dataset:
    """One epoch of `examples` as batches of (padded int32 ids [batch, time], labels).

    `boundaries` are the bucket limits for a bucketed strategy (see `boundaries_for`). With
    `shuffle` the order depends on `seed` and `epoch` alone, not on how many epochs this
    process has run, so a run resumed at epoch e sees the batches an uninterrupted run saw.
    """
    order = seed * 1_000_003 + epoch  # one shuffle seed per (seed, epoch)
    chosen = strategy(spec)
    plan = Epoch(ds, list(boundaries or []), shuffle, order)
    if shuffle:
        ds = ds.shuffle(spec.shuffle_buffer, seed=order)
    ds = chosen.batch(ds, spec, plan)
    if shuffle and chosen.regroups:
        # Grouping emits batches in length order at the end of an epoch; mix them again.
        ds = ds.shuffle(1024, seed=order + 1)
    if spec.padding_side == "pre":
        ds = ds.map(_pre_pad, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


@dataclass
class PaddingStats:
    reviews: int
    real_tokens: int
    padded_tokens: int
    batches: int
    # mean total-variation distance between a batch's label mix and the whole pass's: 0 when
    # every batch mirrors the data; length-grouped batches raise it where length and label go
    # together (a cause the padding study measures)
    label_skew: float = 0.0

    @property
    def efficiency(self) -> float:
        """Real tokens / tokens processed including padding."""
        return self.real_tokens / max(1, self.padded_tokens)

    @property
    def rows_per_batch(self) -> float:
        return self.reviews / max(1, self.batches)


def padding_stats(ds: Iterable[tuple[tf.Tensor, tf.Tensor]]) -> PaddingStats:
    """One pass over `ds` (a dataset or a list of batches) counting real and padded tokens."""
    reviews = real = total = batches = 0
    labels = []
    for x, y in ds:
        reviews += int(x.shape[0])
        real += int(tf.math.count_nonzero(x))
        total += int(tf.size(x))
        batches += 1
        labels.append(np.asarray(y))
    return PaddingStats(reviews, real, total, batches, label_skew(labels))


def label_skew(batches: list[np.ndarray]) -> float:
    """Mean over `batches` (label arrays) of the total-variation distance between a batch's
    label frequencies and those of all batches together."""
    if not batches:
        return 0.0
    classes = int(max(b.max(initial=0) for b in batches)) + 1
    counts = np.stack([np.bincount(b, minlength=classes) for b in batches]).astype(float)
    whole = counts.sum(0) / counts.sum()
    mixes = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(0.5 * np.abs(mixes - whole).sum(1).mean())


def counted(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with its batch count declared: grouping hides it, and Keras warns at the end of
    every pass over a dataset of unknown length."""
    return ds.apply(tf.data.experimental.assert_cardinality(padding_stats(ds).batches))


def repad(spec: BatchingConfig) -> Repad:
    """The exported model's layer padding a vectorized batch as `spec`'s batches are padded."""
    return Repad(spec.padding_side, name="repad")


@keras.saving.register_keras_serializable(package="textclf")
class Repad(keras.layers.Layer):
    """Inside the saved model: vectorizer output → the padding the model was trained with.

    Trims columns that are padding in every row, gives a row with no token one OOV id (an
    all-padding row breaks masked LSTMs on GPU), and moves padding to the front for `pre`.
    """

    def __init__(self, padding_side: str = "post", **kwargs):
        super().__init__(**kwargs)
        self.padding_side = padding_side

    def call(self, ids):
        ids = tf.cast(ids, tf.int32)
        lengths = tf.math.count_nonzero(ids, axis=1, dtype=tf.int32)
        ids = ids[:, : tf.maximum(tf.reduce_max(lengths), 1)]
        empty = tf.equal(lengths, 0)[:, None] & tf.equal(tf.range(tf.shape(ids)[1]), 0)[None, :]
        ids = tf.where(empty, tf.ones_like(ids), ids)
        if self.padding_side == "pre":
            ids, _ = _pre_pad(ids, None)
        return ids

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None)

    def get_config(self) -> dict:
        return super().get_config() | {"padding_side": self.padding_side}
