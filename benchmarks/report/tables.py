"""The report's tables: ``summary.csv`` (``summary_table``) and ``summary.md``.

``summary_table`` ranks the estimators per objective, gradient coordinate and setting by
variance, with bias ± se, a flag where the bias is significant, the time per estimate and
the work-normalised variance; ``display_table`` formats it for people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchmarks.collect import Problem, Runs
from benchmarks.report.formatting import fmt, format_number, format_seconds, format_z
from benchmarks.report.frames import (
    completed,
    first_appearance,
    in_run_order,
    is_group,
    not_measured,
    ordered_estimators,
    ordered_objectives,
    pool,
    train_value_column,
)
from benchmarks.significance import bonferroni_z
from benchmarks.summaries import swept_columns

# Family-wise false-flag rate of the "bias is significant" column, over the rows of a table
# that are tested (single coordinates with an exact gradient).
FAMILY_WISE_RATE = 0.05


def bias_threshold(n_tests: int, rate: float = FAMILY_WISE_RATE) -> float:
    """|bias| / se above which a row is flagged: two-sided, Bonferroni over ``n_tests`` rows."""
    return bonferroni_z(rate, n_tests)


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per objective, gradient coordinate, n_samples and swept setting: estimators ranked.

    Columns: ``objective, param, n_samples, <swept settings>, rank, estimator, var_grad,
    bias, bias_se, bias_z, bias_significant, bias_chi2, time_per_estimate_s, work_normalized_var,
    rank_work, true_grad, replicates, seeds``. ``rank`` is 1 for the lowest variance;
    ``rank_work`` ranks the work-normalised variance (variance × time per estimate, the
    variance an estimator reaches in one second of compute). Objectives, and estimators of
    equal rank, come in the order of the runs.

    ``bias_z`` is bias / se for a single coordinate, and ``bias_significant`` is
    ``|bias_z| > bias_threshold(m)`` over the m coordinate rows with a known true gradient:
    a 5% family-wise false-flag rate for unbiased estimators (Bonferroni, normal
    approximation). The threshold is also in ``table.attrs["bias_threshold"]``.

    A group row (a model's parameter groups and ``all``) is not tested (``bias_z`` and
    ``bias_significant`` are missing): its bias is a root-mean-square, ≈ se even when
    unbiased, and a χ² test over thousands of coordinates flags unbiased estimators at the
    replicate counts a sweep affords (heavy tails inflate the mean z²). Its ``bias_chi2``,
    the mean z² over the coordinates (about 1 when unbiased), is shown instead.
    """
    data = in_run_order(completed(records))
    settings = swept_columns(data)
    keys = ["objective", "param", "n_samples", *settings]
    columns = [*keys, "rank", "estimator", "var_grad", "bias", "bias_se", "bias_z",
               "bias_significant", "bias_chi2", "time_per_estimate_s", "work_normalized_var",
               "rank_work", "true_grad", "replicates", "seeds"]  # fmt: skip
    if data.empty:
        table = pd.DataFrame(columns=columns)
        table.attrs["bias_threshold"] = bias_threshold(0)
        return table
    table = pool(data, [*keys, "estimator"])
    by_cell = table.groupby(keys, sort=False, dropna=False)
    table["rank"] = by_cell["var_grad"].rank(method="min").astype(int)
    table["rank_work"] = by_cell["work_normalized_var"].rank(method="min").astype("Int64")
    group = is_group(table)
    table["bias_z"] = (table["bias"] / table["bias_se"]).where(~group)
    testable = np.isfinite(table["bias_z"])
    threshold = bias_threshold(int(testable.sum()))
    flags = pd.Series(testable & (table["bias_z"].abs() > threshold), dtype="boolean")
    table["bias_significant"] = flags.where(~group, pd.NA)
    table["bias_chi2"] = table["bias_chi2"].where(group)
    order = {
        "objective": {name: i for i, name in enumerate(ordered_objectives(data))},
        "estimator": {name: i for i, name in enumerate(ordered_estimators(data))},
    }
    table = table.sort_values(
        [*keys, "rank", "estimator"], key=lambda s: s.map(order[s.name]) if s.name in order else s
    )
    table = table[columns].reset_index(drop=True)
    table.attrs["bias_threshold"] = threshold
    return table


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary formatted for people: bias ± se, units on times, a flag column."""
    settings = [c for c in summary.columns if "." in c]
    return pd.DataFrame({
        "param": summary["param"],
        "n": summary["n_samples"],
        **{c: summary[c].map(format_number) for c in settings},
        "rank": summary["rank"],
        "estimator": summary["estimator"],
        "variance": summary["var_grad"].map(fmt),
        "bias ± se": [
            "–" if not math.isfinite(b) else f"{b:.2g} ± {se:.2g}"
            for b, se in zip(summary["bias"], summary["bias_se"], strict=True)
        ],
        "z": [
            f"χ²/k {c:.2g}" if math.isfinite(c) else format_z(z)
            for z, c in zip(summary["bias_z"], summary["bias_chi2"].astype(float), strict=True)
        ],
        "biased?": summary["bias_significant"].map(lambda flag: "YES" if flag is True else ""),
        "time/estimate": summary["time_per_estimate_s"].map(format_seconds),
        "var × time (s)": summary["work_normalized_var"].map(fmt),
        "rank (var × time)": summary["rank_work"],
    })  # fmt: skip


def markdown(frame: pd.DataFrame) -> str:
    cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def threshold_sentence(summary: pd.DataFrame) -> str:
    """How the "biased?" column is decided, for the text above the tables."""
    threshold = summary.attrs.get("bias_threshold", bias_threshold(0))
    tested = int(np.isfinite(summary["bias_z"].astype(float)).sum()) if len(summary) else 0
    sentence = (
        f"“biased?” is YES where z = bias / se has |z| > {threshold:.2f}: a two-sided z-test "
        f"at a {FAMILY_WISE_RATE:.0%} family-wise false-flag rate, Bonferroni over the "
        f"{tested} rows with an exact gradient (normal approximation; heavy-tailed "
        "estimators at small replicates can still trip it)."
        if tested
        else "No single-coordinate row has an exact gradient: bias is not tested."
    )
    if len(summary) and summary["bias_chi2"].notna().any():
        groups = first_appearance(summary[summary["bias_chi2"].notna()], "param")
        sentence += (
            f" Groups of coordinates ({', '.join(groups)}) are not flagged: their bias is a "
            "root-mean-square, about se even when unbiased, and a χ² test over thousands of "
            "coordinates flags unbiased estimators at these replicate counts; the column "
            "shows χ²/k, their mean z², about 1 when unbiased."
        )
    return sentence


def summary_markdown(summary: pd.DataFrame, runs: Runs) -> str:
    """summary.md: a table per objective, then the cells and runs without results."""
    intro = (
        "Estimators ranked by the variance of one gradient estimate (rank 1 = lowest), per "
        "objective, gradient coordinate (`param`), `n` (n_samples) and swept setting. "
        "`var × time` is the work-normalised variance (variance × seconds per estimate). "
        + threshold_sentence(summary)
        if len(summary)
        else "No completed variance measurements at fixed parameters."
    )
    parts = ["# gradbench summary", "", intro]
    table = display_table(summary)
    for objective in ordered_objectives(summary):
        parts += ["", f"## {objective}", "", markdown(table[summary["objective"] == objective])]
    trained = training_table(runs.train)
    if len(trained):
        parts += ["", "## Training runs", "", markdown(trained)]
    missing = not_measured(runs.records)
    if len(missing):
        parts += ["", "## Cells without results", "", markdown(missing.fillna("–"))]
    if runs.problems:
        parts += ["", "## Unreadable runs", "", markdown(problems_frame(runs.problems))]
    return "\n".join(parts) + "\n"


def training_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per objective and estimator: runs, steps, training seconds and the last value of the
    training objective (mean over runs)."""
    if train.empty or not {"objective", "estimator", "step"} <= set(train.columns):
        return pd.DataFrame()
    rows = []
    for (objective, estimator), frame in in_run_order(train).groupby(
        ["objective", "estimator"], sort=False
    ):
        column = train_value_column(frame)
        runs = frame.groupby("run_dir", sort=False) if "run_dir" in frame else [(0, frame)]
        last = pd.DataFrame([run.sort_values("step").iloc[-1] for _, run in runs])
        finals = (
            [run.dropna(subset=[column]).sort_values("step") for _, run in runs] if column else []
        )
        row = {
            "objective": objective,
            "estimator": estimator,
            "runs": len(last),
            "steps": int(last["step"].max()),
        }
        if "wall_time_s" in last:
            row["training time (s)"] = fmt(float(last["wall_time_s"].mean()))
        if column:
            values = [float(f[column].iloc[-1]) for f in finals if len(f)]
            row["final value"] = fmt(float(np.mean(values))) if values else "–"
            row["of"] = column
        rows.append(row)
    return pd.DataFrame(rows)


def problems_frame(problems: Sequence[Problem]) -> pd.DataFrame:
    return pd.DataFrame(
        [(p.run_dir, p.file, p.reason) for p in problems], columns=["run", "file", "reason"]
    )
