"""One tracked training run: load → vectorize → batch → build → fit → evaluate → export.

The only place that composes the stages, in the order they run; each step below is a short
function that `bench` reuses. Stages take their own config and plain values and know nothing
of Hydra or MLflow; MLflow stays at the edges of `run`. Everything the run produces lands in
`output_dir` and in its MLflow run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import batching, bow, data, evaluate, inference, model, tokenize, tracking, train
from .config import BatchingConfig, Config, ConfigError, flatten
from .lstm import fused_copy

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"  # in the run folder: the MLflow run `train.resume` continues
CHECKPOINT_FILE = "checkpoint.npz"  # the training state after the last completed epoch
SPLITS = ("train", "val", "test")


@dataclass
class Vectorized:
    """Each split as token ids, the vectorizer that made them, and what was counted."""

    vectorizer: keras.layers.TextVectorization
    splits: dict[str, tokenize.Encoded]
    texts: dict[str, list[str]]  # the cleaned texts of the kept rows, aligned with `splits`
    counts: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return self.vectorizer.vocabulary_size()


@dataclass
class Batches:
    """One epoch of training batches per epoch number, and the validation and test batches."""

    train_epoch: Callable[[int], tf.data.Dataset]
    val: tf.data.Dataset
    test: tf.data.Dataset  # labels replaced by row numbers into the test split
    padding: batching.PaddingStats  # of the first training epoch
    boundaries: list[int] | None


def reading_length(cfg: Config) -> int | None:
    """Tokens of a review the model reads: tokenize.max_length, or batching.max_length when
    `fixed` cuts shorter. Training, evaluation and the exported model all cut here."""
    limits = [n for n in (cfg.tokenize.max_length, cfg.batching.max_length) if n is not None]
    return min(limits, default=None)


def vectorize(dataset: data.Dataset, cfg: Config) -> Vectorized:
    """Adapt the vocabulary on the training texts, then encode every split (empty rows out),
    each review cut at `reading_length`."""
    vectorizer = tokenize.adapt(dataset.train.texts, cfg.tokenize)
    counts = dict(dataset.stats)
    splits, texts = {}, {}
    for name in SPLITS:
        part: data.Split = getattr(dataset, name)
        encoded = tokenize.encode(vectorizer, part.texts, part.labels, reading_length(cfg))
        splits[name], keep = tokenize.drop_empty(encoded)
        texts[name] = [t for t, k in zip(part.texts, keep, strict=True) if k]
        counts[f"no_tokens_dropped_{name}"] = int((~keep).sum())
        counts[f"truncated_{name}"] = encoded.truncated
        if not len(splits[name]):
            raise data.DataError(f"no {name} review has a token left after tokenization.")
    return Vectorized(vectorizer, splits, texts, counts)


def batch(tokens: Vectorized, spec: BatchingConfig, seed: int, replicas: int = 1) -> Batches:
    """Padded batches as `spec` says; each epoch's shuffle depends on (seed, epoch) alone."""
    train_split, test_split = tokens.splits["train"], tokens.splits["test"]
    boundaries = (batching.bucket_boundaries(train_split.lengths, spec.num_buckets)
                  if spec.strategy == "bucket" else None)

    def even(ds: tf.data.Dataset) -> tf.data.Dataset:
        # Uneven per-replica splits break TF's cross-replica sums (AddN shapes): Keras fits
        # only batches that split evenly; the skipped reviews are counted.
        return ds if replicas == 1 else ds.filter(lambda x, y: tf.shape(x)[0] % replicas == 0)

    train_examples = batching.examples(train_split.tokens, train_split.labels)
    val_examples = batching.examples(tokens.splits["val"].tokens, tokens.splits["val"].labels)
    test_examples = batching.examples(test_split.tokens, np.arange(len(test_split), dtype=np.int32))

    def train_epoch(epoch: int) -> tf.data.Dataset:
        return even(batching.make_dataset(train_examples, spec, boundaries, shuffle=True,
                                          seed=seed, epoch=epoch))

    val = batching.counted(even(batching.make_dataset(val_examples, spec, boundaries)))
    test = batching.make_dataset(test_examples, spec, boundaries)
    return Batches(train_epoch, val, test, batching.padding_stats(train_epoch(0)), boundaries)


