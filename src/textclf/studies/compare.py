"""The comparison over seeds, read back from MLflow: a table, a CSV and figures.

A variant is one setting of every swept key except the seed (`train.seed`). The keys are read
from the runs themselves (the config-group choices and params that differ between them, less
those that follow from the others), so any sweep groups without naming its keys; runs logged
without params fall back to the variant's tags (`VARIANT_TAGS`). Per variant: n, mean,
sample sd and the 95% interval (Student t) of each metric, and whether its test accuracy is
significantly below the best variant's (paired t-test when both ran the same seeds, Welch's
otherwise). One run per variant still gives a table, flagged as having no interval. The files
(the table, its CSV, a per-run CSV and figures) go to `out_dir` and, for a sweep, onto the
sweep's parent run.

The experiment's newest finished `make baseline` run (tag reference=true) joins every
comparison as the variant `reference`: the yardstick, never the best, one deterministic fit on
the runs' split, which the best variant's runs are tested against (one-sample t-test).

Runs trained on different data (the digests of the train, val and test datasets they logged
differ) are refused in one table unless `mixed_data` says so; runs that logged no datasets
(older ones) cannot be checked and are compared as before, with a warning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .. import tracking
from ..config import BatchingConfig, ConfigError

log = logging.getLogger(__name__)
SEED = "train.seed"
# Params that differ between runs without changing what is trained.
IGNORED = {
    SEED,
    "output_dir",
    "train.verbose",
    "evaluate.plots",
    "tracking.uri",
    "tracking.experiment",
    "tracking.run_name",
    "tracking.registered_model",
}
DATA_COUNTS = "params.data_"  # what a run counted of its data (data_train_size), not a choice
VARIANT_TAGS = [*BatchingConfig.TAGS, "masking"]  # for runs logged without params
METRICS = {
    "test_accuracy": "test acc",
    "test_f1": "test F1",
    "served_accuracy": "served acc",
    "served_max_abs_diff": "served max abs diff",
    "train_reviews_per_s": "reviews/s",
    "padding_efficiency": "padding eff.",
}
# Also in the per-run CSV: which epoch was kept, how long training went on, and for a model
# mixed with the n-grams (late fusion) each half's score alone and the mix's weights (`MIX`).
RUN_METRICS = [
    "served_agreement",
    "batch_rows",
    "batch_label_skew",
    "best_epoch",
    "epochs_run",
    "best_val_loss",
    "test_loss",
    "trained_test_accuracy",
    "ngrams_test_accuracy",
]
MIX = "metrics.mix_"  # late fusion's weights: mix_<model>, mix_ngrams
FORMATS = {"served_max_abs_diff": "{:.1e}", "train_reviews_per_s": "{:,.0f}"}
CSV_COLUMNS = [
    "variant",
    "n",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd", "ci95")),
    "p_vs_best",
    "test",
    "vs_best",
    "note",
]
SINGLE = "single run: no interval"
PAIRED, WELCH, ONE_SAMPLE = "paired t-test", "Welch's t-test", "one-sample t-test"
REFERENCE = "reference"  # the variant name of a `make baseline` run
REFERENCE_TAG = "tags.reference"  # "true" on it


class CompareError(ConfigError):
    """Nothing to compare; the message says where it looked (a user's mistake, as a
    ConfigError: one message, exit code 2)."""


def select_runs(uri: str, experiment: str, sweep: str) -> tuple[pd.DataFrame, str | None]:
    """Training runs of one sweep (`latest` or a parent run id) or of `all` runs, whatever
    their status (unfinished ones are counted, not averaged); fails without a finished one."""
    runs = tracking.search(uri, experiment)
    if runs.empty:
        raise CompareError(
            f"experiment {experiment!r} in {uri} has no runs: run `make sweep` first."
        )
    parent_col = f"tags.{tracking.PARENT_TAG}"
    runs = runs.reindex(
        columns=[
            *runs.columns.difference([parent_col, "tags.sweep_dir", REFERENCE_TAG]),
            parent_col,
            "tags.sweep_dir",
            REFERENCE_TAG,
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
    chosen = chosen[~is_reference(chosen)]
    if not (chosen["status"] == "FINISHED").any():
        raise CompareError(
            f"no finished training run in {'sweep ' + parent if parent else experiment}."
        )
    # A rerun of the deterministic reference adds nothing: the newest one stands for it.
    reference = runs[is_reference(runs) & (runs["status"] == "FINISHED")]
    return pd.concat([chosen, reference.sort_values("start_time").tail(1)]), parent


def is_reference(runs: pd.DataFrame) -> pd.Series:
    """Which runs are `make baseline`'s (tag reference=true)."""
    return runs.get(REFERENCE_TAG, pd.Series(None, index=runs.index, dtype=object)).eq("true")


