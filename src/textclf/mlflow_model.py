"""The MLflow model, logged from code: MLflow runs this file to build the pyfunc model.

It loads the run's `model.keras` (Keras safe mode) and `classes.json` through
`inference.Classifier`, so `mlflow.pyfunc.load_model` and `mlflow models serve` answer exactly
as `make predict` does. Nothing is pickled: moving the code never breaks a logged model.
Input: a DataFrame with a `text` column; output: `Classifier.predict`'s table.

A request it cannot answer raises `MlflowException(INVALID_PARAMETER_VALUE)`, which
`mlflow models serve` returns as HTTP 400 with this message (any other exception gets MLflow's
generic text): no `text` column, no row, a value that is not a string (JSON null is a missing
text), or, when served, more than `MAX_TEXTS` rows.
"""

from __future__ import annotations

import math
import os

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

# Texts per served request: larger requests are refused (split them), so that one request
# cannot hold the server past its timeout (60 s by default) or fill its memory.
MAX_TEXTS = int(os.environ.get("TEXTCLF_SERVE_MAX_TEXTS", "10000"))
_SERVING = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # set to "true" by MLflow's scoring server


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class TextClassifierModel(PythonModel):
    def load_context(self, context) -> None:
        from textclf.inference import Classifier

        self.classifier = Classifier.from_files(
            context.artifacts["keras"], context.artifacts["classes"]
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "text" not in model_input.columns:
            raise _bad(f"expected a `text` column, got {list(model_input.columns)}")
        texts = [None if _missing(t) else t for t in model_input["text"].tolist()]
        if not texts:
            raise _bad("no text to classify: send at least one row in the `text` column")
        if len(texts) > MAX_TEXTS and os.environ.get(_SERVING) == "true":
            raise _bad(
                f"{len(texts)} texts in one request; at most {MAX_TEXTS} are answered "
                "at once: split the request"
            )
        wrong = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
        if wrong:
            value = texts[wrong[0]]
            raise _bad(
                f"`text` must hold strings: row {wrong[0]} holds {type(value).__name__} "
                f"{str(value)[:40]!r} ({len(wrong)} such row(s))"
            )
        return self.classifier.predict(texts)


mlflow.models.set_model(TextClassifierModel())
