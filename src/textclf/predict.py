"""`textclf predict`: classify texts given inline, as a file of lines, or a table column,
with the model `config.ModelChoice` names. Texts become predictions in `inference.Classifier`
alone, which the MLflow model wraps too: this command, the pyfunc and a served endpoint agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from . import data, tracking
from .config import PredictConfig
from .inference import NO_KNOWN_WORD, Classifier, PredictError, as_text
from .run_folder import ensure_writable

log = logging.getLogger(__name__)


def read_texts(text: Any, file: str | None, column: str = "text") -> list[str]:
    """`text` (one or a list), or a file: lines of a text file, or `column` of a CSV/JSONL."""
    if text is not None:
        return [as_text(t) for t in text] if isinstance(text, list | tuple) else [as_text(text)]
    path = Path(str(file)).expanduser()
    if path.is_dir():
        raise PredictError(f"input file {path} is a folder; pass file=<.txt/.csv/.jsonl file>.")
    if not path.is_file():
        raise PredictError(f"input file {path} does not exist.")
    if path.suffix.lower() not in data.TABLE_SUFFIXES:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    table = data.read_table(path, [column], "Set column=<name>.", delimiter_key=None)
    return [as_text(v) for v in table[column]]


def check_out(out: Path) -> None:
    """Prove that `out` can be written before the model loads and the texts are classified:
    its folder is created (as training creates its run folder) and takes a file."""
    try:
        if out.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        ensure_writable(out.parent)
    except OSError as error:
        raise PredictError(
            f"out: cannot write {out} ({error.strerror or error}). Give a .csv or .jsonl path "
            "in a folder you can write, or leave `out` unset to print the table."
        ) from error


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
    uri = cfg.model_uri or tracking.model_uri(
        cfg.tracking.uri, cfg.tracking.experiment, cfg.run_id, cfg.model_name, cfg.model_version
    )
    model = tracking.load_model(cfg.tracking.uri, uri)
    return (lambda texts: model.predict(pd.DataFrame({"text": texts}))), uri


def run(cfg: PredictConfig) -> pd.DataFrame:
    """Read the texts, classify them, and print the table or write it to `cfg.out`."""
    texts = read_texts(cfg.text, cfg.file, cfg.column)
    if not texts:
        raise PredictError(f"{cfg.file} holds no text to classify.")
    if cfg.out:
        check_out(Path(cfg.out).expanduser())
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
    guessed = int((frame[NO_KNOWN_WORD] & frame["error"].isna()).sum())
    if guessed:
        log.warning(
            "%d of %d rows hold no word the model knows (only punctuation or words outside its "
            "vocabulary): their labels are guesses (see the %s column)",
            guessed,
            len(frame),
            NO_KNOWN_WORD,
        )
    return frame
