"""`make gpu-check`: does the LSTM train and serve on this machine's GPU, with cuDNN where it can?

cuDNN takes only right-padded masks, so padding before the text (pre) with a mask runs the LSTM with
`use_cudnn=False`. The check trains the default (bidirectional, `mask_zero`) LSTM with `post`
and `pre` padding for a few steps on the GPU, saves the trained network and its fused serving
copy as model.keras, reloads them, reports which LSTM kernel each one's graph holds (cuDNN,
TensorFlow's fused `BlockLSTM`, or Keras' step loop) and checks that a CPU-only process
(`CUDA_VISIBLE_DEVICES=-1`) gives the same answers. Where no GPU is visible it says so and
exits 0. (`tf.device("/CPU:0")` would not do for the CPU side: Keras builds the cuDNN op
whenever a GPU exists, and TensorFlow's soft placement then runs it on the GPU.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SKIP = (
    "no GPU visible: skipping make gpu-check (tf.config.list_physical_devices('GPU') is "
    "empty; on an NVIDIA GPU install the CUDA libraries: pip install -e '.[cuda]')"
)
VOCAB, ROWS, STEPS = 60, 128, 24
TOLERANCE = 1e-4  # as the served-answers check (evaluate's served_max_abs_diff)
# op types of the traced graph → the kernel they mean
KERNELS = {
    "CudnnRNNV3": "cuDNN",
    "BlockLSTM": "fused BlockLSTM",
    "While": "Keras loop",
    "StatelessWhile": "Keras loop",
}


@dataclass
class Result:
    side: str
    copy: str  # trained | fused
    use_cudnn: list
    kernels: set[str]
    max_diff: float = float("nan")  # GPU against CPU answers

    def problems(self) -> list[str]:
        found = []
        if self.side == "pre" and (
            self.use_cudnn != [False] * len(self.use_cudnn) or "cuDNN" in self.kernels
        ):
            found.append("a left-padded mask reaches cuDNN (it takes only right-padded masks)")
        if not self.max_diff <= TOLERANCE:
            found.append(f"GPU and CPU answers differ by up to {self.max_diff:.2g}")
        return found

    def line(self) -> str:
        status = "; ".join(self.problems()) or "ok"
        return (
            f"{self.side:>4} {self.copy:<7} use_cudnn={self.use_cudnn} kernels="
            f"{', '.join(sorted(self.kernels)) or '?'} cuDNN ran: "
            f"{'yes' if 'cuDNN' in self.kernels else 'no'}; GPU vs CPU max |diff| "
            f"{self.max_diff:.2g}: {status}"
        )


def tiny_data(side: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 1 to STEPS ids padded on `side`, labelled by whether id 7 occurs."""
    rng = np.random.default_rng(seed)
    x = np.zeros((ROWS, STEPS), np.int32)
    for row, length in zip(x, rng.integers(1, STEPS + 1, ROWS), strict=True):
        ids = rng.integers(1, VOCAB, length)
        if side == "pre":
            row[STEPS - length :] = ids
        else:
            row[:length] = ids
    return x, (x == 7).any(axis=1).astype("float32")


def kernels(net) -> set[str]:
    """The LSTM kernels in `net`'s inference graph (nested loop bodies included)."""
    import tensorflow as tf

    graph = (
        tf.function(lambda ids: net(ids, training=False))
        .get_concrete_function(tf.TensorSpec([None, None], tf.int32))
        .graph.as_graph_def()
    )
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return {KERNELS[op] for op in ops if op in KERNELS}


def check(folder: Path) -> list[Result]:
    """Train, save, reload and compare both padding sides, trained and fused copies."""
    import keras
    import tensorflow as tf

    from .. import batching, models
    from ..models.fused import fused_copy, lstm_layers
    from ..models.lstm import LstmConfig

    tf.config.experimental.enable_tensor_float_32_execution(False)  # float32 on both sides
    results = []
    for side in ("post", "pre"):
        x, y = tiny_data(side)
        np.save(folder / f"{side}.npy", x)
        keras.utils.set_random_seed(0)
        net = models.build(
            LstmConfig(embedding_dim=16, units=16, ngram_branch=False),
            models.ModelInputs(VOCAB, 2, batching.padded(side)),
        )
        net.compile(optimizer="adam", loss="binary_crossentropy")
        net.fit(x, y, batch_size=32, epochs=1, verbose=0)  # a few steps
        for copy, model in (("trained", net), ("fused", fused_copy(net))):
            path = folder / f"{side}-{copy}.keras"
            model.save(path)
            loaded = keras.models.load_model(path, compile=False, safe_mode=True)
            np.save(folder / f"{side}-{copy}.gpu.npy", loaded.predict(x, verbose=0))
            results.append(
                Result(
                    side, copy, [layer.use_cudnn for layer in lstm_layers(loaded)], kernels(loaded)
                )
            )
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "-1"}
    subprocess.run(
        [sys.executable, "-m", "textclf.studies.gpu_check", "--cpu-answers", str(folder)],
        env=env,
        check=True,
    )
    for result in results:
        stem = f"{result.side}-{result.copy}"
        gpu, cpu = (np.load(folder / f"{stem}.{where}.npy") for where in ("gpu", "cpu"))
        result.max_diff = float(np.abs(gpu - cpu).max())
    return results


def cpu_answers(folder: Path) -> None:
    """In the CPU-only child process: every saved model's answers on its side's inputs."""
    import keras
    import tensorflow as tf

    from .. import models  # noqa: F401  (registers the saved models' layers)

    if tf.config.list_physical_devices("GPU"):
        raise SystemExit("gpu-check: the CPU process sees a GPU (CUDA_VISIBLE_DEVICES=-1?)")
    for path in sorted(folder.glob("*.keras")):
        net = keras.models.load_model(path, compile=False, safe_mode=True)
        x = np.load(folder / f"{path.stem.split('-')[0]}.npy")
        np.save(folder / f"{path.stem}.cpu.npy", net.predict(x, verbose=0))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--cpu-answers"]:
        cpu_answers(Path(args[1]))
        return 0
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        print(SKIP)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        results = check(Path(folder))
    for result in results:
        print(result.line())
    failed = [r for r in results if r.problems()]
    print(
        f"gpu-check: {len(failed)} of {len(results)} models failed"
        if failed
        else "gpu-check: every model ok"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