def variant_keys(runs: pd.DataFrame) -> list[str]:
    """Columns that tell variants apart: the group choices and params that differ between
    runs, except the seed, bookkeeping, and a group's params that follow from its choice (the
    `batching.*` values a `batching=` option sets; a `batching.*` key swept on its own, as
    the padding side, still counts). Read from the trained runs alone: the reference has none
    of their params."""
    runs = runs[~is_reference(runs)]
    choices = sorted(c for c in runs.columns if c.startswith("tags.choice."))
    params = sorted(
        c
        for c in runs.columns
        if c.startswith("params.")
        and c.removeprefix("params.") not in IGNORED
        and not c.startswith(DATA_COUNTS)
    )
    values = runs[choices + params].astype(object)
    keys = [
        c
        for c in choices + params
        if values[c].nunique() > 1 or (values[c].isna().any() and added_since(runs, c))
    ]
    values = values.fillna("-").astype(str)
    for col in [k for k in keys if k.startswith("params.")]:
        choice = "tags.choice." + col.removeprefix("params.").split(".")[0]
        if choice in keys and (values.groupby(choice)[col].nunique() <= 1).all():
            keys.remove(col)
    # No differing key (one variant, or runs without params): name it by its tags.
    return keys or [f"tags.{t}" for t in VARIANT_TAGS if f"tags.{t}" in runs]


def added_since(runs: pd.DataFrame, key: str) -> bool:
    """Whether the runs that lack `key` predate it: the newest run of the same choice of its
    group (`model=lstm` for `params.model.ngrams`) has it. An option added since older runs
    tells them apart; one since removed, which only older runs logged, does not."""
    if "start_time" not in runs:
        return False
    choice = "tags.choice." + key.removeprefix("params.").split(".")[0]
    if choice in runs:
        runs = runs[runs[choice].isin(runs[choice][runs[key].notna().to_numpy()])]
    return bool(runs[key].notna().to_numpy()[runs["start_time"].to_numpy().argmax()])


def labels(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each run's variant name: its key values joined by `/` (the reference: `reference`)."""
    if not keys or runs.empty:
        names = pd.Series("all runs", index=runs.index, dtype=object)
    else:
        names = (
            runs.reindex(columns=keys).astype(object).fillna("-").astype(str).agg("/".join, axis=1)
        )
    return names.mask(is_reference(runs), REFERENCE)


def key_names(keys: list[str]) -> list[str]:
    """Short column names: `masking` for params.model.masking, unless two keys share one."""
    full = [
        k.removeprefix("tags.choice.").removeprefix("params.").removeprefix("tags.") for k in keys
    ]
    short = [f.rsplit(".", 1)[-1] for f in full]
    return [s if short.count(s) == 1 else f for s, f in zip(short, full, strict=True)]


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, sample sd and 95% CI half-width (Student t, n-1 degrees of freedom) of the
    values present; sd and interval are NaN below two values."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    sd = float(values.std(ddof=1))
    return mean, sd, float(stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values)))


