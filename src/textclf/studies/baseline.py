"""`textclf baseline`: the reference every comparison is read against, TF-IDF n-grams and a
logistic regression (scikit-learn), logged as one MLflow run beside the trained ones.

It sees what a training run with the same `data.*` and `tokenize.*` sees, so that a difference
in score is the model's alone:
- the same rows: `data.load` (same split, same `data.seed`), less the rows a run drops because
  its tokenizer (vocabulary adapted on train) leaves them no token;
- the same choices: C is picked on the validation split, as a run picks its epoch there, and
  the model of that C, fitted on the training split alone, scores the test split. There is no
  refit on train+val: the Keras models never learn from validation rows either;
- the same metrics: `evaluate.score` under the training names, each test review's length
  counted by the run's tokenizer (cut at tokenize.max_length), so accuracy by length buckets
  the same reviews. The reference itself reads whole texts.
It logs the three splits as a training run's datasets (same digests on the same data), so
`make compare` can check it saw the runs' rows. It is a yardstick, not a served model: no
pyfunc model is logged (`make predict` and `make evaluate` look for runs with one), and tags
`model=reference`, `reference=true` let `make compare` show it as its own variant.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from .. import data, evaluate, tokenize, tracking
from ..config import TokenizeConfig, flatten
from ..models import bow
from ..run_folder import RunFolder
from .config import BaselineConfig

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
REFERENCE = "reference"  # the run's `model` tag and name; tag `reference=true` marks it


def same_rows(
    dataset: data.Dataset, cfg: TokenizeConfig
) -> tuple[dict[str, data.Split], np.ndarray, dict[str, int]]:
    """Each split less the rows a training run drops (no token after its tokenizer), the test
    reviews' token counts as that run counts them, and how many rows were dropped."""
    vectorizer = tokenize.adapt(dataset.train.texts, cfg)
    splits, counts, lengths = {}, {}, {}
    for name in SPLITS:
        part: data.Split = getattr(dataset, name)
        encoded, keep = tokenize.drop_empty(
            tokenize.encode(vectorizer, part.texts, part.labels, cfg.max_length)
        )
        if not keep.any():
            raise data.DataError(f"no {name} review has a token left after tokenization.")
        splits[name] = data.Split(
            [t for t, k in zip(part.texts, keep, strict=True) if k], part.labels[keep]
        )
        counts[f"no_tokens_dropped_{name}"] = int((~keep).sum())
        lengths[name] = encoded.lengths
    return splits, lengths["test"], counts


def choose_c(
    train: data.Split, val: data.Split, cfg: BaselineConfig
) -> tuple[TfidfVectorizer, LogisticRegression, dict[float, float]]:
    """The vectorizer (fitted on train) and the model of the C with the best validation
    accuracy (ties: the smaller C), with every C's validation accuracy."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train, x_val = vectorizer.fit_transform(train.texts), vectorizer.transform(val.texts)
    model, history, _, _ = bow.solve(
        x_train,
        train.labels,
        x_val,
        val.labels,
        cfg.C_grid,
        cfg.max_iter,
        lambda i, c, logs: log.info("C=%g: validation accuracy %.4f", c, logs["val_accuracy"]),
    )
    return vectorizer, model, dict(zip(sorted(cfg.C_grid), history["val_accuracy"], strict=True))


def run(cfg: BaselineConfig, tags: dict[str, str] | None = None) -> dict[str, float]:
    """Fit, choose C, score the test split, log one run; returns its metrics. The run is opened
    at the end, once there is something to log, and dated from the start."""
    begun_ms = int(time.time() * 1000)
    dataset = data.load(cfg.data)
    splits, lengths, counts = same_rows(dataset, cfg.tokenize)
    started = time.perf_counter()
    vectorizer, model, val_accuracy = choose_c(splits["train"], splits["val"], cfg)
    seconds = time.perf_counter() - started
    test = splits["test"]
    probabilities = np.zeros((len(test), len(dataset.class_names)))
    # a class missing from the training split has no column: its probability stays 0
    probabilities[:, model.classes_] = model.predict_proba(vectorizer.transform(test.texts))
    predictions = evaluate.Predictions(test.labels.astype(np.int64), probabilities, lengths)
    metrics = evaluate.score(predictions, dataset.class_names, cfg.evaluate.length_edges)
    metrics |= {f"val_accuracy_C_{c:g}": acc for c, acc in val_accuracy.items()}
    metrics |= {
        "best_val_accuracy": val_accuracy[model.C],
        "n_features": len(vectorizer.vocabulary_),
        "fit_seconds": seconds,
    }
    log.info("reference: C=%g, test accuracy %.4f", model.C, metrics["test_accuracy"])

    out = RunFolder(Path(cfg.output_dir))
    artifacts = [out.write_json(RunFolder.METRICS, metrics)]
    if cfg.evaluate.plots:
        artifacts.extend(evaluate.plot_test(predictions, dataset.class_names, out.plots))
    tags = {
        **(tags or {}),
        "model": REFERENCE,
        REFERENCE: "true",
        "data": cfg.data.source,
        "output_dir": cfg.output_dir,
    }
    with tracking.start_run(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        cfg.tracking.run_name or REFERENCE,
        tags,
        start_time=begun_ms,
    ) as mlrun:
        mlrun.log_datasets(data.lineage(dataset, cfg.data))  # as a training run's
        counted = {f"data_{k}": v for k, v in (dataset.stats | counts).items()}  # as a run's
        mlrun.log_params(flatten(asdict(cfg)) | {"C": f"{model.C:g}"} | counted)
        mlrun.log_metrics(metrics)
        for path in artifacts:
            mlrun.log_artifact(path, RunFolder.PLOTS if path.parent == out.plots else None)
    return metrics
