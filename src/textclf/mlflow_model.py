"""The MLflow model, logged from code: MLflow runs this file to build the pyfunc model.

It loads the run's `model.keras` (Keras safe mode) and `classes.json` through
`inference.Classifier`, so `mlflow.pyfunc.load_model` and `mlflow models serve` answer exactly
as `make predict` does. Nothing is pickled: moving the code never breaks a logged model.
Input: a DataFrame with a `text` column. Output: `label`, one `prob_<class>` per class and
`error` (set, with no label, for an empty text).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextClassifierModel(PythonModel):
    def load_context(self, context) -> None:
        from textclf.inference import Classifier

        self.classifier = Classifier.from_files(
            context.artifacts["keras"], context.artifacts["classes"]
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "text" not in model_input.columns:
            raise ValueError(f"expected a `text` column, got {list(model_input.columns)}")
        return self.classifier.predict(model_input["text"].tolist())


mlflow.models.set_model(TextClassifierModel())