def versus(best: pd.Series, other: pd.Series) -> tuple[float, str]:
    """p-value (two-sided) of the difference between two variants' values indexed by seed, and
    the test used: paired when both ran the same seeds once each, Welch's otherwise."""
    best, other = best.dropna(), other.dropna()
    if len(best) < 2 or len(other) < 2:
        return math.nan, ""
    same_seeds = (
        best.index.notna().all()
        and best.index.is_unique
        and other.index.is_unique
        and set(best.index) == set(other.index)
    )
    if same_seeds:
        diff = best - other.reindex(best.index)
        if np.ptp(diff.to_numpy()) == 0:  # no spread at all: t is 0 or infinite
            return (1.0 if diff.iloc[0] == 0 else 0.0), PAIRED
        return float(stats.ttest_rel(best, other.reindex(best.index)).pvalue), PAIRED
    if best.std() == 0 and other.std() == 0:
        return (1.0 if best.mean() == other.mean() else 0.0), WELCH
    return float(stats.ttest_ind(best, other, equal_var=False).pvalue), WELCH


def versus_value(best: pd.Series, value: float) -> tuple[float, str]:
    """p-value (two-sided) of the best variant's values against one fixed value: the
    reference, a deterministic fit on the split every run shares (one-sample t-test)."""
    best = best.dropna()
    if len(best) < 2 or math.isnan(value):
        return math.nan, ""
    if best.std() == 0:
        return (1.0 if best.iloc[0] == value else 0.0), ONE_SAMPLE
    return float(stats.ttest_1samp(best, value).pvalue), ONE_SAMPLE


def other_data(runs: pd.DataFrame) -> list[str]:
    """The reference's `data.*` params whose value no trained run has: it saw other rows."""
    finished = runs[runs["status"] == "FINISHED"]
    reference, trained = finished[is_reference(finished)], finished[~is_reference(finished)]
    if reference.empty:
        return []
    own = reference.iloc[-1]
    return [
        f"{c.removeprefix('params.')}={own[c]}"
        for c in finished.columns
        if c.startswith("params.data.")
        and pd.notna(own[c])
        and trained[c].notna().any()
        and own[c] not in set(trained[c].dropna())
    ]


def data_groups(runs: pd.DataFrame, logged: dict[str, dict]) -> dict[tuple, list[str]]:
    """The finished runs that logged datasets, grouped by the data they saw: one group per
    distinct (train, val, test) digests, its runs' ids in order."""
    groups: dict[tuple, list[str]] = {}
    for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
        if run_id in logged:
            key = tuple(sorted((n, s.digest) for n, s in logged[run_id].items()))
            groups.setdefault(key, []).append(run_id)
    return groups


def same_data(runs: pd.DataFrame, logged: dict[str, dict], mixed_data: bool) -> str:
    """Refuse runs trained on different data in one table (unless `mixed_data`): the error
    names each group by its datasets and runs. Returns a note for the report ('' when all
    runs that logged datasets saw the same data)."""
    groups = data_groups(runs, logged)
    finished = runs.loc[runs["status"] == "FINISHED", "run_id"]
    unchecked = [r for r in finished if r not in logged]
    if unchecked and groups:
        log.warning(
            "%d finished run(s) logged no datasets (older runs), so whether they saw "
            "the same data cannot be checked: %s",
            len(unchecked),
            ", ".join(r[:8] for r in unchecked[:5]),
        )
    if len(groups) < 2:
        return ""

    def named(ids: list[str]) -> str:
        splits = logged[ids[0]]
        seen = ", ".join(
            f"{n} {splits[n].digest[:8]} ({splits[n].rows} rows of {splits[n].source})"
            for n in ("train", "val", "test")
            if n in splits
        )
        shown = ", ".join(r[:8] for r in ids[:5]) + (", ..." if len(ids) > 5 else "")
        return f"{len(ids)} run(s) on {seen}: {shown}"

    largest = sorted(groups.values(), key=len, reverse=True)
    described = "; ".join(f"[{i}] {named(ids)}" for i, ids in enumerate(largest, 1))
    if not mixed_data:
        raise CompareError(
            f"these runs were trained on different data ({len(groups)} groups by dataset "
            f"digest): {described}. Compare one group (sweep=<parent run id>, or another "
            "tracking.experiment), or pass mixed_data=true to compare them in one table anyway."
        )
    log.warning("comparing runs trained on different data (mixed_data=true): %s", described)
    return f"Runs trained on different data (mixed_data=true): {described}."


