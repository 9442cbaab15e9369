"""One tracked training run: load → vectorize → batch → build → fit → evaluate → export.

The only place that composes the stages, in the order they run; each step below is a short
function that `bench` reuses. Stages take their own config and plain values and know nothing
of Hydra or MLflow; MLflow stays at the edges of `run`. Everything the run produces lands in
`output_dir` and in its MLflow run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import batching, data, evaluate, inference, models, run_folder, tokenize, tracking, train
from .config import BatchingConfig, Config, ConfigError, flatten
from .run_folder import RunFolder

log = logging.getLogger(__name__)
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


def batch(tokens: Vectorized, spec: BatchingConfig, seed: int) -> Batches:
    """Padded batches as `spec` says; each epoch's shuffle depends on (seed, epoch) alone."""
    train_split, test_split = tokens.splits["train"], tokens.splits["test"]
    boundaries = batching.boundaries_for(spec, train_split.lengths)

    train_examples = batching.examples(train_split.tokens, train_split.labels)
    val_examples = batching.examples(tokens.splits["val"].tokens, tokens.splits["val"].labels)
    test_examples = batching.examples(test_split.tokens, np.arange(len(test_split), dtype=np.int32))

    def train_epoch(epoch: int) -> tf.data.Dataset:
        return batching.make_dataset(
            train_examples, spec, boundaries, shuffle=True, seed=seed, epoch=epoch
        )

    val = batching.counted(batching.make_dataset(val_examples, spec, boundaries))
    test = batching.make_dataset(test_examples, spec, boundaries)
    return Batches(train_epoch, val, test, batching.padding_stats(train_epoch(0)), boundaries)


def model_inputs(tokens: Vectorized, num_classes: int, cfg: Config) -> models.ModelInputs:
    """What the data tell the model before it is built (models.ModelInputs)."""
    train_split = tokens.splits["train"]
    return models.ModelInputs(
        tokens.vocab_size, num_classes, cfg.batching, train_split.tokens, train_split.labels
    )


def compiled(net: keras.Model, cfg: Config, num_classes: int) -> keras.Model:
    """`net` compiled for Keras' loop, unless the model fits itself."""
    if models.spec(cfg.model).fit:  # an optimizer never stepped would be saved with it
        return net
    return train.compile_model(net, num_classes, cfg.train)


