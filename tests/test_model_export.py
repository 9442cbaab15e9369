"""The logged MLflow model is self-contained: it carries the package's inference side as its
code, loading it imports nothing of training, Hydra or tracking, and it loads and serves in an
environment made from its own `requirements.txt` alone, where textclf is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from textclf import inference, models, tokenize, tracking
from textclf.config import TokenizeConfig
from textclf.models import bow, fusion
from textclf.run_folder import RunFolder

from .conftest import Service, free_port, padded, reviews, small_model
from .test_serving import assert_same, frame, post

TEXTS = [t for t, _ in reviews(8, seed=7)] + ["", "great " * 100]  # an empty and a cut text
# What loading and predicting must not import: the training stack, its config and tracking.
FORBIDDEN = (
    "hydra",
    "omegaconf",
    "textclf.train",
    "textclf.pipeline",
    "textclf.tracking",
    "textclf.cli",
    "textclf.sweep",
    "textclf.evaluate",
)

# Run in another interpreter: load the model at argv[1], classify the JSON texts of argv[2],
# print the answer and what was imported (textclf's modules with their files).
LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
answer = model.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(json.dumps({"predictions": answer.to_dict(orient="records"), "modules": sorted(sys.modules),
                  "textclf": {name: getattr(module, "__file__", None)
                              for name, module in sys.modules.items()
                              if name.split(".")[0] == "textclf"}}))
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory, empty_store) -> SimpleNamespace:
    """An untrained model of the default shape (both LSTM directions served by the fused
    kernel, mixed with bow's NB-weighted n-gram model: every custom layer the project saves),
    its heads given random weights so that answers differ per text, logged through
    `tracking.log_model` and downloaded as a deployment fetches it."""
    root = tmp_path_factory.mktemp("export")
    texts = [t for t, _ in reviews(200)]
    tokenize_cfg = TokenizeConfig(vocab_size=200, max_length=60)
    vectorizer = tokenize.adapt(texts, tokenize_cfg)
    encoded = tokenize.encode(vectorizer, texts, np.arange(len(texts)) % 2, None)
    cfg = small_model(embedding_dim=8, units=8, bidirectional=True, ngram_branch=True)
    keras.utils.set_random_seed(0)
    inputs = models.ModelInputs(
        vectorizer.vocabulary_size(), 2, padded(), encoded.tokens, encoded.labels
    )
    linear = bow.build(bow.BowConfig(ngram_vocab=500), inputs)
    net = fusion.fuse(models.build(cfg, inputs), linear, 2)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(rng.normal(0, 0.01, layer.kernel.shape).astype("float32"))
    net.get_layer("mix").set_weights([np.array([1.0, 20.0], "float32"), np.zeros(1, "float32")])
    folder = RunFolder(root / "run")
    inference.save(
        inference.export(vectorizer, tokenize_cfg, models.serving(net, cfg), padded()),
        ["neg", "pos"],
        folder.model,
        folder.classes,
    )
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client, experiment = tracking.connect(uri, "export")
    run = tracking.Run(client, client.create_run(experiment).info.run_id)
    model_uri = tracking.log_model(run, folder.model, folder.classes, None)
    mlflow.set_tracking_uri(uri)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(root / "download"))
    )
    expected = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"text": TEXTS}))
    assert expected["prob_pos"].nunique() > 5  # the answers depend on the text
    return SimpleNamespace(root=root, local=local, expected=expected)


def load_elsewhere(python: str, model: Path, cwd: Path, env: dict[str, str] | None = None):
    done = subprocess.run(
        [python, "-c", LOAD_AND_PREDICT, str(model), json.dumps(TEXTS)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_model_carries_only_the_inference_code_and_loading_it_imports_nothing_else(logged):
    """In a new process the model's own copy of textclf is the one imported (MLflow puts its
    code first on sys.path), none of the training stack, Hydra or tracking comes with it, and
    it answers as in process."""
    carried = logged.local / "code" / "textclf"
    assert sorted(p.name for p in carried.iterdir()) == sorted(tracking.models.INFERENCE_CODE)
    found = load_elsewhere(sys.executable, logged.local, logged.root)
    imported = [
        m
        for m in found["modules"]
        if any(m == name or m.startswith(name + ".") for name in FORBIDDEN)
    ]
    assert imported == []
    assert {"textclf.inference", "textclf.models.fused", "textclf.models.bow"} <= set(
        found["textclf"]
    )
    outside = {
        m: f
        for m, f in found["textclf"].items()
        if f is None or not Path(f).is_relative_to(carried)
    }
    assert outside == {}  # every textclf module from the model's code
    assert_same(found, logged.expected)


def uv() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.fail("uv is a dev dependency (it makes the fresh environment): run make install")
    return find_uv_bin()


@pytest.mark.slow
def test_the_model_loads_and_serves_where_only_its_requirements_are_installed(logged, tmp_path):
    """A new virtualenv (no system site-packages, no PYTHONPATH, run from an unrelated folder)
    gets the model's `requirements.txt` alone, then loads the model with
    `mlflow.pyfunc.load_model` and serves it with `mlflow models serve --env-manager local`;
    both answer as the model does in process.

    The environment is installed with `uv pip install` rather than pip: it resolves from the
    package index exactly as pip would, so a requirement missing from the file still fails
    here, but it links packages from its cache (~/.cache/uv, or UV_CACHE_DIR) instead of
    unpacking them again: about 5 s on a warm cache against 75 to 105 s for pip installing the
    same files from a local folder of wheels (TensorFlow and MLflow's dependencies unpack to
    2.9 GB). The first run on a machine downloads them (about 770 MB). A venv with
    `--system-site-packages` would see textclf and this environment's packages, so it could not
    prove the requirements are enough."""
    requirements = logged.local / "requirements.txt"
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [uv(), "pip", "install", "--quiet", "--python", python, "-r", str(requirements)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MLFLOW_TRACKING_URI")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absent = subprocess.run(
        [python, "-c", "import textclf"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'textclf'" in absent.stderr  # the project is not installed there

    found = load_elsewhere(python, logged.local, elsewhere, env)
    assert_same(found, logged.expected)
    assert all(Path(f).is_relative_to(logged.local) for f in found["textclf"].values())

    port = free_port()
    server = Service(
        [
            str(venv / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            str(logged.local),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        tmp_path / "serve.log",
        env=env,
        cwd=elsewhere,
        ready="/ping",
    )
    server.start()
    try:
        status, answer = post(server.url, frame(TEXTS))
    finally:
        server.stop()
    assert status == 200, answer
    assert_same(answer, logged.expected)
