"""Test-set metrics under stable names, accuracy by review length, served scores, and plots.

Predictions come from iterating the test batches built the same way training batches were
(same strategy and padding side, no shuffling), so an unmasked model is judged on the padding
it learned with. The served scores then ask the exported model about single reviews, as a
deployment would, and say how far its answers are from the batched ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

from . import progress
from .inference import class_probabilities


@dataclass
class Predictions:
    labels: np.ndarray  # int class index per review
    probabilities: np.ndarray  # [reviews, classes]
    lengths: np.ndarray  # real tokens per review

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def predict(model: keras.Model, ds: tf.data.Dataset, labels: np.ndarray) -> Predictions:
    """Class probabilities for every batch of `ds`, whose second element is each review's row
    in `labels` (batching may reorder reviews); returned in row order."""
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    rows, outputs, lengths = [], [], []
    for x, row in ds:
        outputs.append(infer(x).numpy())
        rows.append(row.numpy())
        lengths.append(tf.math.count_nonzero(x, axis=1).numpy())
    order = np.argsort(np.concatenate(rows))
    return Predictions(
        np.asarray(labels, dtype=np.int64)[np.concatenate(rows)[order]],
        class_probabilities(np.concatenate(outputs))[order],
        np.concatenate(lengths)[order],
    )


def balanced_sample(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Up to `limit` row numbers, as even across classes as the data allows (all for None),
    drawn with `seed`; sorted."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < limit:  # one per class per round: balanced until a class runs out
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(int(queue.pop()))
    return np.sort(np.asarray(picked))


def served_scores(
    classify: Callable[[list[str]], np.ndarray],
    texts: list[str],
    batched: Predictions,
    limit: int | None,
    seed: int,
) -> dict[str, float]:
    """Ask `classify` (texts → [n, classes] probabilities, as the deployed model answers) about
    a class-balanced sample of `texts`, one text per call, and compare with `batched`. Thousands
    of calls take minutes: a bar shows how far they are (progress.py)."""
    rows = balanced_sample(batched.labels, limit, seed)
    answers = [classify([texts[i]]) for i in progress.bar(rows, desc="served", unit="review")]
    return served(np.concatenate(answers), batched, rows)


def served(probabilities: np.ndarray, batched: Predictions, rows: np.ndarray) -> dict[str, float]:
    """`served_*` metrics: single-review answers (`probabilities`, one row per entry of `rows`)
    against the true labels and against the batched evaluation of the same reviews."""
    labels, before = batched.labels[rows], batched.probabilities[rows]
    answer = probabilities.argmax(axis=1)
    return {
        "served_accuracy": float((answer == labels).mean()),
        "served_agreement": float((answer == before.argmax(axis=1)).mean()),
        "served_max_abs_diff": float(np.abs(probabilities - before).max()),
        "served_reviews": len(rows),
    }


def length_buckets(edges: list[int]) -> list[tuple[int, int | None, str]]:
    """[(low, high, name)] with names like `1-128`, `129-256`, `513-inf` (MLflow-safe)."""
    bounds = [0, *edges]
    buckets = [(lo, hi, f"{lo + 1}-{hi}") for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return [*buckets, (bounds[-1], None, f"{bounds[-1] + 1}-inf")]


def score(pred: Predictions, class_names: list[str], length_edges: list[int]) -> dict[str, float]:
    """Metrics named `test_*`; F1/precision/recall are of the positive class when binary."""
    y, p, yhat = pred.labels, pred.probabilities, pred.predicted
    binary = len(class_names) == 2
    average = "binary" if binary else "macro"
    classes = list(range(len(class_names)))
    out = {
        # float32 softmax rows sum to 1 only within ~1e-7; scikit-learn warns unless renormalised
        "test_loss": float(skm.log_loss(y, p / p.sum(axis=1, keepdims=True), labels=classes)),
        "test_accuracy": float(skm.accuracy_score(y, yhat)),
        "test_precision": float(skm.precision_score(y, yhat, average=average, zero_division=0)),
        "test_recall": float(skm.recall_score(y, yhat, average=average, zero_division=0)),
        "test_f1": float(skm.f1_score(y, yhat, average=average, zero_division=0)),
    }
    if binary and len(np.unique(y)) == 2:
        out["test_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
    for lo, hi, name in length_buckets(length_edges):
        rows = (pred.lengths > lo) & (pred.lengths <= (hi if hi is not None else np.inf))
        if rows.any():
            out[f"test_accuracy_len_{name}"] = float((yhat[rows] == y[rows]).mean())
    return out


def confusion(pred: Predictions, num_classes: int) -> np.ndarray:
    return skm.confusion_matrix(pred.labels, pred.predicted, labels=list(range(num_classes)))


def plot(
    history: dict[str, list[float]],
    pred: Predictions,
    class_names: list[str],
    train_lengths: np.ndarray,
    out_dir: Path,
) -> list[Path]:
    """Learning curves, the test plots (`plot_test`) and length histogram as PNG files in
    `out_dir`."""
    plt = _pyplot(out_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix in ("", "val_"):
            values = history.get(prefix + metric, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=prefix + metric)
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    paths = [save_figure(fig, out_dir / "learning_curves.png")]
    paths.extend(plot_test(pred, class_names, out_dir))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(train_lengths, bins=50)
    ax.set(xlabel="tokens per review", ylabel="training reviews", title="review lengths")
    return [*paths, save_figure(fig, out_dir / "length_histogram.png")]


def plot_test(pred: Predictions, class_names: list[str], out_dir: Path) -> list[Path]:
    """The test plots every kind of run logs: the confusion matrix, then `plot_curves`."""
    plt = _pyplot(out_dir)
    fig, ax = plt.subplots(figsize=(4 + len(class_names) * 0.4,) * 2)
    shown = skm.ConfusionMatrixDisplay(
        confusion(pred, len(class_names)), display_labels=class_names
    )
    shown.plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    matrix = save_figure(fig, out_dir / "confusion_matrix.png")
    return [matrix, *plot_curves(pred, class_names, out_dir)]


def plot_curves(pred: Predictions, class_names: list[str], out_dir: Path) -> list[Path]:
    """ROC and precision-recall curves of the positive class (the second) when binary, and a
    calibration curve: of that class's probability when binary, of the top label's otherwise
    (is a 0.8 confidence right 80% of the time?). The confusion matrix shows one threshold;
    these show every one. A curve needs both outcomes in the test labels: else it is skipped."""
    from sklearn.calibration import CalibrationDisplay

    _pyplot(out_dir)
    binary = len(class_names) == 2
    if binary:  # named outcomes: the displays' axes then say "(Positive label: <class>)"
        truth, score = np.asarray(class_names)[pred.labels], pred.probabilities[:, 1]
        positive = class_names[1]
    else:
        truth = np.where(pred.labels == pred.predicted, "top label right", "top label wrong")
        score, positive = pred.probabilities.max(axis=1), "top label right"
    if len(np.unique(truth)) < 2:
        return []
    paths = []
    if binary:
        for display, name, title in (
            (skm.RocCurveDisplay, "roc_curve", "ROC curve"),
            (skm.PrecisionRecallDisplay, "precision_recall_curve", "precision-recall curve"),
        ):
            shown = display.from_predictions(
                truth, score, pos_label=positive, name="model", plot_chance_level=True
            )
            shown.ax_.set(title=f"test {title}, positive class {positive}")
            paths.append(save_figure(shown.figure_, out_dir / f"{name}.png"))
    shown = CalibrationDisplay.from_predictions(
        truth, score, n_bins=10, pos_label=positive, name="model"
    )
    shown.ax_.set(title=f"test calibration curve, P({positive})")
    return [*paths, save_figure(shown.figure_, out_dir / "calibration_curve.png")]


def _pyplot(out_dir: Path):
    """matplotlib's pyplot on the file-only Agg backend, `out_dir` made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure and free it (figures pile up in long sweeps otherwise)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
