"""`make bench`: the batching strategies side by side on this machine, in one run.

Same model and data for every strategy; strategies take turns (in rotated order, repeated)
so machine drift hits them all alike; medians are reported. Throughput is per epoch: the
epoch's batch count times the mean step time on a size-stratified sample of its batches. Also:
the input pipeline alone, the cost of one step per batch shape, inference from raw strings
with the exported model, and peak memory per measurement.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .. import batching, data, inference, models, pipeline, tracking, train
from ..config import BatchingConfig, Config, ConfigError
from ..models.lstm import LstmConfig
from ..run_folder import RunFolder

log = logging.getLogger(__name__)


def machine() -> dict[str, str | int]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
    }


def _sample_batches(batches: list, steps: int, seed: int) -> list:
    """`steps` batches spread evenly over one epoch's batches sorted by size, in random order:
    their mean step time estimates the epoch's, even when batch shapes vary a lot (buckets
    with a token budget), far better than the first few batches would."""
    by_size = sorted(batches, key=lambda b: int(tf.size(b[0])))
    picked = [by_size[i] for i in np.linspace(0, len(by_size) - 1, steps).round().astype(int)]
    np.random.default_rng(seed).shuffle(picked)
    return picked


def _seconds_per_step(net: keras.Model, batches: list) -> float:
    """Mean seconds of one `model.fit` step over `batches`, the first (compiling) one excluded."""
    spec = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32))
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(2)
    timer = train.Timer()
    net.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.steady_seconds[0] / (len(batches) - 1)


def run(cfg: Config, strategies: dict[str, BatchingConfig]) -> dict:
    """Measure everything, write `latest.json`/`latest.md` and log them to MLflow (`bench`).

    `strategies` are the `conf/batching/*.yaml` options; the configured batching is added as
    `default` when it differs from all of them.
    """
    b = cfg.bench
    if b is None:
        raise ConfigError("bench: make bench's settings are missing (conf/bench.yaml sets them)")
    if not isinstance(cfg.model, LstmConfig):
        raise ConfigError(
            f"model: make bench times the LSTM's batching; got model="
            f"{cfg.model.name}: use model=lstm"
        )
    steps, repeats, inference_reviews, latency_calls = (
        (10, 1, 200, 20) if b.quick else (b.steps, b.repeats, b.inference_reviews, b.latency_calls)
    )
    train.seed_everything(cfg.train.seed, cfg.train.deterministic)
    dataset = data.load(replace(cfg.data, limit=cfg.data.limit or 2000) if b.quick else cfg.data)
    start = time.perf_counter()
    tokens = pipeline.vectorize(dataset, cfg)
    vectorize_seconds = time.perf_counter() - start

    specs = dict(strategies)
    configured = cfg.batching
    if not batching.strategy(configured).budgeted:
        configured = replace(configured, token_budget=None)
    if configured not in specs.values():
        specs["default"] = configured
    default = next(name for name, spec in specs.items() if spec == configured)
    setups = {
        name: _setup(cfg, spec, tokens, len(dataset.class_names), steps + 1)
        for name, spec in specs.items()
    }
    results = {name: setup["result"] for name, setup in setups.items()}
    _time_training(setups, repeats)
    _summarise(results)
    matmul = _matmul_flops(
        cfg.batching.batch_size,
        cfg.model.embedding_dim + cfg.model.units,
        4 * cfg.model.units,
        20 if b.quick else 200,
    )
    _utilisation(results, cfg.model, matmul)

    net = setups[default]["net"]
    step_cost = _step_cost(
        net, tokens.vocab_size, [(64, 256), (128, 256), (256, 256), (64, 64)], 2 if b.quick else 5
    )
    # the exported model with each serve_lstm option, the configured one first; measured in
    # turns (A B B A), so neither gains from going second on a drifting machine
    classifiers = {}
    configured_serve = cfg.model.serve_lstm
    for serve in sorted(("fused", "trained"), key=lambda name: name != configured_serve):
        export_cfg = replace(cfg, model=replace(cfg.model, serve_lstm=serve))
        folder = RunFolder(Path(cfg.output_dir) / "bench" / serve)
        classifiers[serve] = inference.Classifier.from_files(
            pipeline.export(tokens, net, dataset.class_names, export_cfg, folder), batch_size=256
        )
    turns: dict[str, list[dict]] = {serve: [] for serve in classifiers}
    for serve in [*classifiers, *reversed(classifiers)]:
        turns[serve].append(
            _inference(classifiers[serve], tokens.texts["train"], inference_reviews, latency_calls)
        )
    served = {
        serve: {key: float(np.median([t[key] for t in runs])) for key in runs[0]}
        for serve, runs in turns.items()
    }
    reviews = sum(len(t) for t in tokens.texts.values())
    report = {
        "machine": machine(),
        "config": {
            "train_reviews": len(tokens.splits["train"]),
            "vocab_size": tokens.vocab_size,
            "steps": steps,
            "repeats": repeats,
            "batch_size": cfg.batching.batch_size,
            "max_length": cfg.tokenize.max_length,
            "default": default,
            "fixed_length": strategies["fixed"].max_length,
            "serve_lstm": cfg.model.serve_lstm,
            "embedding_dim": cfg.model.embedding_dim,
            "units": cfg.model.units,
        },
        "tokenize": {
            "vectorize_seconds": vectorize_seconds,
            "encode_reviews_per_s": reviews / vectorize_seconds,
        },
        "strategies": results,
        "matmul_gflops": matmul / 1e9,
        "step_cost": step_cost,
        "inference": served[cfg.model.serve_lstm],
        "inference_by_serve_lstm": served,
    }
    _write(report, Path(b.out_dir), cfg)
    return report


def _setup(
    cfg: Config, spec: BatchingConfig, tokens: pipeline.Vectorized, num_classes: int, steps: int
) -> dict:
    """One strategy's epoch of batches (the input pipeline timed alone), its model, and the
    batches its training steps will be timed on."""
    batches = pipeline.batch(tokens, spec, cfg.train.seed)
    start = time.perf_counter()
    epoch = list(batches.train_epoch(0))  # the input pipeline alone: text ids → padded batches
    pipe_seconds = time.perf_counter() - start
    stats = batching.padding_stats(epoch)
    keras.utils.set_random_seed(cfg.train.seed)
    spec_cfg = replace(cfg, batching=spec)
    inputs = pipeline.model_inputs(tokens, num_classes, spec_cfg)
    net = pipeline.compiled(models.build(spec_cfg.model, inputs), spec_cfg, num_classes)
    result = {
        "padding_efficiency": stats.efficiency,
        "batches_per_epoch": stats.batches,
        "reviews_per_epoch": stats.reviews,
        "real_tokens_per_epoch": stats.real_tokens,
        "pipeline_reviews_per_s": stats.reviews / pipe_seconds,
        "runs_reviews_per_s": [],
        "runs_tokens_per_s": [],
        "peak_rss_mb": 0.0,
    }
    return {"net": net, "sample": _sample_batches(epoch, steps, cfg.train.seed), "result": result}


def _time_training(setups: dict[str, dict], repeats: int) -> None:
    """Strategies take turns, in rotated order, so machine drift hits them all alike."""
    names = list(setups)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            res = setups[name]["result"]
            train.reset_peak_rss()
            # an epoch's reviews (tokens) over its estimated time: batches × seconds per step
            epoch_seconds = res["batches_per_epoch"] * _seconds_per_step(
                setups[name]["net"], setups[name]["sample"]
            )
            res["runs_reviews_per_s"].append(res["reviews_per_epoch"] / epoch_seconds)
            res["runs_tokens_per_s"].append(res["real_tokens_per_epoch"] / epoch_seconds)
            res["peak_rss_mb"] = max(res["peak_rss_mb"], train.peak_rss_mb())
            log.info("repeat %d %-9s %8.1f reviews/s", r + 1, name, res["runs_reviews_per_s"][-1])


def training_flops_per_step(model_cfg: LstmConfig) -> float:
    """FLOPs of one LSTM time step for one row, forward and backward, counted from the shapes:
    the four gates' matmuls take 2 × 4·units × (embedding + units) FLOPs forward, the backward
    pass twice that; × 2 directions if bidirectional. The embedding lookup, gate
    nonlinearities, pooling and the dense head (under 1% here) are left out."""
    forward = 2 * 4 * model_cfg.units * (model_cfg.embedding_dim + model_cfg.units)
    return 3 * forward * (2 if model_cfg.bidirectional else 1)


def _matmul_flops(rows: int, inner: int, outer: int, repeats: int) -> float:
    """This machine's FLOP/s for one LSTM step's gate matmul ([rows, E+U] × [E+U, 4U]), the
    shape the per-step loop multiplies, timed in one traced loop."""
    a = tf.random.normal([rows, inner])
    b = tf.random.normal([inner, outer])

    @tf.function
    def loop():
        acc = tf.zeros([rows, outer])
        for _ in tf.range(repeats):
            acc += tf.matmul(a, b)
        return acc

    loop()  # trace
    start = time.perf_counter()
    loop().numpy()
    return 2 * rows * inner * outer * repeats / (time.perf_counter() - start)


def _utilisation(results: dict[str, dict], model_cfg: LstmConfig, matmul: float) -> None:
    """Model FLOP/s of training: FLOPs per row-step × the row-steps (padding included: a masked
    LSTM still computes them) per second; and its share of the gate matmul's FLOP/s."""
    for res in results.values():
        padded_tokens_per_s = res["real_tokens_per_s"] / res["padding_efficiency"]
        res["model_gflops"] = training_flops_per_step(model_cfg) * padded_tokens_per_s / 1e9
        res["utilisation"] = res["model_gflops"] * 1e9 / matmul


