"""Inference: the exported end-to-end model (raw strings in), loading it safely, and the
`Classifier` through which `make predict`, `make bench`, the served-accuracy check and the
MLflow model all classify, so they answer alike. Importing this module registers every custom
layer a saved model uses, and nothing of the training stack or MLflow.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from . import (
    batching,
    data,
    models,  # noqa: F401  (registers the custom layers saved models use)
    tokenize,
)
from .config import BatchingConfig, TokenizeConfig
from .run_folder import RunFolder

log = logging.getLogger(__name__)

EMPTY = "empty text: nothing to classify"
# True where the model reads no word it knows (punctuation only, or out-of-vocabulary words
# only): the row is classified, but its label is a guess; empty texts are flagged too.
NO_KNOWN_WORD = "no_known_word"
OOV_ID = 1  # TextVectorization's id for a word outside the vocabulary (0 is padding)


class PredictError(ValueError):
    """Input, output or model file that cannot be used; the message names it and the fix."""


def export(
    vectorizer: keras.layers.TextVectorization,
    tokenize_cfg: TokenizeConfig,
    classifier: keras.Model,
    spec: BatchingConfig,
) -> keras.Model:
    """Raw strings → class probabilities: the vectorizer, the padding of the batches `spec`
    makes and the classifier in one model."""
    text = keras.Input(shape=(), dtype="string", name="text")
    ids = tokenize.inference_vectorizer(vectorizer, tokenize_cfg)(text)
    ids = batching.repad(spec)(ids)
    return keras.Model(text, classifier(ids), name="text_classifier")


def save(
    exported: keras.Model, class_names: Sequence[str], model_path: Path, classes_path: Path
) -> Path:
    """The model and its class names, in output order; returns the model's path."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    exported.save(model_path)
    classes_path.write_text(json.dumps(list(class_names)))
    return model_path


def class_count(net: keras.Model) -> int:
    """A sigmoid head (one output) separates two classes."""
    width = int(net.output_shape[-1])
    return 2 if width == 1 else width


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A sigmoid head's [n, 1] output → [n, 2]; a softmax head's output is returned as is."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        positive = outputs.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    return outputs


