"""The two private APIs of Keras and MLflow this code relies on, pinned: an upgrade that
changes either fails here, by name, rather than somewhere downstream."""

from __future__ import annotations

import inspect
import threading

import keras
import numpy as np
import pytest

from textclf.models import fused


def test_keras_lstm_still_runs_its_sequence_through_inner_loop(monkeypatch):
    """`FusedLSTM` overrides `keras.layers.LSTM.inner_loop` (undocumented) to swap in the
    fused kernel: the method must keep its parameters and Keras' call must still reach it."""
    params = list(inspect.signature(keras.layers.LSTM.inner_loop).parameters)
    assert params == ["self", "sequences", "initial_state", "mask", "training"]

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(fused, "_fused_loop", reached)
    layer = fused.FusedLSTM(4)
    with pytest.raises(Reached):
        layer(np.zeros((2, 3, 5), "float32"))


def test_mlflow_system_metrics_monitor_still_has_its_shutdown_event(tmp_path):
    """tracking/runs.py sets `SystemMetricsMonitor._shutdown_event` to stop the sampling thread
    without joining it when the server is unreachable: the attribute must stay an Event that
    the thread watches."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor("0" * 32, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert isinstance(monitor._shutdown_event, threading.Event)
    assert "_shutdown_event" in inspect.getsource(SystemMetricsMonitor.monitor)