def _summarise(results: dict[str, dict]) -> None:
    for res in results.values():
        res["reviews_per_s"] = statistics.median(res["runs_reviews_per_s"])
        res["real_tokens_per_s"] = statistics.median(res["runs_tokens_per_s"])
    for res in results.values():
        res["ratio_to_fixed"] = res["reviews_per_s"] / results["fixed"]["reviews_per_s"]
        res["ratio_to_per_batch"] = res["reviews_per_s"] / results["per_batch"]["reviews_per_s"]
        res["pipeline_vs_training"] = res["pipeline_reviews_per_s"] / res["reviews_per_s"]


def _step_cost(
    net: keras.Model, vocab: int, shapes: list[tuple[int, int]], calls: int
) -> dict[str, float]:
    """Milliseconds per training step for [batch, time] shapes of random ids: how much of a
    step is per-time-step overhead (what wider batches spread over more reviews)."""
    rng = np.random.default_rng(0)
    cost = {}
    for rows, steps in shapes:
        x = rng.integers(2, vocab, (rows, steps)).astype("int32")
        y = rng.integers(0, 2, rows).astype("int32")
        net.train_on_batch(x, y)  # warm-up
        start = time.perf_counter()
        for _ in range(calls):
            net.train_on_batch(x, y)
        cost[f"{rows}x{steps}"] = (time.perf_counter() - start) / calls * 1000
    return cost


