"""`textclf evaluate`: score a saved model on labelled data, as an MLflow run in
`evaluate_experiment`. The model is chosen as `make predict` chooses it and loaded as it is
served (`inference.Classifier`); the data come from any source through `data.load`, logged
as the run's datasets (context `evaluation`); the metrics keep the training names.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from . import data, evaluate, inference, tracking
from .config import EvaluateModelConfig
from .run_folder import RunFolder

log = logging.getLogger(__name__)


def load_classifier(cfg: EvaluateModelConfig, folder: Path) -> tuple[inference.Classifier, dict]:
    """The chosen model, and tags saying where it came from."""
    if cfg.model_path:
        path = Path(cfg.model_path).expanduser()
        return inference.Classifier.from_files(path, batch_size=cfg.batch_size), {
            "model_path": str(path)
        }
    uri = cfg.model_uri or tracking.model_uri(
        cfg.tracking.uri, cfg.tracking.experiment, cfg.run_id, cfg.model_name, cfg.model_version
    )
    keras_path, classes_path, run_id = tracking.model_files(cfg.tracking.uri, uri, folder)
    classifier = inference.Classifier.from_files(
        keras_path, classes_path, batch_size=cfg.batch_size
    )
    return classifier, {"model_uri": uri, "source_run_id": run_id or ""}


def labelled_texts(
    cfg: EvaluateModelConfig, classes: list[str]
) -> tuple[list[str], np.ndarray, list[data.Lineage]]:
    """The texts to score, their labels as indices into the model's `classes`, and the splits
    they came from."""
    dataset = data.load(cfg.data)
    names = ["test"] if cfg.split == "test" else ["train", "val", "test"]
    parts = [getattr(dataset, name) for name in names]
    unknown = sorted(set(dataset.class_names) - set(classes))
    if unknown:
        raise data.DataError(
            f"the data's labels {unknown} are not classes of the model "
            f"({classes}); evaluate it on data with its labels."
        )
    index = np.array([classes.index(name) for name in dataset.class_names])
    texts = [t for part in parts for t in part.texts]
    return (
        texts,
        np.concatenate([index[part.labels] for part in parts]),
        data.lineage(dataset, cfg.data, names),
    )


def unknown_only(ids: np.ndarray) -> int:
    """Scored texts with no word the model knows (labelled by a guess), counted and said."""
    count = int(inference.no_known_word(ids).sum())
    if count:
        log.warning(
            "%d of %d texts hold no word the model knows (only punctuation or words outside "
            "its vocabulary): their labels are guesses (test_no_known_word)",
            count,
            len(ids),
        )
    return count


def run(cfg: EvaluateModelConfig) -> dict[str, float]:
    out = Path(cfg.output_dir)
    RunFolder(out).prepare()  # a folder that cannot take the metrics fails before scoring
    with tempfile.TemporaryDirectory() as folder:
        classifier, source = load_classifier(cfg, Path(folder))
        texts, labels, splits = labelled_texts(cfg, classifier.classes)
        log.info("scoring %d reviews (%s split of data=%s)", len(texts), cfg.split, cfg.data.source)
        ids = classifier.token_ids(texts)
        batched = evaluate.Predictions(
            labels, classifier.probabilities(texts, ids), np.count_nonzero(ids, axis=1)
        )
        metrics = evaluate.score(batched, classifier.classes, cfg.evaluate.length_edges)
        metrics["test_no_known_word"] = unknown_only(ids)
        metrics |= evaluate.served_scores(
            classifier.class_probabilities, texts, batched, cfg.evaluate.served_limit, cfg.data.seed
        )
    artifacts = [RunFolder(out).write_json(RunFolder.METRICS, metrics)]
    if cfg.evaluate.plots:
        artifacts.extend(evaluate.plot_test(batched, classifier.classes, out / "plots"))
    tags = {
        **tracking.source_tags("textclf evaluate"),
        **source,
        "data": cfg.data.source,
        "data_path": cfg.data.location() or "",
        "split": cfg.split,
        "output_dir": str(out),
    }
    with tracking.start_run(
        cfg.tracking.uri,
        cfg.evaluate_experiment,
        f"evaluate {cfg.data.source}",
        tags,
        training=False,
    ) as mlrun:
        mlrun.log_datasets(splits, context="evaluation")
        mlrun.log_metrics(metrics)
        for path in artifacts:
            mlrun.log_artifact(path, "plots" if path.parent.name == "plots" else None)
    log.info("metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics
