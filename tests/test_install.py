"""A non-editable install carries everything a command needs, its Hydra config included."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

from textclf.cli import ROOT

pytestmark = pytest.mark.slow


def test_pip_install_then_train_cfg_job_from_another_folder(tmp_path):
    """`pip install .` (a wheel, not a link to the checkout) into a fresh venv, then `textclf
    train --cfg job` from an unrelated folder prints the composed config. The fresh venv sees
    this venv's third-party packages through a .pth line (no second TensorFlow download);
    textclf itself comes from the wheel."""
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    [packages] = list(venv.glob("lib/python*/site-packages"))
    (packages / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import textclf; print(textclf.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(packages), where.stdout + where.stderr
    shown = subprocess.run(
        [str(venv / "bin" / "textclf"), "train", "--cfg", "job"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    for line in ("strategy: pooled", "masking: mask_zero", "ngram_branch: true"):
        assert line in shown.stdout, line
    runs = subprocess.run(
        [str(venv / "bin" / "textclf"), "train", "--cfg", "hydra", "--resolve"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"dir: {elsewhere}/outputs/runs/" in runs.stdout  # outputs/ beside where it runs
