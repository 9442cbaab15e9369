"""The padding/masking comparison, read back from MLflow: a markdown table and two figures.

One row per variant (batching × padding side × masking), the mean over its finished runs.
The files go to `out_dir` and, for a sweep, onto the sweep's parent run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from . import tracking
from .evaluate import save_figure

log = logging.getLogger(__name__)
VARIANT = ["batching", "padding_side", "masking"]
COLUMNS = {
    "test_accuracy": "test acc",
    "test_f1": "test F1",
    "train_reviews_per_s": "reviews/s",
    "train_tokens_per_s": "tokens/s",
    "padding_efficiency": "padding eff.",
    "epoch_seconds": "s/epoch",
    "epochs_run": "epochs",
    "peak_rss_mb": "peak RSS MB",
}


class CompareError(ValueError):
    """Nothing to compare; the message says where it looked."""


def select_runs(uri: str, experiment: str, sweep: str) -> tuple[pd.DataFrame, str | None]:
    """Finished training runs of one sweep (`latest` or a parent run id) or of `all` runs."""
    runs = tracking.search(uri, experiment)
    if runs.empty:
        raise CompareError(
            f"experiment {experiment!r} in {uri} has no runs: run `make sweep` first."
        )
    parent_col = f"tags.{tracking.PARENT_TAG}"
    runs = runs.reindex(
        columns=[
            *runs.columns.difference([parent_col, "tags.sweep_dir"]),
            parent_col,
            "tags.sweep_dir",
        ]
    )
    parents = runs[runs["tags.sweep_dir"].notna()]
    parent = None
    if sweep == "latest":
        if parents.empty:
            raise CompareError(
                f"experiment {experiment!r} has no sweep; use sweep=all or run `make sweep`."
            )
        parent = parents.sort_values("start_time").iloc[-1]["run_id"]
    elif sweep != "all":
        parent = sweep
    chosen = runs[runs[parent_col] == parent] if parent else runs.drop(parents.index)
    chosen = chosen[chosen["status"] == "FINISHED"]
    if chosen.empty:
        raise CompareError(
            f"no finished training run in {'sweep ' + parent if parent else experiment}."
        )
    return chosen, parent


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per variant, best accuracy first."""
    frame = pd.DataFrame({name: runs[f"tags.{name}"] for name in VARIANT})
    for metric in COLUMNS:
        frame[metric] = pd.to_numeric(runs.get(f"metrics.{metric}"), errors="coerce")
    frame["runs"] = 1
    grouped = frame.groupby(VARIANT, as_index=False).agg(
        {**{m: "mean" for m in COLUMNS}, "runs": "sum"}
    )
    return grouped.sort_values(["test_accuracy", "train_reviews_per_s"], ascending=False)


def markdown(summary: pd.DataFrame) -> str:
    head = ["batching", "padding", "masking", *COLUMNS.values(), "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary.itertuples(index=False):
        values = [row.batching, row.padding_side, row.masking]
        for metric in COLUMNS:
            v = getattr(row, metric)
            if pd.isna(v):
                values.append("–")
            elif metric == "epochs_run":
                values.append(f"{v:.1f}".removesuffix(".0"))
            else:
                values.append(f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}")
        values.append(str(row.runs))
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _label(row) -> str:
    return f"{row.batching}/{row.padding_side}/{row.masking}"


def figures(summary: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Accuracy vs throughput (marker size = padding efficiency); accuracy by review length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for row in summary.itertuples(index=False):
        ax.scatter(
            row.train_reviews_per_s,
            row.test_accuracy,
            s=40 + 400 * row.padding_efficiency,
            alpha=0.6,
        )
        ax.annotate(
            _label(row),
            (row.train_reviews_per_s, row.test_accuracy),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set(
        xlabel="training reviews / s (steady state)",
        ylabel="test accuracy",
        title="accuracy vs throughput (marker size = padding efficiency)",
    )
    ax.grid(alpha=0.3)
    labels = [_label(r) for r in summary.itertuples(index=False)]
    bars.barh(labels, summary["padding_efficiency"])
    bars.set(xlabel="padding efficiency (real / processed tokens)", xlim=(0, 1))
    bars.tick_params(axis="y", labelsize=8)
    paths = [save_figure(fig, out_dir / "comparison.png", dpi=110)]

    length_cols = sorted(
        (c for c in runs.columns if c.startswith("metrics.test_accuracy_len_")),
        key=lambda c: int(c.rsplit("_", 1)[1].split("-")[0]),
    )
    if length_cols:
        fig, ax = plt.subplots(figsize=(9, 5))
        names = [c.rsplit("_", 1)[1] for c in length_cols]
        ax.set_xticks(range(len(names)), names)
        for key, group in runs.groupby([f"tags.{v}" for v in VARIANT]):
            values = group[length_cols].astype(float).mean().to_numpy()
            style = "-" if key[2] != "none" else "--"
            ax.plot(
                range(len(names)),
                values,
                style,
                marker="o" if key[1] == "post" else "s",
                label="/".join(key),
            )
        ax.set(
            xlabel="review length (tokens)",
            ylabel="test accuracy",
            title="accuracy by review length (dashed: unmasked; squares: pre-padding)",
        )
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out_dir / "accuracy_by_length.png", dpi=110))
    return paths


def main(uri: str, experiment: str, sweep: str, out_dir: Path) -> pd.DataFrame:
    runs, parent = select_runs(uri, experiment, sweep)
    summary = table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(summary)
    (out_dir / "comparison.md").write_text(text)
    summary.to_csv(out_dir / "comparison.csv", index=False)
    paths = [
        out_dir / "comparison.md",
        out_dir / "comparison.csv",
        *figures(summary, runs, out_dir),
    ]
    if parent:
        tracking.log_artifacts(uri, parent, paths, "comparison")
    print(text)
    log.info(
        "comparison of %d runs written to %s%s",
        len(runs),
        out_dir,
        f" and logged to parent run {parent}" if parent else "",
    )
    return summary