def build(cfg: Config, vocab_size: int, num_classes: int,
          strategy: tf.distribute.Strategy | None = None,
          train_tokens: tf.RaggedTensor | None = None) -> keras.Model:
    """The compiled classifier, its variables placed by the distribution `strategy`;
    `model.kind=bow` adapts its n-grams on `train_tokens` (the training split's ids)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        ngrams = cfg.model.kind == "bow" or cfg.model.ngram_branch
        if ngrams and train_tokens is None:
            raise ConfigError("model.kind=bow and model.ngram_branch: this command builds no "
                              "n-gram vocabulary; use model=lstm without the branch here")
        if cfg.model.kind == "bow":
            net = bow.build(train_tokens, num_classes, cfg.model)
        else:
            features = bow.ngram_features(train_tokens, cfg.model) if ngrams else None
            net = model.build(vocab_size, num_classes, cfg.model, cfg.batching.padding_side,
                              features)
        return train.compile_model(net, num_classes, cfg.train)


def fit(net: keras.Model, batches: Batches, cfg: Config, on_epoch_end: Callable,
        checkpoint: Path) -> train.Fit:
    steps = cfg.train.steps_per_epoch or batches.padding.batches
    log_epoch = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    return train.fit(net, batches.train_epoch, batches.val, steps, cfg.train, [log_epoch],
                     checkpoint)


def costs(fitted: train.Fit, padding: batching.PaddingStats) -> dict[str, float]:
    """What training cost: throughput, time, epochs and memory."""
    return {
        "padding_efficiency": padding.efficiency,
        "train_reviews_per_s": fitted.rate(padding.reviews / padding.batches),
        "train_tokens_per_s": fitted.rate(padding.real_tokens / padding.batches),
        "epoch_seconds": float(np.mean(fitted.epoch_seconds)),
        "epochs_run": len(fitted.epoch_seconds),
        "best_epoch": fitted.best_epoch + 1,
        # of the epoch whose weights were kept (the per-epoch history keeps the plain names)
        "best_val_loss": fitted.history["val_loss"][fitted.best_epoch],
        "best_val_accuracy": fitted.history["val_accuracy"][fitted.best_epoch],
        "peak_rss_mb": train.peak_rss_mb(),
    }


def export(tokens: Vectorized, net: keras.Model, class_names: list[str], cfg: Config,
           out: Path) -> Path:
    """`model.keras` (raw strings in) and `classes.json` in the run folder. It reads reviews as
    training and evaluation did (up to `reading_length` tokens). With model.serve_lstm=fused
    its LSTMs run TensorFlow's fused kernel (same weights)."""
    served = replace(cfg.tokenize, max_length=reading_length(cfg))
    if cfg.model.serve_lstm == "fused":
        net = fused_copy(net)
    exported = inference.export(tokens.vectorizer, served, net, cfg.batching.padding_side)
    return inference.save(exported, class_names, out)


