"""Inference: the pyfunc model, `textclf predict` and `mlflow models serve` answer alike.

Two tiny models are trained once for the module through the real entry point (in this process:
`textclf_here`), into one SQLite
store and one registered model: a 3-class topic model on JSONL (its own vocabulary, registered
as version 1), then a binary review model on CSV (version 2, the newest run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from textclf import data, inference, predict, tracking
from textclf.cli import CONF_DIR, _quote_text
from textclf.config import ConfigError, PredictConfig, RegisterConfig

from .conftest import (
    GOOD,
    Service,
    free_port,
    quick,
    reviews,
    textclf,
    textclf_here,
    venv_env,
    write_csv,
)

pytestmark = pytest.mark.e2e

REGISTERED = "textclf-test"
MAX_LENGTH = 20
POSITIVE = "a wonderful film, i loved every minute of it"
NEGATIVE = "a terrible film, boring and pointless"
TOPICS = {
    "sport": ["the striker scored twice", "a late goal won the cup", "the match went to penalties"],
    "food": ["the soup was salty", "fresh bread with sweet butter", "a spicy curry and rice"],
    "weather": ["heavy rain all afternoon", "a cold wind from the north", "snow over the hills"],
}


def topic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        label = names[i % 3]
        phrases = rng.choice(TOPICS[label], size=rng.integers(1, 4))
        rows.append({"text": ". ".join(phrases), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train(root: Path, name: str, data_path: Path, *extra: str) -> str:
    """Train through the CLI; the id of the run whose output_dir is `root / name`."""
    done = textclf_here(
        "train",
        "data=csv",
        f"data.path={data_path}",
        f"hydra.run.dir={root / name}",
        *quick(root),
        f"tracking.registered_model={REGISTERED}",
        *extra,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("textclf").experiment_id
    [run] = client.search_runs([experiment], f"tags.output_dir = '{root / name}'")
    return run.info.run_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("predict")
    topics = train(
        root,
        "topics",
        write_jsonl(root / "topics.jsonl", topic_rows(240)),
        "tokenize.vocab_size=60",
    )
    binary = train(
        root,
        "binary",
        write_csv(root / "reviews.csv", reviews(240)),
        f"tokenize.max_length={MAX_LENGTH}",
    )
    return SimpleNamespace(
        root=root, uri=f"sqlite:///{root / 'mlflow.db'}", topics=topics, binary=binary
    )


def cli(trained: SimpleNamespace, *args: str) -> subprocess.CompletedProcess:
    return textclf_here("predict", f"tracking.uri={trained.uri}", *args, cwd=trained.root)


def pyfunc(trained: SimpleNamespace, run_id: str):
    return tracking.load_model(trained.uri, f"runs:/{run_id}/model")


def test_pyfunc_has_a_signature_and_matches_the_keras_model(trained):
    model_uri = f"runs:/{trained.binary}/model"
    mlflow.set_tracking_uri(trained.uri)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.input_names() == ["text"]
    example = mlflow.models.Model.load(model_uri).load_input_example()
    assert example["text"].tolist() == tracking.models.EXAMPLE

    texts = [POSITIVE, NEGATIVE, "great acting and a lovely story"]
    got = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": texts}))
    assert list(got.columns) == ["label", "prob_neg", "prob_pos", "error", "no_known_word"]
    net = keras.models.load_model(trained.root / "binary" / "model.keras")
    expected = inference.class_probabilities(net.predict(tf.constant(texts), verbose=0))
    np.testing.assert_allclose(got[["prob_neg", "prob_pos"]].to_numpy(), expected, atol=1e-5)
    assert got["label"].tolist() == ["pos", "neg", "pos"] and got["error"].isna().all()


def test_long_texts_are_truncated_like_training_and_empty_ones_get_a_row_error(trained):
    words = " ".join(GOOD).replace(",", "").split()
    assert len(words) > MAX_LENGTH
    head = " ".join(words[:MAX_LENGTH])
    long = " ".join(words + ["terrible", "boring"] * 300)
    got = pyfunc(trained, trained.binary).predict(pd.DataFrame({"text": [head, long, "", "  \t "]}))
    np.testing.assert_allclose(got.loc[0, "prob_pos"], got.loc[1, "prob_pos"], atol=1e-5)
    assert got["error"].tolist()[2:] == [inference.EMPTY] * 2
    assert got["label"][2:].isna().all() and got["prob_pos"][2:].isna().all()


@pytest.mark.parametrize("text", ["a, b", 'it\'s "great"', "back\\slash\\", "${oops}", "", "null"])
def test_text_from_a_shell_that_ate_the_quotes_arrives_verbatim(text):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=[_quote_text(f"text={text}"), "tracking.uri=x"])
    assert cfg.text == text


def test_input_files_read_lines_or_a_named_column_and_say_which_is_missing(tmp_path):
    lines = tmp_path / "reviews.txt"
    lines.write_text("a fine film\nawful\n", encoding="utf-8")
    assert predict.read_texts(None, str(lines)) == ["a fine film", "awful"]
    table = write_csv(tmp_path / "reviews.csv", [("a fine film", "x")], header=("review", "y"))
    assert predict.read_texts(None, str(table), column="review") == ["a fine film"]
    with pytest.raises(data.DataError, match=r"no column\(s\) \['text'\].*Set column=<name>"):
        predict.read_texts(None, str(table))


def test_predict_text_uses_the_newest_run_and_prints_a_table(trained):
    # in a fresh process, as `make predict ARGS='text="..."'` runs and passes it
    done = textclf("predict", f"tracking.uri={trained.uri}", f"text={POSITIVE}", cwd=trained.root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"runs:/{trained.binary}/model" in done.stdout + done.stderr
    header, row = done.stdout.strip().splitlines()[-2:]
    assert header.split() == ["text", "label", "prob_neg", "prob_pos", "error", "no_known_word"]
    assert " pos " in row and float(row.split()[-2]) > 0.5 and row.split()[-1] == "False"


def test_predict_a_text_file_with_empty_lines_to_csv(trained):
    lines = trained.root / "lines.txt"
    lines.write_text(f"{POSITIVE}\n\n   \n{NEGATIVE}\n", encoding="utf-8")
    out = trained.root / "out" / "lines.csv"
    done = cli(trained, f"file={lines}", f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out)
    assert table["text"].fillna("").str.strip().tolist() == [POSITIVE, "", "", NEGATIVE]
    assert table["label"].fillna("").tolist() == ["pos", "", "", "neg"]
    assert table["error"].fillna("").tolist() == ["", inference.EMPTY, inference.EMPTY, ""]
    sums = table.loc[[0, 3], ["prob_neg", "prob_pos"]].sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_predict_a_csv_column_by_run_id_to_jsonl_agrees_with_the_pyfunc(trained):
    texts = [text for text, _ in reviews(30, seed=7)]
    source = write_csv(
        trained.root / "new.csv", [(i, t) for i, t in enumerate(texts)], ("id", "review")
    )
    out = trained.root / "new.jsonl"
    done = cli(trained, f"file={source}", "column=review", f"out={out}", f"run_id={trained.binary}")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_json(out, lines=True)
    expected = pyfunc(trained, trained.binary).predict(pd.DataFrame({"text": texts}))
    assert table["text"].tolist() == texts
    assert table["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(table["prob_pos"], expected["prob_pos"], atol=1e-5)
    truth = ["pos" if i % 2 else "neg" for i in range(30)]
    assert np.mean(table["label"] == truth) >= 0.8


def test_a_model_with_another_vocabulary_and_three_classes_loads_and_predicts(trained):
    test_file = write_jsonl(trained.root / "topics_new.jsonl", topic_rows(30, seed=5))
    out = trained.root / "topics.csv"
    done = cli(
        trained, f"file={test_file}", f"out={out}", f"model_name={REGISTERED}", "model_version=1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out)
    assert [c for c in table.columns if c.startswith("prob_")] == [
        "prob_food",
        "prob_sport",
        "prob_weather",
    ]
    truth = [r["label"] for r in topic_rows(30, seed=5)]
    assert np.mean(table["label"] == truth) >= 0.6
    np.testing.assert_allclose(table.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)

    direct = inference.Classifier.from_files(trained.root / "topics" / "model.keras")
    assert direct.classes == ["food", "sport", "weather"]
    np.testing.assert_allclose(
        direct.predict(table["text"].tolist()).filter(like="prob_"),
        table.filter(like="prob_"),
        atol=1e-5,
    )


def test_registered_versions_accumulate_and_latest_is_the_newest(trained):
    client = MlflowClient(trained.uri)
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    by_version = {int(v.version): v.run_id for v in versions}
    assert by_version == {1: trained.topics, 2: trained.binary}
    latest = tracking.load_model(trained.uri, f"models:/{REGISTERED}/latest")
    assert latest.predict(pd.DataFrame({"text": [POSITIVE]}))["label"][0] == "pos"


def test_a_file_that_is_not_a_model_is_one_clear_error(trained):
    fake = trained.root / "fake.keras"
    fake.write_text("not a model", encoding="utf-8")
    done = cli(trained, 'text="a fine film"', f"model_path={fake}")
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "is not a Keras model" in output
    assert "Traceback" not in output
    with pytest.raises(predict.PredictError, match="is not a Keras model"):
        inference.load_keras(trained.root / "reviews.csv")
    with pytest.raises(predict.PredictError, match="does not exist"):
        inference.load_keras(trained.root / "missing.keras")


def test_a_keras_file_path_predicts_with_the_class_names_beside_it(trained):
    done = cli(
        trained,
        "text=[a wonderful film,a terrible film]",
        f"model_path={trained.root / 'binary' / 'model.keras'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = done.stdout.strip().splitlines()[-2:]
    assert [r.split()[3] for r in rows] == ["pos", "neg"]


def test_bad_requests_name_the_option(trained):
    done = cli(trained, 'text="x"', "file=y.txt")
    assert done.returncode == 2 and "text/file: give exactly one" in done.stdout + done.stderr
    done = cli(trained, 'text="x"', "run_id=nope")
    assert (
        done.returncode == 2
        and "cannot load the model runs:/nope/model" in done.stdout + done.stderr
    )
    empty_store = textclf_here(
        "predict",
        'text="x"',
        f"tracking.uri=sqlite:///{trained.root / 'none.db'}",
        cwd=trained.root,
    )
    assert (
        empty_store.returncode == 2 and "no MLflow store" in empty_store.stdout + empty_store.stderr
    )
    assert not (trained.root / "none.db").exists()


@pytest.mark.parametrize(
    "command, where, refusal",
    [
        ("predict", "out={blocker}/out.csv", "out: cannot write {blocker}/out.csv"),
        ("predict", "out={folder}", "out: cannot write {folder} (it is a folder)"),
        ("evaluate", "output_dir={blocker}/run", "output_dir: cannot create or write"),
        ("evaluate", "hydra.run.dir={blocker}/run", "cannot create or write the output folder"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_one_error_before_any_model_loads(
    tmp_path, command, where, refusal
):
    blocker, folder = tmp_path / "a-file", tmp_path / "a-folder.csv"
    blocker.write_text("not a folder")
    folder.mkdir()
    places = {"blocker": blocker, "folder": folder}
    given = ['text="a fine film"'] if command == "predict" else ["data=csv", "data.path=r.csv"]
    done = textclf_here(
        command,
        *given,
        where.format(**places),
        f"model_path={tmp_path / 'never-loaded.keras'}",  # the output place fails first
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert refusal.format(**places) in output and "Traceback" not in output
    assert "never-loaded" not in output and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_served_model_answers_like_the_pyfunc(trained):
    texts = [POSITIVE, NEGATIVE, "", *(t for t, _ in reviews(5, seed=3))]
    expected = pyfunc(trained, trained.binary).predict(pd.DataFrame({"text": texts}))
    # served by its alias, as docs/serving.md does
    tracking.register_model(trained.uri, f"runs:/{trained.binary}/model", REGISTERED, "served")
    port = free_port()
    server = Service(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{REGISTERED}@served",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        f"http://127.0.0.1:{port}",
        trained.root / "serve.log",
        env=venv_env(MLFLOW_TRACKING_URI=trained.uri),
        cwd=trained.root,
        ready="/ping",
    )
    server.start(timeout=120)
    try:
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}
        request = urllib.request.Request(
            f"{server.url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            served = pd.DataFrame(json.loads(answer.read())["predictions"])
    finally:
        server.stop()
    assert served["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(
        served[["prob_neg", "prob_pos"]].to_numpy(dtype=float),
        expected[["prob_neg", "prob_pos"]].to_numpy(),
        atol=1e-5,
    )
    assert served["error"].tolist()[2] == inference.EMPTY


def evaluate_cli(trained: SimpleNamespace, *args: str) -> subprocess.CompletedProcess:
    return textclf_here("evaluate", f"tracking.uri={trained.uri}", *args, cwd=trained.root)


def test_evaluate_scores_a_saved_model_on_a_csv_it_did_not_train_on(trained):
    other = write_csv(trained.root / "other.csv", reviews(60, seed=7))
    by_run = evaluate_cli(
        trained, "data=csv", f"data.path={other}", "split=all", f"run_id={trained.binary}"
    )
    assert by_run.returncode == 0, by_run.stderr[-3000:]
    by_path = evaluate_cli(
        trained,
        "data=csv",
        f"data.path={other}",
        "split=all",
        f"model_path={trained.root / 'binary' / 'model.keras'}",
    )
    assert by_path.returncode == 0, by_path.stderr[-3000:]

    client = MlflowClient(trained.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("evaluate").experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    first, second = runs
    assert first.data.tags["source_run_id"] == trained.binary
    assert first.data.tags["model_uri"] == f"runs:/{trained.binary}/model"
    metrics = first.data.metrics
    assert metrics["served_reviews"] == 60 and metrics["test_accuracy"] > 0.7
    assert metrics["test_no_known_word"] == 0
    assert metrics["served_max_abs_diff"] <= 1e-4 and metrics["served_agreement"] == 1.0
    for name in ("test_f1", "test_auc", "test_loss", "test_accuracy_len_1-128"):
        assert name in metrics
    assert second.data.metrics == pytest.approx(metrics)  # the same model either way
    assert "plots" in {a.path for a in client.list_artifacts(first.info.run_id)}
    # the data it scored: the file's three splits (split=all), as evaluation datasets
    scored = {d.dataset.name: d for d in first.inputs.dataset_inputs}
    assert set(scored) == {"train", "val", "test"}
    assert sum(json.loads(d.dataset.profile)["num_rows"] for d in scored.values()) == 60
    for item in scored.values():
        assert json.loads(item.dataset.source) == {"uri": str(other)}
        assert {t.key: t.value for t in item.tags}["mlflow.data.context"] == "evaluation"
    assert {d.dataset.digest for d in second.inputs.dataset_inputs} == {
        d.dataset.digest for d in scored.values()
    }


def test_evaluate_refuses_data_with_labels_the_model_does_not_know(trained):
    done = evaluate_cli(
        trained,
        "data=csv",
        f"data.path={trained.root / 'topics.jsonl'}",
        f"run_id={trained.binary}",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "are not classes of the model" in output
    assert "Traceback" not in output


def test_evaluate_counts_the_texts_with_no_word_the_model_knows(trained):
    unknown = [("qwxz vbnm plugh", "pos"), ("?!? ... --", "neg"), ("xyzzy", "neg")]
    path = write_csv(trained.root / "unknown.csv", reviews(40, seed=8) + unknown)
    done = evaluate_cli(
        trained,
        "data=csv",
        f"data.path={path}",
        "split=all",
        f"run_id={trained.binary}",
        "evaluate_experiment=unknown_words",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 of 43 texts hold no word the model knows" in done.stdout + done.stderr
    client = MlflowClient(trained.uri)
    [run] = client.search_runs([client.get_experiment_by_name("unknown_words").experiment_id])
    assert run.data.metrics["test_no_known_word"] == 3


def test_an_alias_set_by_register_names_the_model_for_predict_and_evaluate(trained):
    """`make register` points an alias at the run's registered version (no new version), and
    `model_uri=models:/<name>@<alias>` loads that model in `make predict` and `make evaluate`."""
    champion = f"models:/{REGISTERED}@champion"
    done = textclf_here(
        "register",
        f"tracking.uri={trained.uri}",
        f"run_id={trained.binary}",
        f"name={REGISTERED}",
        "alias=champion",
        cwd=trained.root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(trained.uri)
    assert client.get_model_version_by_alias(REGISTERED, "champion").run_id == trained.binary
    assert len(client.search_model_versions(f"name = '{REGISTERED}'")) == 2  # reused, not added

    predicted = cli(trained, f"model_uri={champion}", "text=[a wonderful film,a terrible film]")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert f"model: {champion}" in predicted.stdout + predicted.stderr
    assert [r.split()[3] for r in predicted.stdout.strip().splitlines()[-2:]] == ["pos", "neg"]

    other = write_csv(trained.root / "aliased.csv", reviews(40, seed=9))
    evaluated = evaluate_cli(
        trained,
        "data=csv",
        f"data.path={other}",
        "split=all",
        f"model_uri={champion}",
        "evaluate_experiment=by_alias",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    [run] = client.search_runs([client.get_experiment_by_name("by_alias").experiment_id])
    assert run.data.tags["model_uri"] == champion
    assert run.data.tags["source_run_id"] == trained.binary

    # A model not registered under the name yet becomes its next version; an alias moves.
    assert (
        tracking.register_model(trained.uri, f"runs:/{trained.topics}/model", "topics", "champion")
        == "1"
    )
    assert (
        tracking.register_model(
            trained.uri, f"runs:/{trained.topics}/model", REGISTERED, "champion"
        )
        == "1"
    )
    assert client.get_model_version_by_alias(REGISTERED, "champion").run_id == trained.topics


def test_an_unknown_alias_or_name_is_one_clear_error_naming_the_fix(trained):
    tracking.register_model(trained.uri, f"runs:/{trained.binary}/model", REGISTERED, "stable")
    done = cli(trained, 'text="a fine film"', f"model_uri=models:/{REGISTERED}@nope")
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output
    assert f"registered model '{REGISTERED}' has no alias 'nope'" in output
    assert "stable (version 2)" in output
    assert f"make register RUN=<run id> NAME={REGISTERED} ALIAS=nope" in output
    with pytest.raises(
        tracking.TrackingError, match=f"has no registered model 'nope'.*registered: .*{REGISTERED}"
    ):
        tracking.load_model(trained.uri, "models:/nope@champion")
    with pytest.raises(tracking.TrackingError, match="has no alias 'nope'"):
        tracking.model_files(trained.uri, f"models:/{REGISTERED}@nope", trained.root)
    with pytest.raises(tracking.TrackingError, match="has no registered model 'nope'"):
        tracking.model_files(trained.uri, "models:/nope/1", trained.root)
    with pytest.raises(tracking.TrackingError, match="reserved"):
        tracking.register_model(trained.uri, f"runs:/{trained.binary}/model", REGISTERED, "latest")
    with pytest.raises(ConfigError, match="model_uri: must start with models:/ or runs:/"):
        PredictConfig(text="x", model_uri=f"{REGISTERED}@champion")
    with pytest.raises(ConfigError, match="name: give the registered model's name"):
        RegisterConfig(alias="champion")
