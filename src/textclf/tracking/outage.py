"""Surviving a tracking server that goes away: a run's epoch metrics are kept while it is
unreachable and sent once it answers again; a trained run whose final logging fails is saved
in its folder for `textclf log-model` (`tracking.models.log_run_folder`). MLflow's client
retries each request for about 4 minutes first, which bridges a restart (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from ..run_folder import RunFolder

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message holds its URI."""


def first_line(error: BaseException) -> str:
    """The start of an error's message, for ours: MLflow's can run to a page."""
    return (str(error).strip().splitlines() or [""])[0][:300]


def server_problem(uri: str) -> str | None:
    """None when the tracking server at `uri` answers /health (never behind a login), else why
    not; always None for a local store."""
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status}"
    except OSError as error:
        return str(getattr(error, "reason", error))


class Unreachable(TrackingError):
    """The tracking server stayed away longer than MLflow's HTTP retries wait."""


def is_unreachable(error: BaseException) -> bool:
    """MLflow wraps a connection that failed after all its retries (refused, timed out, or
    503s from a proxy) in an MlflowException whose context is the `requests` error."""
    import requests

    lost = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
    )
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, lost):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class KeepsMetrics:
    """A run's epoch metrics kept in `pending` while its server is away (see `tracking.Run`)."""

    client: Any
    run_id: str
    pending: list[Metric]

    def _send(self, items: list[Metric]) -> None:
        # Sending a metric twice is harmless: the store drops an exact duplicate (same key,
        # value, step and timestamp), so a batch cut short by a lost server can be resent whole.
        self.client.log_batch(self.run_id, metrics=items)

    def flush(self) -> None:
        """Send the epoch metrics kept while the server was away (with MLflow's retries)."""
        if self.pending:
            self._send(self.pending)
            log.info("sent %d metrics kept while the tracking server was away", len(self.pending))
            self.pending = []

    @contextlib.contextmanager
    def or_later(self, folder: Path) -> Iterator[None]:
        """The final logging of a trained run whose results are saved in `folder`: should the
        server be unreachable, the kept epoch metrics go to `folder` and one `Unreachable`
        error says how to log the folder once the server is back."""
        try:
            self.flush()
            yield
        except Exception as error:
            if not is_unreachable(error):
                raise
            (folder / RunFolder.PENDING).write_text(
                json.dumps([m.to_dictionary() for m in self.pending])
            )
            reason = server_problem(self.client.tracking_uri) or str(error).splitlines()[0][:200]
            raise Unreachable(
                f"the MLflow tracking server {self.client.tracking_uri} is unreachable "
                f"({reason}). Training finished; the model and metrics are saved in {folder}. "
                f"Once the server is back, log them to run {self.run_id}: "
                f"textclf log-model {folder}"
            ) from None

    def log_epoch(self, epoch: int, logs: dict | None) -> None:
        """Keras epoch logs (loss, accuracy, val_*) at step = epoch number from 1; kept for
        later, and training goes on, while the tracking server is unreachable."""
        items = [
            Metric(k, float(v), now_ms(), epoch + 1)
            for k, v in (logs or {}).items()
            if _is_number(v)
        ]
        if self.pending and server_problem(self.client.tracking_uri):
            self.pending += items  # still away: no second wait for MLflow's retries
            return
        try:
            self._send(self.pending + items)
        except Exception as error:
            if not is_unreachable(error):
                raise
            if not self.pending:
                log.warning(
                    "the MLflow tracking server %s is unreachable: training goes on, "
                    "epoch metrics are kept and sent once it is back",
                    self.client.tracking_uri,
                )
            self.pending += items
            return
        if self.pending:
            log.info("the tracking server is back: sent %d kept metrics", len(self.pending))
        self.pending = []


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def now_ms() -> int:
    return int(time.time() * 1000)