def _inference(
    classifier: inference.Classifier, texts: list[str], n: int, calls: int
) -> dict[str, float]:
    """Raw strings → probabilities on the saved, reloaded model: `inference.Classifier` (texts
    sorted by token count, length-grouped batches) beside the whole model on batches of 256 in
    the caller's order, and the latency of one review through `Classifier.predict`."""
    sample = [texts[i % len(texts)] for i in range(n)]
    whole = tf.function(lambda x: classifier.model(x, training=False), reduce_retracing=True)
    train.reset_peak_rss()

    def unsorted() -> None:
        for start in range(0, n, 256):
            whole(tf.constant(sample[start : start + 256])).numpy()

    rates = {}
    for name, job in (("unsorted", unsorted), ("batch", lambda: classifier.predict(sample))):
        job()  # warm-up: traces the graphs
        start = time.perf_counter()
        job()
        rates[f"{name}_reviews_per_s"] = n / (time.perf_counter() - start)
    for text in sample[:5]:
        classifier.predict([text])
    latencies = []
    for text in sample[:calls]:
        start = time.perf_counter()
        classifier.predict([text])
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        **rates,
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "peak_rss_mb": train.peak_rss_mb(),
    }


def markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}. {c['train_reviews']} training reviews, batch {c['batch_size']}, "
        f"{c['steps']} steps × {c['repeats']} repeats, medians; `fixed` pads to "
        f"{c['fixed_length']} tokens.",
        "",
        "| strategy | reviews/s | real tokens/s | × fixed | × per_batch | padding eff. "
        "| model GFLOP/s | utilisation | pipeline reviews/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["strategies"].items():
        lines.append(
            f"| {name} | {r['reviews_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | "
            f"{r['ratio_to_fixed']:.2f} | {r['ratio_to_per_batch']:.2f} | "
            f"{r['padding_efficiency']:.3f} | {r['model_gflops']:.1f} | "
            f"{r['utilisation']:.0%} | {r['pipeline_reviews_per_s']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} |"
        )
    lines += [
        "",
        f"Model GFLOP/s: training FLOPs per LSTM row-step (forward + backward, from the "
        f"gate shapes) × padded row-steps per second; utilisation: their share of this "
        f"machine's {report['matmul_gflops']:.1f} GFLOP/s on one step's gate matmul "
        f"[{c['batch_size']} × {c['embedding_dim'] + c['units']}] · "
        f"[{c['embedding_dim'] + c['units']} × {4 * c['units']}], timed in the same run.",
    ]
    s = report["strategies"]
    gains = [
        f"`{name}-budget` {s[f'{name}-budget']['reviews_per_s'] / s[name]['reviews_per_s']:.2f}× "
        f"`{name}`"
        for name in ("bucket", "pooled")
        if f"{name}-budget" in s and name in s
    ]
    if gains:
        lines += [
            "",
            f"Every strategy at {c['batch_size']} rows a batch, so each ratio is padding "
            f"saved; the `-budget` rows fill batches of short reviews to the token budget "
            f"instead, the budget's own gain: {', '.join(gains)}.",
        ]
    cost = ", ".join(f"{shape}: {ms:.0f} ms" for shape, ms in report["step_cost"].items())
    lines += ["", f"One training step, [batch x time] of random ids: {cost}."]
    lines += [
        "",
        f"Inference from raw strings through the saved `{c['default']}` model "
        f"(`inference.Classifier`), per `model.serve_lstm` (configured: "
        f"`{c['serve_lstm']}`; medians of two turns each, taken A B B A):",
    ]
    for serve, inf in report["inference_by_serve_lstm"].items():
        lines.append(
            f"- `{serve}`: {inf['batch_reviews_per_s']:,.0f} reviews/s sorted by token "
            f"count in length-grouped batches, {inf['unsorted_reviews_per_s']:,.0f} "
            f"reviews/s unsorted in batches of 256; single review p50 "
            f"{inf['latency_p50_ms']:.1f} ms, p95 {inf['latency_p95_ms']:.1f} ms."
        )
    lines += ["", f"Tokenization: {report['tokenize']['encode_reviews_per_s']:,.0f} reviews/s."]
    return "\n".join(lines) + "\n"


def _write(report: dict, out_dir: Path, cfg: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2))
    (out_dir / "latest.md").write_text(markdown(report))
    print(markdown(report))
    flat = {
        f"{name}_{key}": value
        for name, res in report["strategies"].items()
        for key, value in res.items()
        if isinstance(value, float | int)
    }
    flat.update({f"inference_{k}": v for k, v in report["inference"].items()})
    flat.update(
        {
            f"inference_{serve}_{k}": v
            for serve, res in report["inference_by_serve_lstm"].items()
            for k, v in res.items()
        }
    )
    with tracking.start_run(
        cfg.tracking.uri,
        "bench",
        run_name=f"bench {cfg.data.source}",
        tags={**tracking.source_tags("textclf bench"), **report["machine"]},
        training=False,
    ) as run:
        run.log_metrics(flat)
        run.log_artifact(out_dir / "latest.json")
        run.log_artifact(out_dir / "latest.md")
