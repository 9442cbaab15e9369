"""Classify new texts with a trained model: given inline, as a file of lines, or a table column.

The model is the newest finished run's, a run id's, a registered model version's (all through
`tracking`, the only module that talks to MLflow) or a `model.keras` file. `Classifier` is the
one place texts become predictions; the MLflow pyfunc model wraps it too, so this command, the
pyfunc and a served endpoint give the same answers. Texts are cleaned as training data was
(`data.clean`), and the model's own vectorizer truncates them to the training `max_length`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data, tracking
from .config import PredictConfig

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"  # written by `pipeline.run` beside model.keras
EMPTY = "empty text: nothing to classify"


class PredictError(ValueError):
    """Input, output or model file that cannot be used; the message names it and the fix."""


def load_keras(path: str | Path):
    """The end-to-end model, loaded with Keras `safe_mode` on (no arbitrary code runs)."""
    import keras

    from . import pipeline  # noqa: F401  registers the custom layers the saved model uses

    path = Path(path).expanduser()
    if not path.is_file():
        raise PredictError(f"model file {path} does not exist; pass the model.keras of a run.")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file that is not its format
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise PredictError(
            f"{path} is not a Keras model textclf can load ({type(error).__name__}: {reason}). "
            "Pass the model.keras a training run saved."
        ) from error
    if len(model.inputs) != 1 or model.inputs[0].dtype != "string":
        raise PredictError(f"{path} does not take raw text; pass the model.keras of a textclf run.")
    return model


def class_count(model) -> int:
    """A sigmoid head (one output) separates two classes."""
    width = int(model.output_shape[-1])
    return 2 if width == 1 else width


class Classifier:
    """A loaded text model and its class names: texts → label, prob_<class>, error."""

    def __init__(self, model, classes: Sequence[str], batch_size: int = 64):
        if len(classes) != class_count(model):
            raise PredictError(
                f"the model predicts {class_count(model)} classes but {len(classes)} class "
                f"names were given ({list(classes)})."
            )
        self.model, self.classes, self.batch_size = model, [str(c) for c in classes], batch_size
        import tensorflow as tf

        # One traced graph for every batch (model.predict re-plans each call: ~10 ms per review).
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_files(
        cls, keras_path: str | Path, classes_path: str | Path | None = None, batch_size: int = 64
    ) -> Classifier:
        """Class names from `classes_path`, else the run folder's classes.json, else indices."""
        model = load_keras(keras_path)
        path = Path(classes_path) if classes_path else Path(keras_path).with_name(CLASSES_FILE)
        if path.is_file():
            classes = json.loads(path.read_text(encoding="utf-8"))
        else:
            classes = [str(i) for i in range(class_count(model))]
            log.warning("no %s beside %s: labels are class indices", CLASSES_FILE, keras_path)
        return cls(model, classes, batch_size)

    def predict(self, texts: Sequence[Any]) -> pd.DataFrame:
        """One row per text; an empty text gets an `error` instead of failing the batch."""
        import tensorflow as tf

        from .evaluate import as_class_probabilities

        cleaned = [data.clean(_as_text(t)) for t in texts]
        ok = np.array([bool(t) for t in cleaned], dtype=bool)
        probabilities = np.full((len(cleaned), len(self.classes)), np.nan)
        if ok.any():
            kept = [t for t, keep in zip(cleaned, ok, strict=True) if keep]
            # Similar lengths share a batch, so little padding is computed; order is restored.
            order = np.argsort([len(t) for t in kept], kind="stable")
            outputs = np.empty((len(kept), len(self.classes)))
            for start in range(0, len(kept), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._call(tf.constant([kept[i] for i in rows]))
                outputs[rows] = as_class_probabilities(batch.numpy())
            probabilities[ok] = outputs
        best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
        frame = pd.DataFrame(
            {"label": [self.classes[i] if keep else None for i, keep in zip(best, ok, strict=True)]}
        )
        for i, name in enumerate(self.classes):
            frame[f"prob_{name}"] = probabilities[:, i]
        frame["error"] = [None if keep else EMPTY for keep in ok]
        return frame


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def read_texts(text: Any, file: str | None, column: str = "text") -> list[str]:
    """`text` (one or a list), or a file: lines of a text file, or `column` of a CSV/JSONL."""
    if text is not None:
        return [_as_text(t) for t in text] if isinstance(text, list | tuple) else [_as_text(text)]
    path = Path(str(file)).expanduser()
    if not path.is_file():
        raise PredictError(f"input file {path} does not exist.")
    if path.suffix.lower() not in data.TABLE_SUFFIXES:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    frame = data.read_table(path, [column], "Set column=<name>.")
    return [_as_text(v) for v in frame[column].tolist()]


def write(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_json(out, orient="records", lines=True, force_ascii=False)


def show(frame: pd.DataFrame, width: int = 60) -> str:
    """The table for a terminal: long texts shortened, probabilities to 4 decimals."""
    shown = frame.copy()
    shown["text"] = [t if len(t) <= width else t[: width - 1] + "…" for t in shown["text"]]
    for column in ("text", "label", "error"):  # left-aligned: pad to one width
        values = shown[column].fillna("").astype(str)
        shown[column] = values.str.ljust(max(values.str.len().max(), len(column)))
    return shown.to_string(
        index=False, na_rep="", float_format=lambda v: f"{v:.4f}", justify="left"
    )


def model_source(cfg: PredictConfig) -> tuple[Callable[[list[str]], pd.DataFrame], str]:
    """The predictor the config names, and where it came from (for the log)."""
    if cfg.model_path:
        classifier = Classifier.from_files(cfg.model_path, batch_size=cfg.batch_size)
        return classifier.predict, str(Path(cfg.model_path).expanduser())
    uri = tracking.model_uri(
        cfg.tracking.uri, cfg.tracking.experiment, cfg.run_id, cfg.model_name, cfg.model_version
    )
    model = tracking.load_model(cfg.tracking.uri, uri)
    return (lambda texts: model.predict(pd.DataFrame({"text": texts}))), uri


def run(cfg: PredictConfig) -> pd.DataFrame:
    """Read the texts, classify them, and print the table or write it to `cfg.out`."""
    texts = read_texts(cfg.text, cfg.file, cfg.column)
    if not texts:
        raise PredictError(f"{cfg.file} holds no text to classify.")
    predict, source = model_source(cfg)
    log.info("model: %s", source)
    frame = pd.concat([pd.DataFrame({"text": texts}), predict(texts)], axis=1)
    errors = int(frame["error"].notna().sum())
    if cfg.out:
        write(frame, Path(cfg.out).expanduser())
        log.info("wrote %d predictions (%d row errors) to %s", len(frame), errors, cfg.out)
    else:
        print(show(frame))
    if errors:
        log.warning("%d of %d rows were not classified (see the error column)", errors, len(frame))
    return frame
