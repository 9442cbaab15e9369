"""`make compare` reads one row per variant back from MLflow and writes the table and figures."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from textclf import compare, tracking

VARIANTS = [("fixed", "post", "mask_zero", 0.85, 300.0, 0.45),
            ("bucket", "post", "mask_zero", 0.87, 900.0, 0.97),
            ("bucket", "post", "mask_zero", 0.89, 1100.0, 0.97),
            ("per_batch", "pre", "none", 0.70, 250.0, 0.27)]


def fill(uri: str, experiment: str = "compare_padding") -> str:
    """A finished sweep (parent + children), plus a failed child that must not count."""
    parent = tracking.create_run(uri, experiment, "sweep x", {"sweep_dir": "/tmp/x"})
    for batching, side, masking, acc, speed, eff in VARIANTS:
        with tracking.start_run(uri, experiment, tags={"batching": batching, "padding_side": side,
                                                       "masking": masking},
                                parent_run_id=parent) as run:
            run.log_metrics({"test_accuracy": acc, "test_f1": acc, "train_reviews_per_s": speed,
                             "padding_efficiency": eff, "test_accuracy_len_1-128": acc,
                             "test_accuracy_len_129-inf": acc - 0.1})
    with pytest.raises(RuntimeError):
        with tracking.start_run(uri, experiment, tags={"batching": "exact", "padding_side": "post",
                                                       "masking": "none"}, parent_run_id=parent):
            raise RuntimeError("diverged")
    tracking.finish(uri, parent)
    return parent


def test_one_row_per_variant_from_the_latest_sweep(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = fill(uri)
    summary = compare.main(uri, "compare_padding", "latest", tmp_path / "out")
    assert len(summary) == 3  # two bucket runs averaged; the failed run left out
    best = summary.iloc[0]
    assert (best.batching, best.runs, best.test_accuracy) == ("bucket", 2, pytest.approx(0.88))
    printed = capsys.readouterr().out
    assert "| bucket | post | mask_zero | 0.880 |" in printed and "exact" not in printed
    for name in ("comparison.md", "comparison.csv", "comparison.png", "accuracy_by_length.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "comparison")}
    assert "comparison/comparison.png" in logged


def test_nothing_to_compare_is_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(compare.CompareError, match="no runs"):
        compare.main(uri, "compare_padding", "latest", tmp_path / "out")
