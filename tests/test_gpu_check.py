"""`make gpu-check`: skipped with its message where no GPU is visible; on CPU its machinery
(train, save, reload, kernels, answers from a CPU-only process) runs as on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from textclf.cli import ROOT
from textclf.studies import gpu_check

from .conftest import venv_env


def test_make_gpu_check_without_a_gpu_says_so_and_succeeds():
    env = {
        k: v
        for k, v in venv_env(CUDA_VISIBLE_DEVICES="-1").items()
        if not k.startswith(("MAKE", "MFLAGS"))
    }
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "gpu-check", f"BIN={Path(sys.executable).parent}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.strip() == gpu_check.SKIP
    assert done.stdout.startswith("no GPU visible: skipping make gpu-check")


def test_a_result_fails_when_a_left_padded_mask_reaches_cudnn_or_answers_differ():
    ok = gpu_check.Result("pre", "fused", [False, False], {"fused BlockLSTM"}, max_diff=1e-6)
    assert ok.problems() == [] and ok.line().endswith(": ok")
    assert gpu_check.Result("post", "trained", ["auto"] * 2, {"cuDNN"}, 0.0).problems() == []
    for bad in (
        gpu_check.Result("pre", "trained", [False, "auto"], {"Keras loop"}, 0.0),
        gpu_check.Result("pre", "trained", [False, False], {"cuDNN"}, 0.0),
    ):
        assert bad.problems() == [
            "a left-padded mask reaches cuDNN (it takes only right-padded masks)"
        ]
    assert "differ by up to 0.01" in gpu_check.Result("post", "fused", ["auto"], set(), 1e-2).line()
    assert gpu_check.Result("post", "fused", ["auto"], set()).problems()  # never compared


@pytest.mark.slow
def test_the_check_trains_saves_reloads_and_compares_with_a_cpu_process(tmp_path):
    """On CPU no cuDNN: Keras' loop for the trained copies, BlockLSTM for the fused ones; the
    reloaded models' answers equal a CPU-only process's."""
    results = gpu_check.check(tmp_path)
    assert [(r.side, r.copy) for r in results] == [
        ("post", "trained"),
        ("post", "fused"),
        ("pre", "trained"),
        ("pre", "fused"),
    ]
    for result in results:
        assert result.use_cudnn == (["auto"] * 2 if result.side == "post" else [False] * 2)
        assert result.kernels == {"Keras loop" if result.copy == "trained" else "fused BlockLSTM"}
        assert result.max_diff <= 1e-6 and result.problems() == [], result.line()
