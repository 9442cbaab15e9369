"""`make evidence`: the padding evidence's sweeps and their comparison, through the Makefile."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from textclf.cli import ROOT

from .conftest import quick, reviews, venv_env, write_csv

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_make_evidence_compares_the_six_variants_in_one_table(tmp_path):
    """Three sweeps (fixed; the other four strategies masked; per_batch unmasked) land in one
    experiment, and the comparison over them has the six variants, each with its seeds, and
    a per-run CSV."""
    data = write_csv(tmp_path / "r.csv", reviews(160))
    settings = [s for s in quick(tmp_path) if not s.startswith("tracking.uri")]
    args = " ".join(
        [
            *settings,
            "train.epochs=1",
            "train.seed=0,1",
            "evaluate.served_limit=10",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    out = tmp_path / "evidence"
    done = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            "evidence",
            f"DATA=data=csv data.path={data}",
            f"TRACKING=tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"EVIDENCE_DIR={out}",
            f"ARGS={args}",
        ],
        env={k: v for k, v in venv_env().items() if not k.startswith(("MAKE", "MFLAGS"))},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = pd.read_csv(out / "comparison.csv").set_index("variant")
    assert sorted(table.index) == [
        "bucket/mask_zero",
        "exact/mask_zero",
        "fixed/mask_zero",
        "per_batch/mask_zero",
        "per_batch/none",
        "pooled/mask_zero",
    ]
    assert set(table["n"]) == {2}
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 12 and sorted(set(runs["seed"])) == [0, 1]
