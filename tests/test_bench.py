"""`make bench --quick`: the CI smoke test of the benchmark. Numbers are never asserted."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from textclf.config import STRATEGIES

from .conftest import reviews, textclf_here, write_csv


def test_training_flops_are_counted_from_the_gate_shapes():
    from textclf.models.lstm import LstmConfig
    from textclf.studies.bench import training_flops_per_step

    # forward: 4 gates × 64 units × (128 inputs + 64 recurrent) multiply-adds; backward 2×
    one_way = LstmConfig(embedding_dim=128, units=64, bidirectional=False)
    assert training_flops_per_step(one_way) == 3 * 2 * 4 * 64 * (128 + 64)
    both = LstmConfig(embedding_dim=128, units=64, bidirectional=True)
    assert training_flops_per_step(both) == 2 * training_flops_per_step(one_way)


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_bench_writes_every_measurement_and_logs_it(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", reviews(400))
    out = tmp_path / "bench"
    done = textclf_here(
        "bench",
        "--quick",
        "data=csv",
        f"data.path={data}",
        f"bench.out_dir={out}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "model.units=8",
        "model.embedding_dim=16",
        "tokenize.vocab_size=200",
        "bench.fixed_length=40",
        "batching.num_buckets=2",  # buckets of many reviews: the budget widens their batches
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((out / "latest.json").read_text())
    assert set(report["strategies"]) == {*STRATEGIES, "bucket-budget", "pooled-budget"}
    # every strategy at the same rows per batch; the token budget is timed as its own lever
    rows = report["config"]["train_reviews"] / report["config"]["batch_size"]
    by_name = report["strategies"]
    assert all(by_name[name]["batches_per_epoch"] >= rows for name in STRATEGIES)
    for name in ("bucket", "pooled"):
        assert by_name[f"{name}-budget"]["batches_per_epoch"] < by_name[name]["batches_per_epoch"]
    assert "the budget's own gain" in done.stdout
    for name, result in report["strategies"].items():
        for key in ("reviews_per_s", "real_tokens_per_s", "pipeline_reviews_per_s", "peak_rss_mb"):
            assert result[key] > 0, (name, key)
        assert result["model_gflops"] > 0 and result["utilisation"] > 0
        assert 0 < result["padding_efficiency"] <= 1
        assert result["reviews_per_epoch"] == report["config"]["train_reviews"]
    fixed, per_batch = (report["strategies"][n]["reviews_per_s"] for n in ("fixed", "per_batch"))
    for result in report["strategies"].values():
        assert result["ratio_to_fixed"] == pytest.approx(result["reviews_per_s"] / fixed)
        assert result["ratio_to_per_batch"] == pytest.approx(result["reviews_per_s"] / per_batch)
    assert (
        report["strategies"]["exact"]["padding_efficiency"]
        > (report["strategies"]["per_batch"]["padding_efficiency"])
    )
    assert report["config"]["default"] == "pooled-budget"
    assert report["config"]["fixed_length"] == 40 and "pads to 40 tokens" in done.stdout
    assert set(report["step_cost"]) == {"64x256", "128x256", "256x256", "64x64"}
    inference = report["inference"]
    assert inference["batch_reviews_per_s"] > 0 and inference["unsorted_reviews_per_s"] > 0
    assert report["matmul_gflops"] > 0 and "utilisation" in (out / "latest.md").read_text()
    assert inference["latency_p50_ms"] > 0
    # the configured model.serve_lstm (fused) beside the trained layer, same saved weights
    assert set(report["inference_by_serve_lstm"]) == {"fused", "trained"}
    assert report["inference_by_serve_lstm"]["fused"] == inference
    assert report["inference_by_serve_lstm"]["trained"]["latency_p50_ms"] > 0
    table = (out / "latest.md").read_text()
    assert "| per_batch |" in table and "× fixed" in table and table in done.stdout
    assert "- `fused`: " in table and "- `trained`: " in table

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["bucket_padding_efficiency"] == pytest.approx(
        report["strategies"]["bucket"]["padding_efficiency"]
    )
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"latest.json", "latest.md"}