def run_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished run (the per-run CSV): its variant's key values and name, seed,
    run id and metrics; and the variant keys found."""
    finished = runs[runs["status"] == "FINISHED"]
    keys = variant_keys(finished)
    frame = finished[keys].astype(object).fillna("-").astype(str)
    frame = frame.set_axis(key_names(keys), axis=1)
    reference = is_reference(finished)
    if keys and reference.any():  # its name in the first key column, where the table shows it
        frame.loc[reference, :] = "-"
        frame.loc[reference, frame.columns[0]] = REFERENCE
    frame["variant"] = labels(finished, keys)
    missing = pd.Series(np.nan, index=finished.index)
    frame["seed"] = pd.to_numeric(finished.get(f"params.{SEED}", missing), errors="coerce")
    frame["run_id"] = finished["run_id"]
    mix = sorted(c.removeprefix("metrics.") for c in finished.columns if c.startswith(MIX))
    for metric in [*METRICS, *RUN_METRICS, *mix]:
        frame[metric] = pd.to_numeric(finished.get(f"metrics.{metric}", missing), errors="coerce")
    return frame, keys


def summarize(runs: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per variant, best mean test accuracy first: the key columns, `variant`, `n`,
    `<metric>_mean/_sd/_ci95`, the p-value against the best, the test, the verdict, notes."""
    frame, keys = run_table(runs)
    names = key_names(keys)
    unfinished = labels(runs[runs["status"] != "FINISHED"], keys)

    rows, accuracy = [], {}
    for variant, group in frame.groupby("variant", sort=False):
        row = {name: group[name].iloc[0] for name in names}
        row |= {"variant": variant, "n": len(group)}
        for metric in METRICS:
            mean, sd, ci = interval(group[metric].to_numpy(dtype=float))
            row |= {f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_ci95": ci}
        row["unfinished"] = int((unfinished == variant).sum())
        rows.append(row)
        accuracy[variant] = group.set_index("seed")["test_accuracy"]
    summary = (
        pd.DataFrame(rows)
        .sort_values(
            ["test_accuracy_mean", "train_reviews_per_s_mean"], ascending=False, na_position="last"
        )
        .reset_index(drop=True)
    )

    trained = summary[summary["variant"] != REFERENCE]
    best = (trained if len(trained) else summary)["variant"].iloc[0]  # the reference is not
    most = (trained if len(trained) else summary)["n"].max()  # a candidate, but a yardstick
    differs = other_data(runs)
    verdicts, tests, pvalues, notes = [], [], [], []
    for row in summary.itertuples(index=False):
        note = []
        reference = row.variant == REFERENCE and row.variant != best
        if reference and differs:
            note.append(f"other data than the trained runs: {', '.join(differs)}")
        if row.n < 2 and not reference:
            note.append(SINGLE)
        if row.n < most and not reference:
            note.append(f"fewer runs than the others ({row.n} of {most})")
        if row.unfinished:
            note.append(f"{row.unfinished} run(s) not finished, left out")
        if row.variant == best:
            p, test = math.nan, ""
        elif reference:
            p, test = versus_value(accuracy[best], accuracy[REFERENCE].iloc[-1])
        else:
            p, test = versus(accuracy[best], accuracy[row.variant])
        if row.variant == best:
            verdict = "best"
        elif math.isnan(p):
            verdict = "untested"
        else:
            verdict = "not significant" if p >= alpha else "significant"
        verdicts.append(verdict)
        tests.append(test)
        pvalues.append(p)
        notes.append("; ".join(note))
    summary["p_vs_best"], summary["test"] = pvalues, tests
    summary["vs_best"], summary["note"] = verdicts, notes
    summary = summary.drop(columns="unfinished")
    seeds = sorted(frame["seed"].dropna().unique())
    summary.attrs.update(keys=names, alpha=alpha, seeds=[f"{x:g}" for x in seeds])
    return summary


def _cell(summary: pd.Series, metric: str) -> str:
    mean, ci = summary[f"{metric}_mean"], summary[f"{metric}_ci95"]
    if pd.isna(mean):
        return "–"
    fmt = FORMATS.get(metric, "{:.3f}")
    return fmt.format(mean) + ("" if pd.isna(ci) else " ± " + fmt.format(ci))


def markdown(summary: pd.DataFrame) -> str:
    """What was compared and how, then the table: mean ± 95% CI half-width per metric."""
    names, alpha = summary.attrs["keys"], summary.attrs["alpha"]
    tests = set(summary["test"]) - {"", ONE_SAMPLE}
    test = {
        frozenset({PAIRED}): f"{PAIRED} (the variants ran the same seeds)",
        frozenset({WELCH}): f"{WELCH} (unequal variances; the seed sets differ)",
        frozenset({PAIRED, WELCH}): f"{PAIRED} where both variants ran the same seeds, "
        f"{WELCH} otherwise",
    }.get(frozenset(tests), "no test (fewer than two runs)")
    if ONE_SAMPLE in set(summary["test"]):
        test += (
            f"; `{REFERENCE}` (TF-IDF + logistic regression, `make baseline`: one "
            f"deterministic fit on the same split) by a {ONE_SAMPLE} of the best's runs "
            "against its value"
        )
    seeds = summary.attrs["seeds"]
    best = summary.loc[summary["vs_best"] == "best", "variant"].iloc[0]
    lines = [
        f"Best by mean test accuracy: **{best}**. Cells: mean ± 95% "
        "confidence interval half-width (Student t, n − 1 degrees of freedom) over the runs "
        f"of each variant (seeds {', '.join(seeds) if seeds else 'not logged'}).",
        f"`vs best`: the difference in test accuracy from the best variant, {test}, "
        f"α = {alpha:g}; **≈** marks a variant that is *not* significantly worse than the best.",
        "",
    ]
    head = [*names, "n", *METRICS.values(), "vs best", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        if row["vs_best"] == "best":
            verdict = "best"
        elif row["vs_best"] == "untested":
            verdict = "–"
        else:
            mark = "≈ " if row["vs_best"] == "not significant" else ""
            test = {PAIRED: "paired", WELCH: "Welch", ONE_SAMPLE: "one-sample"}[row["test"]]
            verdict = f"{mark}p = {row['p_vs_best']:.3f} ({test})"
        cells = [
            *(str(row[n]) for n in names),
            str(row["n"]),
            *(_cell(row, m) for m in METRICS),
            verdict,
            row["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


MARKERS = "os^Dv<>PX*ph"


def _styles(summary: pd.DataFrame) -> tuple[str | None, str | None, str | None, str]:
    """Which variant key becomes the facet, the colour and the marker (a column of `summary`,
    and the marker's legend name): the key with the fewest values splits the panels (with three
    keys or more), the one with the most gets the colours; with more than three keys the marker
    stands for the combination of the rest."""
    names = sorted(summary.attrs["keys"], key=lambda k: summary[k].nunique())
    if not names:
        return None, None, None, ""
    facet = names.pop(0) if len(names) >= 3 else None
    colour = names.pop()
    if len(names) > 1:
        summary["_marker"] = summary[names].astype(str).agg("/".join, axis=1)
        return facet, colour, "_marker", "/".join(names)
    return facet, colour, (names[0] if names else None), (names[0] if names else "")


def _palette(values) -> dict:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
    return {v: cmap(i % cmap.N) for i, v in enumerate(values)}


def figures(summary: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per-metric intervals for every variant (sorted, one row each, so 32 stay readable);
    accuracy vs throughput and accuracy by review length, variants as facet/colour/marker and
    the reference (it has no throughput) as a dashed line in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = [
        m
        for m in ("test_accuracy", "served_accuracy", "train_reviews_per_s", "padding_efficiency")
        if summary[f"{m}_mean"].notna().any()
    ]
    order = summary.iloc[::-1]  # best at the top
    y = np.arange(len(order))
    status = {
        "best": "tab:red",
        "not significant": "tab:orange",
        "significant": "tab:gray",
        "untested": "tab:blue",
    }
    # Not textclf.evaluate's save_figure: that module imports TensorFlow (seconds) for nothing.
    fig, axes = plt.subplots(
        1,
        len(shown),
        sharey=True,
        squeeze=False,
        layout="constrained",
        figsize=(3.6 * len(shown) + 4, 2 + 0.3 * len(order)),
    )
    for ax, metric in zip(axes[0], shown, strict=True):
        ax.errorbar(
            order[f"{metric}_mean"],
            y,
            xerr=order[f"{metric}_ci95"].fillna(0),
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
        ax.scatter(order[f"{metric}_mean"], y, c=[status[v] for v in order["vs_best"]], zorder=3)
        ax.set(xlabel=METRICS[metric] + " (mean ± 95% CI)")
        ax.grid(axis="x", alpha=0.3)
    best = summary[summary["vs_best"] == "best"].iloc[0]
    if not pd.isna(best["test_accuracy_ci95"]):
        axes[0][0].axvspan(
            best["test_accuracy_mean"] - best["test_accuracy_ci95"],
            best["test_accuracy_mean"] + best["test_accuracy_ci95"],
            color="tab:red",
            alpha=0.1,
        )
    axes[0][0].set_yticks(y, order["variant"], fontsize=8)
    fig.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=c, label=s)
            for s, c in status.items()
            if s in set(summary["vs_best"])
        ],
        fontsize=8,
        title="test acc. vs best",
        title_fontsize=8,
        loc="outside right upper",
    )
    fig.suptitle("variants over seeds, best mean test accuracy at the top")
    fig.savefig(out_dir / "comparison.png", dpi=110)
    plt.close(fig)
    paths = [out_dir / "comparison.png"]

    reference = summary[summary["variant"] == REFERENCE]
    summary, attrs = summary[summary["variant"] != REFERENCE].copy(), summary.attrs
    summary.attrs = attrs
    facet, colour, marker, marker_name = _styles(summary)
    facets = (sorted(summary[facet].unique()) if facet else None) or [None]
    dashed: dict[str, Any] = {"ls": "--", "color": "black", "lw": 1}
    colours = _palette(sorted(summary[colour].unique())) if colour else {}
    markers = (
        {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(sorted(summary[marker].unique()))}
        if marker
        else {}
    )

    def style(row) -> dict:
        return {
            "color": colours.get(row[colour], "tab:blue") if colour else "tab:blue",
            "marker": markers.get(row[marker], "o") if marker else "o",
        }

    def legend(fig) -> None:
        handles = [
            Line2D([], [], marker="o", ls="", color=c, label=f"{colour}={v}")
            for v, c in colours.items()
        ]
        handles += [
            Line2D([], [], marker=m, ls="", color="black", label=f"{marker_name}={v}")
            for v, m in markers.items()
        ]
        handles += [Line2D([], [], **dashed, label=REFERENCE)] if len(reference) else []
        if handles:
            fig.legend(handles=handles, loc="outside right upper", fontsize=8)

    def panels(title: str):
        fig, axes = plt.subplots(
            1,
            len(facets),
            sharey=True,
            squeeze=False,
            figsize=(5 * len(facets) + 2.5, 4.8),
            layout="constrained",
        )
        for ax, value in zip(axes[0], facets, strict=True):
            ax.set_title(f"{facet}={value}" if facet else title, fontsize=10)
            ax.grid(alpha=0.3)
        if facet:
            fig.suptitle(title)
        return fig, axes[0]

    def save(fig, axes, name: str) -> None:
        axes[0].set_ylabel("test accuracy")
        legend(fig)
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)

    fig, axes = panels("accuracy vs throughput (mean ± 95% CI)")
    for ax, value in zip(axes, facets, strict=True):
        part = summary if facet is None else summary[summary[facet] == value]
        for _, row in part.iterrows():
            ax.errorbar(
                row["train_reviews_per_s_mean"],
                row["test_accuracy_mean"],
                xerr=np.nan_to_num(row["train_reviews_per_s_ci95"]),
                yerr=np.nan_to_num(row["test_accuracy_ci95"]),
                ls="",
                capsize=2,
                markersize=7,
                alpha=0.8,
                **style(row),
            )
        for accuracy in reference["test_accuracy_mean"]:
            ax.axhline(accuracy, **dashed)
        ax.set(xlabel="training reviews / s (steady state)")
    save(fig, axes, "accuracy_vs_throughput.png")

    length_cols = sorted(
        (c for c in runs.columns if c.startswith("metrics.test_accuracy_len_")),
        key=lambda c: int(c.rsplit("_", 1)[1].split("-")[0]),
    )
    if length_cols:
        finished = runs[runs["status"] == "FINISHED"]
        means = (
            finished[length_cols]
            .astype(float)
            .groupby(labels(finished, variant_keys(finished)))
            .mean()
        )
        names = [c.rsplit("_", 1)[1] for c in length_cols]
        fig, axes = panels("test accuracy by review length (mean over seeds)")
        for ax, value in zip(axes, facets, strict=True):
            part = summary if facet is None else summary[summary[facet] == value]
            for _, row in part.iterrows():
                if row["variant"] in means.index:
                    ax.plot(
                        range(len(names)),
                        means.loc[row["variant"]].to_numpy(),
                        alpha=0.8,
                        **style(row),
                    )
            if len(reference) and REFERENCE in means.index:
                ax.plot(range(len(names)), means.loc[REFERENCE].to_numpy(), **dashed)
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
            ax.set(xlabel="review length (tokens)")
        save(fig, axes, "accuracy_by_length.png")
    return paths


def main(
    uri: str,
    experiment: str,
    sweep: str,
    out_dir: Path,
    alpha: float = 0.05,
    mixed_data: bool = False,
) -> pd.DataFrame:
    runs, parent = select_runs(uri, experiment, sweep)
    note = same_data(runs, tracking.datasets(uri, experiment, list(runs["run_id"])), mixed_data)
    summary = summarize(runs, alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(summary) + (f"\n{note}\n" if note else "")
    (out_dir / "comparison.md").write_text(text)
    summary[CSV_COLUMNS].to_csv(out_dir / "comparison.csv", index=False)
    run_table(runs)[0].sort_values(["variant", "seed"]).to_csv(out_dir / "runs.csv", index=False)
    paths = [
        out_dir / "comparison.md",
        out_dir / "comparison.csv",
        out_dir / "runs.csv",
        *figures(summary, runs, out_dir),
    ]
    if parent:
        tracking.log_artifacts(uri, parent, paths, "comparison")
    print(text)
    for row in summary[summary["note"] != ""].itertuples(index=False):
        log.warning("variant %s: %s", row.variant, row.note)
    log.info(
        "comparison of %d finished runs in %d variants written to %s%s",
        int(summary["n"].sum()),
        len(summary),
        out_dir,
        f" and logged to parent run {parent}" if parent else "",
    )
    return summary