def run(
    cfg: Config, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None = None
) -> dict[str, float]:
    """Train and evaluate once, logging to MLflow; returns the final metrics.

    With `train.resume` it continues the interrupted run in `cfg.output_dir` (same folder,
    same MLflow run) from its last completed epoch.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_FILE
    run_id = _resumed_run_id(cfg, out) if cfg.train.resume else None
    if not cfg.train.resume:
        checkpoint.unlink(missing_ok=True)  # a fresh run in a reused folder starts afresh
    keras.backend.clear_session()
    train.seed_everything(cfg.train.seed, cfg.train.deterministic)
    with tracking.start_run(cfg.tracking.uri, cfg.tracking.experiment, _run_name(cfg),
                            tags | _tags(cfg), parent_run_id, run_id) as mlrun:
        (out / RUN_ID_FILE).write_text(mlrun.run_id)
        mlrun.log_params(params)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

        dataset = data.load(cfg.data)
        tokens = vectorize(dataset, cfg)
        log.info("data: %s", tokens.counts)
        mlrun.log_metrics({f"data_{k}": v for k, v in tokens.counts.items()})
        (out / "vocabulary.txt").write_text(
            "\n".join(tokens.vectorizer.get_vocabulary()) + "\n", encoding="utf-8")

        strategy = train.distribution(cfg.train.strategy, cfg.train.mixed_precision)
        batches = batch(tokens, cfg.batching, cfg.train.seed, strategy.num_replicas_in_sync)
        if batches.boundaries:
            mlrun.set_tags({"bucket_boundaries": batches.boundaries})
        mlrun.log_metrics({"data_skipped_small_batch":
                           len(tokens.splits["train"]) - batches.padding.reviews})
        log.info("padding efficiency %.3f over %d batches", batches.padding.efficiency,
                 batches.padding.batches)

        class_names = dataset.class_names
        net = build(cfg, tokens.vocab_size, len(class_names), strategy,
                    tokens.splits["train"].tokens)
        fitted = fit(net, batches, cfg, mlrun.log_epoch, checkpoint)

        predictions = evaluate.predict(net, batches.test, tokens.splits["test"].labels)
        metrics = evaluate.score(predictions, class_names, cfg.evaluate.length_edges)
        metrics |= costs(fitted, batches.padding)
        # epochs_run below it: early stopping ended training, not the limit
        metrics["epoch_limit"] = train.epoch_limit(
            cfg.train, cfg.train.steps_per_epoch or batches.padding.batches)

        model_path = export(tokens, net, class_names, cfg, out)
        classifier = inference.Classifier.from_files(model_path)  # as `make predict` loads it
        metrics |= evaluate.served_scores(classifier.class_probabilities, tokens.texts["test"],
                                          predictions, cfg.evaluate.served_limit, cfg.data.seed)
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plots = (evaluate.plot(fitted.history, evaluate.confusion(predictions, len(class_names)),
                               class_names, tokens.splits["train"].lengths, out / "plots")
                 if cfg.evaluate.plots else [])
        checkpoint.unlink(missing_ok=True)  # the run is complete: model.keras replaces it

        # Everything is saved in `out` first: with the tracking server unreachable from here
        # on, one message says how to log the folder later (textclf log-model).
        with mlrun.or_later(out):
            mlrun.log_metrics(metrics)
            tracking.log_model(mlrun, model_path, model_path.with_name(inference.CLASSES_FILE),
                               cfg.tracking.registered_model)
            for path in ("config.json", "vocabulary.txt", "metrics.json", "model.keras",
                         inference.CLASSES_FILE):
                mlrun.log_artifact(out / path)
            for path in plots:
                mlrun.log_artifact(path, "plots")
        return metrics


def _run_name(cfg: Config) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    if cfg.model.kind == "bow":  # padding and masking do not change the n-grams it reads
        return f"bow-{cfg.batching.strategy}"
    name = f"{cfg.batching.strategy}-{cfg.batching.padding_side}-{cfg.model.masking}"
    return name + "+ngrams" if cfg.model.ngram_branch else name


def _tags(cfg: Config) -> dict[str, str]:
    """The variant as tags, so the MLflow UI and `make compare` can group runs by them."""
    kind = cfg.model.kind + ("+ngrams" if cfg.model.ngram_branch else "")
    return {"model": kind, "batching": cfg.batching.strategy,
            "padding_side": cfg.batching.padding_side,
            "masking": cfg.model.masking, "data": cfg.data.source, "output_dir": cfg.output_dir}


def _resumed_run_id(cfg: Config, out: Path) -> str | None:
    """With `train.resume`: the MLflow run this folder's interrupted run logged to, once it is
    clear that the folder holds such a run and that the configuration is unchanged."""
    saved = out / "config.json"
    if not saved.exists():
        raise ConfigError(
            f"train.resume: {out} holds no earlier run. Resume in the interrupted run's "
            "folder: textclf resume <folder> (or hydra.run.dir=<folder> train.resume=true)."
        )
    before = flatten(json.loads(saved.read_text()))
    now = flatten(asdict(cfg))
    changed = sorted(k for k in before.keys() | now.keys()
                     if k != "train.resume" and before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in changed[:5])
        raise ConfigError(f"train.resume: the configuration differs from the run in {out} "
                          f"({shown}); resume with the same overrides (textclf resume <folder>).")
    run_id = out / RUN_ID_FILE
    return run_id.read_text().strip() if run_id.exists() else None
