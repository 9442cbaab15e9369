"""One tracked training run: data → tokenize → batching → model → train → evaluate.

The only place that composes the stages; each stage takes plain values and knows nothing of
Hydra or MLflow. Everything the run produces lands in `output_dir` and in its MLflow run.
"""

from __future__ import annotations

import json
import logging
import resource
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import batching, data, evaluate, model, tokenize, tracking, train
from .config import Config, ConfigError, flatten

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"  # in the run folder: the MLflow run `train.resume` continues
CHECKPOINT_FILE = "checkpoint.npz"  # the training state after the last completed epoch


def end_to_end(
    vectorizer: keras.layers.TextVectorization,
    standardize: str,
    classifier: keras.Model,
    max_length: int | None,
    padding_side: str,
) -> keras.Model:
    """Raw strings → class probabilities: the vectorizer, padding and classifier in one model."""
    text = keras.Input(shape=(), dtype="string", name="text")
    ids = tokenize.inference_vectorizer(vectorizer, standardize, max_length)(text)
    ids = batching.Repad(padding_side, name="repad")(ids)
    return keras.Model(text, classifier(ids), name="text_classifier")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _encode(
    vectorizer, split: data.Split, max_length: int | None, name: str, counts: dict[str, int]
) -> tokenize.Encoded:
    encoded, dropped = tokenize.drop_empty(
        tokenize.encode(vectorizer, split.texts, split.labels, max_length)
    )
    counts[f"no_tokens_dropped_{name}"] = dropped
    counts[f"truncated_{name}"] = encoded.truncated
    if not len(encoded):
        raise data.DataError(f"no {name} review has a token left after tokenization.")
    return encoded


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
    tags = {
        **tags,
        "batching": cfg.batching.strategy,
        "padding_side": cfg.batching.padding_side,
        "masking": cfg.model.masking,
        "data": cfg.data.source,
        "output_dir": str(out),
    }
    run_name = cfg.tracking.run_name or (
        f"{cfg.batching.strategy}-{cfg.batching.padding_side}-{cfg.model.masking}"
    )
    with tracking.start_run(
        cfg.tracking.uri, cfg.tracking.experiment, run_name, tags, parent_run_id, run_id
    ) as mlrun:
        (out / RUN_ID_FILE).write_text(mlrun.run_id)
        mlrun.log_params(params)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

        dataset = data.load(cfg.data)
        counts = dict(dataset.stats)
        log.info("data: %s", counts)

        vectorizer = tokenize.adapt(
            dataset.train.texts, cfg.tokenize.vocab_size, cfg.tokenize.standardize
        )
        vocabulary = vectorizer.get_vocabulary()
        (out / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        max_length = cfg.tokenize.max_length
        splits = {
            name: _encode(vectorizer, part, max_length, name, counts)
            for name, part in (
                ("train", dataset.train),
                ("val", dataset.val),
                ("test", dataset.test),
            )
        }
        mlrun.log_metrics({f"data_{k}": v for k, v in counts.items()})

        spec, seed = cfg.batching, cfg.train.seed
        boundaries = (
            batching.bucket_boundaries(splits["train"].lengths, spec.num_buckets)
            if spec.strategy == "bucket"
            else None
        )
        if boundaries:
            mlrun.set_tags({"bucket_boundaries": boundaries})
        strategy = train.distribution(cfg.train.strategy, cfg.train.mixed_precision)
        replicas = strategy.num_replicas_in_sync

        def even(ds: tf.data.Dataset) -> tf.data.Dataset:
            # Uneven per-replica splits break TF's cross-replica sums (AddN shapes): Keras
            # fits only batches that split evenly; the skipped reviews are counted.
            return ds if replicas == 1 else ds.filter(lambda x, y: tf.shape(x)[0] % replicas == 0)

        train_examples, val_examples, test_examples = (
            batching.examples(s.tokens, s.labels) for s in splits.values())

        def train_epoch(epoch: int) -> tf.data.Dataset:
            return even(batching.make_dataset(train_examples, spec, boundaries, shuffle=True,
                                              seed=seed, epoch=epoch))

        val_ds, test_ds = (batching.make_dataset(e, spec, boundaries)
                           for e in (val_examples, test_examples))
        padding = batching.padding_stats(train_epoch(0))
        mlrun.log_metrics({"data_skipped_small_batch": len(splits["train"]) - padding.reviews})
        log.info("padding efficiency %.3f over %d batches", padding.efficiency, padding.batches)

        num_classes = len(dataset.class_names)
        m = cfg.model
        with strategy.scope():
            classifier = model.build(len(vocabulary), num_classes, m.embedding_dim, m.units,
                                     m.bidirectional, m.dropout, m.masking, spec.padding_side,
                                     m.pooling)
            train.compile_model(classifier, num_classes, cfg.train.optimizer,
                                cfg.train.learning_rate)
        fitted = train.fit(
            classifier,
            train_epoch,
            batching.counted(even(val_ds)),
            cfg.train.steps_per_epoch or padding.batches,
            cfg.train.epochs,
            cfg.train.patience,
            [keras.callbacks.LambdaCallback(on_epoch_end=mlrun.log_epoch)],
            cfg.train.verbose,
            checkpoint,
        )

        predictions = evaluate.predict(classifier, test_ds)
        metrics = evaluate.score(predictions, dataset.class_names, cfg.evaluate.length_edges)
        metrics.update(
            padding_efficiency=padding.efficiency,
            train_reviews_per_s=fitted.rate(padding.reviews / padding.batches),
            train_tokens_per_s=fitted.rate(padding.real_tokens / padding.batches),
            epoch_seconds=float(np.mean(fitted.epoch_seconds)),
            epochs_run=len(fitted.epoch_seconds),
            best_epoch=fitted.best_epoch + 1,
            peak_rss_mb=peak_rss_mb(),
        )
        mlrun.log_metrics(metrics)
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})

        exported = end_to_end(
            vectorizer, cfg.tokenize.standardize, classifier, max_length, spec.padding_side
        )
        exported.save(out / "model.keras")
        (out / "classes.json").write_text(json.dumps(dataset.class_names))
        tracking.log_model(
            mlrun, out / "model.keras", out / "classes.json", cfg.tracking.registered_model
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        artifacts = [
            out / "config.json",
            out / "vocabulary.txt",
            out / "metrics.json",
            out / "model.keras",
            out / "classes.json",
        ]
        if cfg.evaluate.plots:
            artifacts += evaluate.plot(
                fitted.history,
                evaluate.confusion(predictions, len(dataset.class_names)),
                dataset.class_names,
                splits["train"].lengths,
                out / "plots",
            )
        for path in artifacts:
            mlrun.log_artifact(path, "plots" if path.parent.name == "plots" else None)
        checkpoint.unlink(missing_ok=True)  # the run is complete: model.keras replaces it
        return metrics