def load_keras(path: str | Path) -> keras.Model:
    """The end-to-end model, loaded with Keras `safe_mode` on (no arbitrary code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PredictError(f"model file {path} does not exist; pass the model.keras of a run.")
    try:
        net = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file that is not its format
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise PredictError(
            f"{path} is not a Keras model textclf can load ({type(error).__name__}: {reason}). "
            "Pass the model.keras a training run saved."
        ) from error
    if len(net.inputs) != 1 or net.inputs[0].dtype != "string":
        raise PredictError(f"{path} does not take raw text; pass the model.keras of a textclf run.")
    return net


class Classifier:
    """A loaded text model and its class names: texts → label, prob_<class>, error."""

    def __init__(
        self,
        net: keras.Model,
        classes: Sequence[str],
        batch_size: int = 64,
        token_budget: int = 32000,
    ):
        if len(classes) != class_count(net):
            raise PredictError(
                f"the model predicts {class_count(net)} classes but {len(classes)} class "
                f"names were given ({list(classes)})."
            )
        self.model, self.classes = net, [str(c) for c in classes]
        # A batch holds at least batch_size texts, more while rows × longest ≤ token_budget.
        self.batch_size, self.token_budget = batch_size, token_budget
        # The exported model's parts (see `export`): text → ids, then ids → probabilities.
        vectorizer = next(
            layer for layer in net.layers if isinstance(layer, keras.layers.TextVectorization)
        )
        repad, classifier = net.get_layer("repad"), net.layers[-1]
        # One traced graph per part for every batch (model.predict re-plans each call).
        self._call = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
        self._ids = tf.function(vectorizer, reduce_retracing=True)
        self._classify = tf.function(
            lambda ids: classifier(repad(ids), training=False), reduce_retracing=True
        )

    @classmethod
    def from_files(
        cls, keras_path: str | Path, classes_path: str | Path | None = None, **options: int
    ) -> Classifier:
        """Class names from `classes_path`, else the run folder's classes.json, else indices."""
        net = load_keras(keras_path)
        path = Path(classes_path) if classes_path else Path(keras_path).with_name(RunFolder.CLASSES)
        if path.is_file():
            classes = json.loads(path.read_text(encoding="utf-8"))
        else:
            classes = [str(i) for i in range(class_count(net))]
            log.warning("no %s beside %s: labels are class indices", RunFolder.CLASSES, keras_path)
        return cls(net, classes, **options)

    def probabilities(self, texts: Sequence[str], ids: np.ndarray | None = None) -> np.ndarray:
        """[n, classes] for cleaned, non-empty texts, in the caller's order (`ids`: their
        `token_ids`, when the caller has them already).

        One text goes through the whole model in one call. Several are vectorized first, sorted
        by token count and classified in batches of similar length (short texts in wide
        batches, up to `token_budget` tokens), so next to no padding is computed.
        """
        if len(texts) == 1:
            return class_probabilities(self._call(tf.constant(list(texts))).numpy())
        ids = self.token_ids(texts) if ids is None else ids
        lengths = np.count_nonzero(ids, axis=1)
        order = np.argsort(lengths, kind="stable")
        outputs = np.empty((len(texts), len(self.classes)))
        for start, stop in batching.length_batches(
            lengths[order], self.batch_size, self.token_budget
        ):
            rows = order[start:stop]
            width = max(int(lengths[rows].max()), 1)
            outputs[rows] = class_probabilities(self._classify(ids[rows, :width]).numpy())
        return outputs

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """[n, longest] token ids as the model reads them (truncated, padding after)."""
        chunks = [
            self._ids(tf.constant(list(texts[i : i + 1024]))).numpy()
            for i in range(0, len(texts), 1024)
        ]
        width = max((c.shape[1] for c in chunks), default=1)
        return (
            np.concatenate([np.pad(c, ((0, 0), (0, width - c.shape[1]))) for c in chunks])
            if chunks
            else np.zeros((0, 1), np.int64)
        )

    def class_probabilities(self, texts: Sequence[Any]) -> np.ndarray:
        """[n, classes] through `predict` (the served path: cleaning included); NaN rows for
        empty texts."""
        return self.predict(texts).filter(like="prob_").to_numpy(dtype=np.float64)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text as the model reads them (after its truncation)."""
        return np.count_nonzero(self.token_ids(texts), axis=1)

    def predict(self, texts: Sequence[Any]) -> pd.DataFrame:
        """One row per text; an empty text gets an `error` instead of failing the batch, and a
        text with no word the model knows is classified and flagged (`NO_KNOWN_WORD`)."""
        cleaned = [data.clean(as_text(t)) for t in texts]
        ok = np.array([bool(t) for t in cleaned], dtype=bool)
        probabilities = np.full((len(cleaned), len(self.classes)), np.nan)
        unknown = np.ones(len(cleaned), dtype=bool)
        if ok.any():
            kept = [t for t, keep in zip(cleaned, ok, strict=True) if keep]
            ids = self.token_ids(kept)
            probabilities[ok] = self.probabilities(kept, ids)
            unknown[ok] = no_known_word(ids)
        best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
        frame = pd.DataFrame(
            {"label": [self.classes[i] if keep else None for i, keep in zip(best, ok, strict=True)]}
        )
        for i, name in enumerate(self.classes):
            frame[f"prob_{name}"] = probabilities[:, i]
        frame["error"] = [None if keep else EMPTY for keep in ok]
        frame[NO_KNOWN_WORD] = unknown
        return frame


def no_known_word(ids: np.ndarray) -> np.ndarray:
    """Per row of `token_ids`: True when the model reads no word of its vocabulary."""
    return ~np.any(ids > OOV_ID, axis=1)


def as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