def fit(
    net: keras.Model,
    tokens: Vectorized,
    batches: Batches,
    cfg: Config,
    on_epoch_end: Callable,
    checkpoint: Path,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> train.Fit:
    """Keras' loop over the batches, or the model's own solver (bow) on the token ids."""
    log_epoch = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    solve = models.spec(cfg.model).fit
    if solve is not None:
        splits = tokens.splits
        history, seconds, best, reason = solve(
            net, splits["train"], splits["val"], cfg.model, [log_epoch, *callbacks]
        )  # no optimizer steps: no steady-state rate (train_reviews_per_s is NaN)
        return train.Fit(history, seconds, [0.0] * len(seconds), [0] * len(seconds), best, reason)
    steps = cfg.train.steps_per_epoch or batches.padding.batches
    return train.fit(
        net,
        batches.train_epoch,
        batches.val,
        steps,
        cfg.train,
        [log_epoch, *callbacks],
        checkpoint,
    )


def mixer(
    net: keras.Model, inputs: models.ModelInputs, tokens: Vectorized, batches: Batches, cfg: Config
) -> models.fusion.Mixer | None:
    """Late fusion with bow's n-gram model, if the model offers it: solved before training,
    mixed after it."""
    splits = tokens.splits
    return models.mixer(net, inputs, splits["train"], splits["val"], batches.val, cfg.model)


def costs(fitted: train.Fit, padding: batching.PaddingStats) -> dict[str, float]:
    """What training cost: throughput, time, epochs and memory."""
    return {
        "padding_efficiency": padding.efficiency,
        "batch_rows": padding.rows_per_batch,  # mean rows per training batch
        "batch_label_skew": padding.label_skew,
        "train_reviews_per_s": fitted.rate(padding.rows_per_batch),
        "train_tokens_per_s": fitted.rate(padding.real_tokens / padding.batches),
        "epoch_seconds": float(np.mean(fitted.epoch_seconds)),
        "epochs_run": len(fitted.epoch_seconds),
        "best_epoch": fitted.best_epoch + 1,
        # of the epoch whose weights were kept (the per-epoch history keeps the plain names)
        "best_val_loss": fitted.history["val_loss"][fitted.best_epoch],
        "best_val_accuracy": fitted.history["val_accuracy"][fitted.best_epoch],
        "peak_rss_mb": train.peak_rss_mb(),
    }


def export(
    tokens: Vectorized, net: keras.Model, class_names: list[str], cfg: Config, folder: RunFolder
) -> Path:
    """`model.keras` (raw strings in) and `classes.json` in the run folder. It reads reviews as
    training and evaluation did (up to `reading_length` tokens), through the network the model
    serves with (`models.serving`: the LSTM's fused kernel, same weights)."""
    served = replace(cfg.tokenize, max_length=reading_length(cfg))
    exported = inference.export(
        tokens.vectorizer, served, models.serving(net, cfg.model), cfg.batching
    )
    return inference.save(exported, class_names, folder.model, folder.classes)


def run(
    cfg: Config,
    params: dict[str, str],
    tags: dict[str, str],
    parent_run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, float]:
    """Train and evaluate once, logging to MLflow; returns the final metrics. `callbacks` see
    each epoch after it is logged (an Optuna trial's pruning).

    With `train.resume` it continues the interrupted run in `cfg.output_dir` (same folder,
    same MLflow run) from its last completed epoch.
    """
    folder = RunFolder(Path(cfg.output_dir))
    folder.prepare()
    run_id = _resumed_run_id(cfg, folder) if cfg.train.resume else None
    if not cfg.train.resume:
        folder.checkpoint.unlink(missing_ok=True)  # a fresh run in a reused folder starts afresh
    keras.backend.clear_session()
    train.seed_everything(cfg.train.seed, cfg.train.deterministic)
    name = run_folder.run_name(cfg)
    tags = {k: str(v) for k, v in (tags | run_folder.tags(cfg)).items()}
    tags |= tracking.note(run_folder.description(cfg))
    with tracking.start_run(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        name,
        tags,
        parent_run_id,
        run_id,
        cfg.tracking.system_metrics,
    ) as mlrun:
        folder.save_run_id(mlrun.run_id)
        folder.save_identity(name, tags)
        mlrun.log_params(params)
        folder.write_json(RunFolder.CONFIG, asdict(cfg))
        if cfg.train.resume and folder.checkpoint.exists():
            train.read_checkpoint(folder.checkpoint)  # a damaged one fails now, not after loading

        dataset = data.load(cfg.data)
        mlrun.log_datasets(data.lineage(dataset, cfg.data))
        tokens = vectorize(dataset, cfg)
        report = data.report(
            dataset.class_names,
            tokens.counts,
            {name: split.labels for name, split in tokens.splits.items()},
        )
        log.info("%s", data.describe(report))
        (folder / RunFolder.VOCABULARY).write_text(
            "\n".join(tokens.vectorizer.get_vocabulary()) + "\n", encoding="utf-8"
        )

        batches = batch(tokens, cfg.batching, cfg.train.seed)
        if batches.boundaries:
            boundaries = {"bucket_boundaries": str(batches.boundaries)}
            mlrun.set_tags(boundaries)
            folder.add_tags(boundaries)
        folder.write_json(RunFolder.DATA_REPORT, report)
        mlrun.log_params(run_folder.data_params(report))
        log.info(
            "padding efficiency %.3f over %d batches",
            batches.padding.efficiency,
            batches.padding.batches,
        )

        class_names = dataset.class_names
        inputs = model_inputs(tokens, len(class_names), cfg)
        net = models.build(cfg.model, inputs)
        fusion = mixer(net, inputs, tokens, batches, cfg)
        fitted = fit(
            compiled(net, cfg, inputs.num_classes),
            tokens,
            batches,
            cfg,
            mlrun.log_epoch,
            folder.checkpoint,
            callbacks,
        )
        log.info(
            "training stopped after %d epochs: %s", len(fitted.epoch_seconds), fitted.stop_reason
        )
        folder.add_tags({"stop_reason": fitted.stop_reason})  # to MLflow with the metrics
        trained = net
        net, finished = fusion.mix() if fusion else (net, {})

        test_labels = tokens.splits["test"].labels
        predictions = evaluate.predict(net, batches.test, test_labels)
        metrics = evaluate.score(predictions, class_names, cfg.evaluate.length_edges)
        if fusion:  # what the mix added: each half scored alone (the n-grams: model=bow's)
            for name, half in (("trained", trained), ("ngrams", fusion.linear)):
                alone = evaluate.predict(half, batches.test, test_labels)
                finished |= {
                    f"{name}_{k}": v
                    for k, v in evaluate.score(alone, class_names, []).items()
                    if k in ("test_accuracy", "test_f1")
                }
            log.info("after training: %s", {k: round(v, 4) for k, v in finished.items()})
        metrics |= costs(fitted, batches.padding) | finished
        # epochs_run below it: early stopping ended training, not the limit (a solved model's
        # "epochs" are its C values, all of them tried)
        metrics["epoch_limit"] = (
            len(fitted.epoch_seconds)
            if models.spec(cfg.model).fit
            else train.epoch_limit(cfg.train, cfg.train.steps_per_epoch or batches.padding.batches)
        )

        export(tokens, net, class_names, cfg, folder)
        classifier = inference.Classifier.from_files(folder.model)  # as `make predict` loads it
        metrics |= evaluate.served_scores(
            classifier.class_probabilities,
            tokens.texts["test"],
            predictions,
            cfg.evaluate.served_limit,
            cfg.data.seed,
        )
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
        folder.write_json(RunFolder.METRICS, metrics)
        plots = (
            evaluate.plot(
                fitted.history,
                predictions,
                class_names,
                tokens.splits["train"].lengths,
                folder.plots,
            )
            if cfg.evaluate.plots
            else []
        )
        folder.checkpoint.unlink(missing_ok=True)  # the run is complete: model.keras replaces it
        described = tracking.note(run_folder.description(cfg, metrics))
        folder.add_tags(described)

        # Everything is saved in the folder first: with the tracking server unreachable from
        # here on, one message says how to log the folder later (textclf log-model).
        with mlrun.or_later(folder.path):
            mlrun.set_tags({"stop_reason": fitted.stop_reason} | described)
            mlrun.log_metrics(metrics)
            tracking.log_model(mlrun, folder.model, folder.classes, cfg.tracking.registered_model)
            for path in folder.logged():
                mlrun.log_artifact(path)
            for path in plots:
                mlrun.log_artifact(path, RunFolder.PLOTS)
        return metrics


def _resumed_run_id(cfg: Config, folder: RunFolder) -> str | None:
    """With `train.resume`: the MLflow run this folder's interrupted run logged to, once it is
    clear that the folder holds such a run and that the configuration is unchanged."""
    if folder.missing(RunFolder.CONFIG):
        raise ConfigError(
            f"train.resume: {folder.path} holds no earlier run. Resume in the interrupted run's "
            "folder: textclf resume <folder> (or hydra.run.dir=<folder> train.resume=true)."
        )
    before = flatten(folder.read_json(RunFolder.CONFIG))
    now = flatten(asdict(cfg))
    changed = sorted(
        k for k in before.keys() | now.keys() if k != "train.resume" and before.get(k) != now.get(k)
    )
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in changed[:5])
        raise ConfigError(
            f"train.resume: the configuration differs from the run in "
            f"{folder.path} ({shown}); resume with the same overrides (textclf "
            "resume <folder>)."
        )
    return folder.run_id()
