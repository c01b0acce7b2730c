"""``gradbench report DIR``: tables and figures from a folder of runs.

Reads results, never runs estimators. ``benchmarks.records.scan_runs`` gathers every
``records.parquet`` (and ``train.parquet``) below DIR into tidy frames, one row per (cell,
parameter), with each run's config joined as dotted columns (``objective.sigma``). From
those frames this module builds

- ``summary_table``: per objective, gradient coordinate and setting, the estimators ranked
  by variance, with bias ± se, a flag where the bias is significant, the time per estimate
  and the work-normalised variance;
- ``fig_*``: pure functions ``frame -> matplotlib Figure``, or ``None`` when the frame
  holds no data for that figure. They draw on ``matplotlib.figure.Figure`` objects (no
  pyplot state) inside one style, ``STYLE``, so they look the same from the CLI, a test
  or a notebook;
- ``write_report``: ``DIR/report/`` with ``records.parquet``, ``summary.csv``,
  ``summary.md``, the figures and an ``index.html`` that opens without a server.

Intervals: a variance estimated from R replicates is drawn with the band
``var · exp(±2 · sqrt(2 / (R − 1)))``, the normal-theory ≈95% interval of a sample
variance (heavy-tailed estimators, REINFORCE at small n above all, have wider ones). Bias
is drawn with ±2 standard errors, ``bias_se = sqrt(var / R)``.
"""

from __future__ import annotations

import argparse
import functools
import html
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from benchmarks.collect import REPORT_MARKER, Problem, Runs, scan_runs
from benchmarks.errors import UsageError
from benchmarks.storage import write_parquet_atomic
from benchmarks.summaries import swept_columns

REPORT_DIR = "report"
# Family-wise false-flag rate of the "bias is significant" column, over the rows of a table
# that are tested (single coordinates with an exact gradient).
FAMILY_WISE_RATE = 0.05
# Known estimators first, in this order (the classics, then their baselines); others after.
# Colours follow PALETTE_ORDER below, so an estimator has the same colour in every report.
ESTIMATOR_ORDER = ["reinforce", "reinforce_loo", "reinforce_ema", "reinforce_optimal", "reparam",
                   "measure_valued", "gumbel_softmax", "straight_through", "reinforce_learned",
                   "arm", "disarm", "vimco", "iwae"]  # fmt: skip
# Rows of model records that stand for a group of coordinates.
GROUP_PARAMS = ["encoder", "decoder", "all"]
OBJECTIVE_ORDER = ["gaussian_quadratic", "gaussian_cosine", "bernoulli_threshold",
                   "categorical_linear"]  # fmt: skip
# Colour slots: as ESTIMATOR_ORDER, but reparam before reinforce_optimal, so that the two
# close baselines (leave-one-out, optimal) do not get the palette's two oranges.
PALETTE_ORDER = [ESTIMATOR_ORDER[i] for i in (0, 1, 2, 4, 3, *range(5, len(ESTIMATOR_ORDER)))]
# The one style of every figure: seaborn's paper context on a white grid.
STYLE = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper"),
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8.5,
    "figure.titlesize": 10,
}
PANEL = (3.0, 2.4)  # inches per panel
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*", "<", ">"]
# Columns of a training log (benchmarks/train.py writes train.parquet) that can be drawn
# against wall-clock time, preferred first, and their axis labels.
TRAIN_VALUE_COLUMNS = ["heldout_elbo", "train_elbo", "elbo", "optimality_gap", "loss"]
TRAIN_VALUE_LABELS = {
    "heldout_elbo": "held-out ELBO (nats)",
    "train_elbo": "training ELBO (nats)",
    "elbo": "ELBO (nats)",
    "optimality_gap": "L(θ) − inf L",
    "loss": "loss",
}
TRAIN_LOG10_VAR_COLUMNS = ["log10_var", "grad_log10_var", "log10_var_grad"]
TRAIN_VAR_COLUMNS = ["var_grad", "grad_var"]


def styled(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """Draw ``fn``'s figure inside ``STYLE`` without touching global matplotlib state."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- frames


def completed(records: pd.DataFrame) -> pd.DataFrame:
    """Rows of cells that measured something: status ``ok`` and a finite variance."""
    if records.empty or "status" not in records or "var_grad" not in records:
        return records.iloc[0:0]
    ok = (records["status"] == "ok") & np.isfinite(records["var_grad"].astype(float))
    return records[ok]


def _numeric(frame: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(
        frame[column]
    )


def hold_fixed(records: pd.DataFrame, free: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Keep, per objective, one value of every swept setting not in ``free``.

    A figure of variance against ``n_samples`` from a sweep that also varied ``sigma`` would
    otherwise average over sigma. The value kept is the most frequent one (ties: the
    largest). Returns the rows kept and notes such as ``"objective.sigma = 1"``.
    """
    settings = [c for c in ["n_samples", *swept_columns(records)] if c not in free]
    kept, notes = [], []
    for _, rows in records.groupby("objective", sort=False):
        for column in settings:
            values = rows[column].dropna()
            if values.nunique() < 2:
                continue
            counts = values.value_counts()
            best = max(counts[counts == counts.max()].index, key=_sort_key)
            rows = rows[rows[column].isna() | (rows[column] == best)]
            notes.append(f"{column} = {_format_number(best)}")
        kept.append(rows)
    frame = pd.concat(kept) if kept else records
    return frame, sorted(set(notes))


def _sort_key(value):
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def pool(records: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Combine rows that differ only in seed (or run): independent measurements of one cell.

    The variance is the mean over runs, the replicates add up, the bias is the mean and its
    standard error ``sqrt(Σ se²) / k``; the time per estimate is the median. For group rows
    (models), ``bias_chi2`` (mean z² over a group's coordinates) is averaged and the
    coordinates ``n_coords`` add up, which keeps ``n_coords · bias_chi2`` a χ² statistic.
    """
    keys = list(keys)
    nan = pd.Series(np.nan, index=records.index)
    frame = records.assign(
        _se2=records["bias_se"] ** 2,
        _seed=records.get("seed", 0),
        _time=records["time_per_estimate_s"],
        _bias_rows=np.isfinite(records["bias"].astype(float)),
        bias_chi2=records.get("bias_chi2", nan).astype(float),
        n_coords=records.get("n_coords", nan).astype(float),
    )
    pooled = frame.groupby(keys, sort=False, dropna=False, observed=True).agg(
        var_grad=("var_grad", "mean"),
        bias=("bias", "mean"),
        _se2=("_se2", "sum"),
        runs=("var_grad", "size"),
        replicates=("replicates", "sum"),
        seeds=("_seed", "nunique"),
        true_grad=("true_grad", "first"),
        time_per_estimate_s=("_time", "median"),
        _bias_rows=("_bias_rows", "sum"),
        bias_chi2=("bias_chi2", "mean"),
        n_coords=("n_coords", lambda k: k.sum(min_count=1)),
    )
    pooled["bias_se"] = np.sqrt(pooled["_se2"]) / pooled["runs"]
    pooled.loc[pooled["_bias_rows"] == 0, ["bias", "bias_se"]] = np.nan
    pooled["work_normalized_var"] = pooled["var_grad"] * pooled["time_per_estimate_s"]
    return pooled.drop(columns=["_se2", "_bias_rows"]).reset_index()


def variance_band(var: pd.Series, replicates: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Normal-theory ≈95% interval of a sample variance from ``replicates`` estimates."""
    half_width = 2 * np.sqrt(2 / (replicates.astype(float) - 1))
    return var * np.exp(-half_width), var * np.exp(half_width)


def bias_threshold(n_tests: int, rate: float = FAMILY_WISE_RATE) -> float:
    """|bias| / se above which a row is flagged: two-sided, Bonferroni over ``n_tests`` rows."""
    return NormalDist().inv_cdf(1 - rate / (2 * max(n_tests, 1)))


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per objective, gradient coordinate, n_samples and swept setting: estimators ranked.

    Columns: ``objective, param, n_samples, <swept settings>, rank, estimator, var_grad,
    bias, bias_se, bias_z, bias_significant, bias_chi2, time_per_estimate_s, work_normalized_var,
    rank_work, true_grad, replicates, seeds``. ``rank`` is 1 for the lowest variance;
    ``rank_work`` ranks the work-normalised variance (variance × time per estimate, the
    variance an estimator reaches in one second of compute).

    ``bias_z`` is bias / se for a single coordinate, and ``bias_significant`` is
    ``|bias_z| > bias_threshold(m)`` over the m coordinate rows with a known true gradient:
    a 5% family-wise false-flag rate for unbiased estimators (Bonferroni, normal
    approximation). The threshold is also in ``table.attrs["bias_threshold"]``.

    A group row (a model's ``encoder``, ``decoder``, ``all``) is not tested (``bias_z`` and
    ``bias_significant`` are missing): its bias is a root-mean-square, ≈ se even when
    unbiased, and a χ² test over thousands of coordinates flags unbiased estimators at the
    replicate counts a sweep affords (heavy tails inflate the mean z²). Its ``bias_chi2``,
    the mean z² over the coordinates (about 1 when unbiased), is shown instead.
    """
    data = completed(records)
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
    group = table["param"].isin(GROUP_PARAMS) | (table["n_coords"] > 1)
    table["bias_z"] = (table["bias"] / table["bias_se"]).where(~group)
    testable = np.isfinite(table["bias_z"])
    threshold = bias_threshold(int(testable.sum()))
    flags = pd.Series(testable & (table["bias_z"].abs() > threshold), dtype="boolean")
    table["bias_significant"] = flags.where(~group, pd.NA)
    table["bias_chi2"] = table["bias_chi2"].where(group)
    order = {name: i for i, name in enumerate(ordered_estimators(table))}
    table = table.sort_values(
        [*keys, "rank", "estimator"], key=lambda s: s.map(order) if s.name == "estimator" else s
    )
    table = table[columns].reset_index(drop=True)
    table.attrs["bias_threshold"] = threshold
    return table


def not_measured(records: pd.DataFrame) -> pd.DataFrame:
    """One row per cell whose status is not ``ok`` (skipped, failed, non-finite)."""
    if records.empty:
        return pd.DataFrame(columns=["run_dir", "objective", "estimator", "n_samples", "status"])
    rows = records[records["status"] != "ok"]
    columns = [c for c in ["run_dir", "objective", "estimator", "n_samples"] if c in rows]
    columns += [c for c in swept_columns(records) if c in rows] + ["status"]
    return rows[columns].drop_duplicates().reset_index(drop=True)


def ordered_objectives(frame: pd.DataFrame) -> list[str]:
    """The toys of the contract first, in its order, then the others alphabetically."""
    names = set(frame["objective"].dropna().astype(str))
    known = [n for n in OBJECTIVE_ORDER if n in names]
    return known + sorted(names - set(known))


def _panels(frame: pd.DataFrame, keys) -> list:
    """``groupby(keys)`` groups, objectives in ``ordered_objectives`` order, the rest
    (parameters) in order of appearance."""
    groups = list(frame.groupby(keys, sort=False))
    rank = {name: i for i, name in enumerate(ordered_objectives(frame))}
    first = (lambda key: key[0]) if isinstance(keys, list) else (lambda key: key)
    return sorted(groups, key=lambda group: rank[str(first(group[0]))])


def ordered_estimators(frame: pd.DataFrame) -> list[str]:
    names = set(frame["estimator"].dropna().astype(str))
    known = [n for n in ESTIMATOR_ORDER if n in names]
    return known + sorted(names - set(known))


def estimator_styles(frame: pd.DataFrame) -> dict[str, tuple]:
    """Colour and marker per estimator: fixed for the names in ``ESTIMATOR_ORDER``, then
    in alphabetical order for the others in ``frame``."""
    others = [n for n in ordered_estimators(frame) if n not in ESTIMATOR_ORDER]
    names = PALETTE_ORDER + others
    dark = sns.color_palette("dark", 10)  # after the ten colour-blind-safe ones: new hues first
    colors = sns.color_palette("colorblind", 10) + [dark[i] for i in (4, 8, 2, 6, 0, 1, 3, 5, 7, 9)]
    return {n: (colors[i % len(colors)], MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


# --------------------------------------------------------------------------- drawing


def _grid(n: int, max_cols: int = 4) -> tuple[Figure, list]:
    ncols = min(n, max_cols)
    nrows = math.ceil(n / ncols)
    width = max(PANEL[0] * ncols + 1.4, 5.5)
    fig = Figure(figsize=(width, PANEL[1] * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _label(axes: list, xlabel: str, ylabel: str) -> None:
    """Axis labels on the outer panels only: y on the first column, x on the lowest row."""
    n = len(axes)
    for i, ax in enumerate(axes):
        spec = ax.get_subplotspec()
        ncols = spec.get_gridspec().ncols
        ax.set_ylabel(ylabel if spec.is_first_col() else "")
        ax.set_xlabel(xlabel if i + ncols >= n else "")


def _panel_title(objective: str, param: str | None = None) -> str:
    return objective if param is None else f"{objective}\n∂/∂{param}"


def _finish(fig: Figure, axes: list, title: str, notes: Sequence[str] = (), legend_title=None):
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    known = {name: i for i, name in enumerate(ESTIMATOR_ORDER)}
    labels.sort(key=lambda label: (label not in known, known.get(label, 0)))
    if all(label.lstrip("-").isdigit() for label in labels):  # n_samples
        labels.sort(key=int)
    if handles:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside right center",
            title=legend_title,
            frameon=False,
        )
    if notes:
        title += "\n" + ", ".join(notes)
    fig.suptitle(title)
    return fig


def _log_safe(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in frame:
        return frame.iloc[0:0]
    values = frame[column].astype(float)
    return frame[np.isfinite(values) & (values > 0)]


def _line_with_band(ax, x, y, lo, hi, color, marker, label):
    ax.plot(x, y, marker=marker, color=color, label=label, lw=1.3, ms=4)
    if lo is not None:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _categorical(ax, names, values, styles):
    """A single setting: one point per estimator along the x axis."""
    for i, name in enumerate(names):
        color, marker = styles[name]
        ax.plot([i], [values[name]], marker=marker, color=color, ls="", ms=6, label=name)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(names) - 0.4)


def _constant_notes(data: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """``"n_samples = 10"`` for settings that have a single value in ``data``."""
    return [
        f"{c} = {_format_number(data[c].iloc[0])}"
        for c in columns
        if c in data and len(data) and data[c].nunique(dropna=False) == 1
    ]


@styled
def fig_variance_vs_n_samples(records: pd.DataFrame) -> Figure | None:
    """Variance of one estimate against n_samples (log-log), a panel per objective and
    gradient coordinate, a line per estimator, with a dotted ∝ 1/n guide."""
    data = _log_safe(completed(records), "var_grad")
    if data.empty or data["n_samples"].nunique() < 2:
        return None
    styles = estimator_styles(records)
    data, notes = hold_fixed(data, free=["n_samples"])
    pooled = pool(data, ["objective", "param", "estimator", "n_samples"])
    panels = _panels(pooled, ["objective", "param"])
    fig, axes = _grid(len(panels))
    for ax, ((objective, param), panel) in zip(axes, panels, strict=True):
        for name in ordered_estimators(panel):
            rows = panel[panel["estimator"] == name].sort_values("n_samples")
            lo, hi = variance_band(rows["var_grad"], rows["replicates"])
            _line_with_band(ax, rows["n_samples"], rows["var_grad"], lo, hi, *styles[name], name)
        n = np.array(sorted(panel["n_samples"].unique()), dtype=float)
        top = panel.loc[panel["n_samples"] == n[0], "var_grad"].max()
        ax.plot(n, top * n[0] / n, ls=":", color="0.45", lw=1, label="∝ 1/n")
        ax.set(xscale="log", yscale="log", title=_panel_title(objective, param))
    _label(axes, "n_samples (draws per estimate)", "variance of one estimate")
    return _finish(fig, axes, "Gradient variance against samples per estimate", notes)


def objective_parameters(records: pd.DataFrame) -> list[str]:
    """Swept numeric objective settings (``objective.sigma``...), most values first."""
    data = completed(records)
    columns = [c for c in swept_columns(data) if c.startswith("objective.") and _numeric(data, c)]
    return sorted(columns, key=lambda c: -data[c].nunique())


@styled
def fig_variance_vs_parameter(records: pd.DataFrame, parameter: str | None = None) -> Figure | None:
    """Variance against a swept objective setting, a line per estimator (Mohamed et al.
    2020, Fig. 2): a panel per objective and gradient coordinate, log variance axis."""
    candidates = objective_parameters(records)
    if parameter is None and candidates:
        parameter = candidates[0]
    if parameter not in candidates:
        return None
    styles = estimator_styles(records)
    data = _log_safe(completed(records), "var_grad")
    data = data[data[parameter].notna()]
    data, notes = hold_fixed(data, free=[parameter])
    notes = list(dict.fromkeys(notes + _constant_notes(data, ["n_samples"])))
    pooled = pool(data, ["objective", "param", "estimator", parameter])
    lines = pooled.groupby(["objective", "param", "estimator"])[parameter].nunique()
    if lines.empty or lines.max() < 2:  # swept only where other settings were not held
        return None
    panels = _panels(pooled, ["objective", "param"])
    fig, axes = _grid(len(panels))
    values = pooled[parameter]
    log_x = values.min() > 0 and values.max() / values.min() >= 20
    for ax, ((objective, param), panel) in zip(axes, panels, strict=True):
        for name in ordered_estimators(panel):
            rows = panel[panel["estimator"] == name].sort_values(parameter)
            lo, hi = variance_band(rows["var_grad"], rows["replicates"])
            _line_with_band(ax, rows[parameter], rows["var_grad"], lo, hi, *styles[name], name)
        ax.set(xscale="log" if log_x else "linear", yscale="log")
        ax.set(title=_panel_title(objective, param))
    name = parameter.removeprefix("objective.")
    _label(axes, f"{name} ({parameter})", "variance of one estimate")
    return _finish(fig, axes, f"Gradient variance against {name}", notes)


@styled
def fig_bias(records: pd.DataFrame) -> Figure | None:
    """Bias ± 2 se per estimator, a panel per objective and gradient coordinate, a colour
    per n_samples. Estimators whose records say they are biased carry a ``*``."""
    data = completed(records)
    if data.empty or "bias" not in data:
        return None
    data = data[np.isfinite(data["bias"].astype(float))]
    if data.empty:
        return None
    data, notes = hold_fixed(data, free=["n_samples"])
    pooled = pool(data, ["objective", "param", "estimator", "n_samples"])
    biased = set()
    if "unbiased" in records:
        flags = records["unbiased"].astype("boolean")
        biased = set(records.loc[flags.eq(False).fillna(False), "estimator"])
    sizes = sorted(pooled["n_samples"].unique())
    colors = dict(zip(sizes, sns.color_palette("flare", len(sizes)), strict=True))
    panels = _panels(pooled, ["objective", "param"])
    fig, axes = _grid(len(panels))
    height = 0.7 / len(sizes)
    for ax, ((objective, param), panel) in zip(axes, panels, strict=True):
        names = ordered_estimators(panel)
        where = {name: i for i, name in enumerate(names)}
        for j, n in enumerate(sizes):
            rows = panel[panel["n_samples"] == n]
            if rows.empty:
                continue
            y = rows["estimator"].map(where).astype(float) + (j - (len(sizes) - 1) / 2) * height
            ax.errorbar(rows["bias"], y, xerr=2 * rows["bias_se"], fmt="o", ms=3.5, capsize=2,
                        color=colors[n], label=f"{n}", lw=1)  # fmt: skip
        ax.axvline(0, color="0.3", lw=0.8, zorder=0)
        labels = [f"{name}*" if name in biased else name for name in names]
        ax.set_yticks(range(len(names)), labels)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set(title=_panel_title(objective, param))
    _label(axes, "bias (mean − exact), ± 2 se", "")
    title = "Bias of the gradient estimate, ± 2 standard errors"
    if biased:
        title += "  (* biased by design)"
    return _finish(fig, axes, title, notes, legend_title="n_samples")


@styled
def fig_time_per_estimate(records: pd.DataFrame) -> Figure | None:
    """Wall-clock time of one gradient estimate against n_samples, a panel per objective."""
    data = _log_safe(completed(records), "time_per_estimate_s")
    if data.empty:
        return None
    styles = estimator_styles(records)
    data, notes = hold_fixed(data, free=["n_samples"])
    cells = data.drop_duplicates([c for c in ["run_dir", "objective", "estimator"] if c in data])
    pooled = pool(cells, ["objective", "estimator", "n_samples"])
    panels = _panels(pooled, "objective")
    fig, axes = _grid(len(panels))
    _label(
        axes, "n_samples (draws per estimate)", "time per estimate (s)"
    )  # before: panels may clear x
    for ax, (objective, panel) in zip(axes, panels, strict=True):
        _cost_panel(ax, panel, "time_per_estimate_s", styles)
        ax.set(title=_panel_title(objective))
    notes = list(dict.fromkeys(notes + _constant_notes(pooled, ["n_samples"])))
    return _finish(fig, axes, "Cost of one gradient estimate (median wall-clock)", notes)


@styled
def fig_work_normalized_variance(records: pd.DataFrame) -> Figure | None:
    """Variance × time per estimate (lower is better per second of compute) against
    n_samples, a panel per objective and gradient coordinate."""
    data = _log_safe(completed(records), "time_per_estimate_s")
    if data.empty:
        return None
    data = _log_safe(data.assign(_wnv=data["var_grad"] * data["time_per_estimate_s"]), "_wnv")
    if data.empty:
        return None
    styles = estimator_styles(records)
    data, notes = hold_fixed(data, free=["n_samples"])
    pooled = pool(data, ["objective", "param", "estimator", "n_samples"])
    panels = _panels(pooled, ["objective", "param"])
    fig, axes = _grid(len(panels))
    _label(
        axes, "n_samples (draws per estimate)", "variance × time (s)"
    )  # before: panels may clear x
    for ax, ((objective, param), panel) in zip(axes, panels, strict=True):
        _cost_panel(ax, panel, "work_normalized_var", styles)
        ax.set(title=_panel_title(objective, param))
    notes = list(dict.fromkeys(notes + _constant_notes(pooled, ["n_samples"])))
    return _finish(fig, axes, "Work-normalised variance (variance × seconds per estimate)", notes)


def _cost_panel(ax, panel: pd.DataFrame, column: str, styles) -> None:
    names = ordered_estimators(panel)
    if panel["n_samples"].nunique() < 2:
        _categorical(ax, names, panel.set_index("estimator")[column], styles)
        ax.set(yscale="log", xlabel="")  # one n_samples: estimators along x
        return
    for name in names:
        rows = panel[panel["estimator"] == name].sort_values("n_samples")
        _line_with_band(ax, rows["n_samples"], rows[column], None, None, *styles[name], name)
    ax.set(xscale="log", yscale="log")


def _first_column(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    for name in names:
        if name in frame and _numeric(frame, name) and np.isfinite(frame[name]).any():
            return name
    return None


def training_records(records: pd.DataFrame) -> pd.DataFrame:
    """Variance records measured during training (``task = train``, with a ``step``)."""
    if records.empty or "step" not in records or "task" not in records:
        return records.iloc[0:0]
    rows = records[(records["task"] == "train") & records["step"].notna()]
    return _log_safe(completed(rows), "var_grad")


def variance_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records of variance measurements at fixed parameters: everything but training's."""
    if records.empty or "task" not in records:
        return records
    return records[records["task"] != "train"]


def _variance_along_training(frame: pd.DataFrame) -> tuple[pd.DataFrame, str, list[str]]:
    """(rows, hue column, panel columns) with a ``log10_var`` column per step.

    From training records: the tracked estimators' variance, the ``all`` group for
    models, else the mean over coordinates (as ``benchmarks.train`` logs it). From a
    training log: its ``log10_var`` (or a raw variance column, logged).
    """
    if "var_grad" in frame and "param" in frame:
        rows = frame.copy()
        if "all" in set(rows["param"]):
            rows = rows[rows["param"] == "all"]
        keys = [c for c in ["objective", "train_estimator", "estimator", "run_dir", "step"]
                if c in rows]  # fmt: skip
        rows = rows.groupby(keys, sort=False, dropna=False)["var_grad"].mean().reset_index()
        rows["log10_var"] = np.log10(rows["var_grad"])
        panels = [c for c in ["objective", "train_estimator"] if c in rows]
        return rows, "estimator", panels
    column = _first_column(frame, TRAIN_LOG10_VAR_COLUMNS)
    if column is None:
        raw = _first_column(frame, TRAIN_VAR_COLUMNS)
        if raw is None:
            return frame.iloc[0:0], "estimator", []
        frame = _log_safe(frame, raw)
        frame = frame.assign(log10_var=np.log10(frame[raw].astype(float)))
        column = "log10_var"
    rows = frame[np.isfinite(frame[column].astype(float))].assign(log10_var=frame[column])
    return rows, "estimator", [c for c in ["objective"] if c in rows]


@styled
def fig_train_variance(frame: pd.DataFrame) -> Figure | None:
    """Gradient log10-variance against training step, a line per estimator (mean over runs,
    95% bootstrap band), a panel per objective and trained estimator.

    ``frame`` is either the records of training runs (``training_records``: every tracked
    estimator measured at the same parameters) or a training log (``train.parquet``).
    """
    if frame.empty or "step" not in frame or "estimator" not in frame:
        return None
    data, hue, panel_keys = _variance_along_training(frame)
    data = data[np.isfinite(data["log10_var"])] if len(data) else data
    if data.empty:
        return None
    styles = estimator_styles(data)
    panels = list(data.groupby(panel_keys, sort=False)) if panel_keys else [("", data)]
    if len(panel_keys) == 2:  # (objective, trained estimator): both in their usual order
        objectives = {name: i for i, name in enumerate(ordered_objectives(data))}
        trained = {name: i for i, name in enumerate(ordered_estimators(
            data.assign(estimator=data[panel_keys[1]])))}  # fmt: skip
        panels.sort(key=lambda group: (objectives[group[0][0]], trained[group[0][1]]))
    fig, axes = _grid(len(panels), max_cols=3)
    for ax, (key, panel) in zip(axes, panels, strict=True):
        key = key if isinstance(key, tuple) else (key,)
        for name in ordered_estimators(panel):
            rows = panel[panel[hue] == name]
            color, marker = styles[name]
            sns.lineplot(rows, x="step", y="log10_var", ax=ax, color=color, label=name,
                         marker=marker, ms=4, errorbar=("ci", 95), seed=0, lw=1.2)  # fmt: skip
        title = str(key[0]) if key != ("",) else ""
        if len(key) > 1:
            title += f"\ntrained with {key[1]}"
        ax.set(title=title)
        if ax.get_legend():
            ax.get_legend().remove()
    _label(axes, "training step", "log10 variance of one estimate")
    return _finish(fig, axes, "Gradient variance along the training trajectory")


def _train_value_column(train: pd.DataFrame) -> str | None:
    return _first_column(train, TRAIN_VALUE_COLUMNS)


@styled
def fig_train_objective_vs_time(train: pd.DataFrame) -> Figure | None:
    """Training objective (held-out ELBO for models, L(θ) − inf L for toys) against
    wall-clock seconds of training, one line per run, coloured by estimator, a panel per
    objective: progress per second of compute."""
    if train.empty or "wall_time_s" not in train or "estimator" not in train:
        return None
    data = train
    if "objective" in data:  # one column per objective: a model's ELBO, a toy's gap
        chosen = {o: _train_value_column(rows) for o, rows in data.groupby("objective")}
        data = data[data["objective"].map(chosen).notna()]
    else:
        chosen = {None: _train_value_column(data)}
    if data.empty or all(c is None for c in chosen.values()):
        return None
    styles = estimator_styles(data)
    run = "run_dir" if "run_dir" in data else None
    panels = _panels(data, "objective") if "objective" in data else [(None, data)]
    fig, axes = _grid(len(panels), max_cols=3)
    for ax, (objective, panel) in zip(axes, panels, strict=True):
        column = chosen[objective]
        sparse = panel[column].notna().mean() < 0.5  # evaluated every k steps: show markers
        panel = panel[np.isfinite(panel[column]) & np.isfinite(panel["wall_time_s"])]
        for name in ordered_estimators(panel):
            color, marker = styles[name]
            runs = panel[panel["estimator"] == name]
            for i, (_, rows) in enumerate(runs.groupby(run, sort=False) if run else [(0, runs)]):
                rows = rows.sort_values("wall_time_s")
                ax.plot(rows["wall_time_s"], rows[column], color=color, lw=1.1, alpha=0.85,
                        marker=marker if sparse else None, ms=3.5,
                        label=name if i == 0 else None)  # fmt: skip
        positive = (panel[column] > 0).all()
        if column == "optimality_gap" and positive:
            ax.set_yscale("log")
        ax.set(title=str(objective or ""), ylabel=TRAIN_VALUE_LABELS.get(column, column))
        ax.set(xlabel="training wall-clock time (s)")
    return _finish(fig, axes, "Training progress against wall-clock time")


# --------------------------------------------------------------------------- the report


@dataclass
class FigureSpec:
    name: str
    caption: str
    draw: Callable[[], Figure | None]


def figure_specs(records: pd.DataFrame, train: pd.DataFrame) -> list[FigureSpec]:
    """Every figure the report knows, in page order; each may turn out to have no data."""
    during = training_records(records)
    records = variance_records(records)
    specs = [
        FigureSpec(
            "variance_vs_n_samples",
            "Variance of one gradient estimate against the number of draws it uses (log-log). "
            "Bands: ≈95% normal-theory interval of each variance; dotted: a 1/n slope.",
            lambda: fig_variance_vs_n_samples(records),
        )
    ]
    for parameter in objective_parameters(records):
        specs.append(
            FigureSpec(
                f"variance_vs_{parameter.replace('.', '_')}",
                f"Variance of one gradient estimate against {parameter} (the shape of "
                "Mohamed et al. 2020, Fig. 2). Other swept settings are held at their most "
                "frequent value, named in the title.",
                functools.partial(fig_variance_vs_parameter, records, parameter),
            )
        )
    specs += [
        FigureSpec(
            "bias",
            "Bias (mean estimate − exact gradient) with ±2 standard errors: an unbiased "
            "estimator's bars cross zero about 95% of the time. For a group of coordinates "
            "(a model's encoder, decoder, all) the bias is their root-mean-square, about se "
            "even when unbiased.",
            lambda: fig_bias(records),
        ),
        FigureSpec(
            "time_per_estimate",
            "Median wall-clock time of one gradient estimate computed on its own, as a "
            "training step would pay it.",
            lambda: fig_time_per_estimate(records),
        ),
        FigureSpec(
            "work_normalized_variance",
            "Variance × time per estimate: lower is better for a fixed compute budget.",
            lambda: fig_work_normalized_variance(records),
        ),
        FigureSpec(
            "train_variance",
            "Variance of one gradient estimate at the parameters of a training run, every "
            "estimator measured at the same points (mean over runs, 95% bootstrap band).",
            lambda: fig_train_variance(during if len(during) else train),
        ),
        FigureSpec(
            "train_objective_vs_time",
            "Training objective against the wall-clock time spent in training steps, one "
            "line per run: progress per second of compute.",
            lambda: fig_train_objective_vs_time(train),
        ),
    ]
    return specs


@dataclass
class Report:
    """What ``write_report`` wrote: the report folder, file names and what went wrong."""

    folder: Path
    files: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    summary: pd.DataFrame | None = None


SAVE_METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def write_report(folder: str | Path, formats: Sequence[str] = (), dpi: int = 150) -> Report:
    """Collect the runs under ``folder`` and write ``folder/report/``.

    Raises:
        UsageError: ``folder`` is missing, is itself a report, or holds no readable results.
    """

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"no such folder: {folder}")
    if (folder / REPORT_MARKER).is_file():
        raise UsageError(f"{folder} is a report folder; give the folder of runs above it")
    runs = scan_runs(folder)
    if runs.records.empty and runs.train.empty:
        unreadable = (
            f" ({len(runs.problems)} unreadable: {runs.problems[0]})" if runs.problems else ""
        )
        raise UsageError(f"no records.parquet or train.parquet under {folder}{unreadable}")

    out = folder / REPORT_DIR
    out.mkdir(exist_ok=True)
    _remove_previous(out)
    report = Report(out, problems=list(runs.problems))
    if not runs.records.empty:
        write_parquet_atomic(runs.records, out / "records.parquet")
        report.files.append("records.parquet")
    if not runs.train.empty:
        write_parquet_atomic(runs.train, out / "train.parquet")
        report.files.append("train.parquet")

    summary = summary_table(variance_records(runs.records))
    report.summary = summary
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(summary, runs))
    report.files += ["summary.csv", "summary.md"]

    captions = {}
    for spec in figure_specs(runs.records, runs.train):
        try:
            fig = spec.draw()
        except Exception as exc:  # one broken figure must not cost the rest of the report
            report.problems.append(
                Problem(REPORT_DIR, f"{spec.name}.png", f"figure failed: {exc!r}")
            )
            continue
        if fig is None:
            continue
        for ext in ["png", *formats]:
            fig.savefig(out / f"{spec.name}.{ext}", dpi=dpi, metadata=SAVE_METADATA[ext])
            report.files.append(f"{spec.name}.{ext}")
        report.figures.append(spec.name)
        captions[spec.name] = spec.caption

    (out / "index.html").write_text(index_html(folder, runs, report, captions, formats))
    report.files.append("index.html")
    (out / REPORT_MARKER).write_text("\n".join(report.files) + "\n")
    return report


def _remove_previous(out: Path) -> None:
    """Delete the files the last report wrote, so a figure that lost its data goes too."""
    marker = out / REPORT_MARKER
    if not marker.is_file():
        return
    for name in marker.read_text().split():
        if "/" not in name and name not in ("..", "."):
            (out / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- tables


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}"
    return str(value)


def _format_number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _fmt(value, 4)


def _format_z(z: float) -> str:
    if not math.isfinite(z):
        return "–"
    return f"{z:.2g}" if abs(z) < 10 else f"{z:.0f}"


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary formatted for people: bias ± se, units on times, a flag column."""
    settings = [c for c in summary.columns if "." in c]
    return pd.DataFrame({
        "param": summary["param"],
        "n": summary["n_samples"],
        **{c: summary[c].map(_format_number) for c in settings},
        "rank": summary["rank"],
        "estimator": summary["estimator"],
        "variance": summary["var_grad"].map(_fmt),
        "bias ± se": [
            "–" if not math.isfinite(b) else f"{b:.2g} ± {se:.2g}"
            for b, se in zip(summary["bias"], summary["bias_se"], strict=True)
        ],
        "z": [
            f"χ²/k {c:.2g}" if math.isfinite(c) else _format_z(z)
            for z, c in zip(summary["bias_z"], summary["bias_chi2"].astype(float), strict=True)
        ],
        "biased?": summary["bias_significant"].map(lambda flag: "YES" if flag is True else ""),
        "time/estimate": summary["time_per_estimate_s"].map(_seconds),
        "var × time (s)": summary["work_normalized_var"].map(_fmt),
        "rank (var × time)": summary["rank_work"],
    })  # fmt: skip


def _markdown(frame: pd.DataFrame) -> str:
    cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def threshold_sentence(summary: pd.DataFrame) -> str:
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
        sentence += (
            " Groups of coordinates (encoder, decoder, all) are not flagged: their bias is a "
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
        parts += ["", f"## {objective}", "", _markdown(table[summary["objective"] == objective])]
    trained = training_table(runs.train)
    if len(trained):
        parts += ["", "## Training runs", "", _markdown(trained)]
    missing = not_measured(runs.records)
    if len(missing):
        parts += ["", "## Cells without results", "", _markdown(missing.fillna("–"))]
    if runs.problems:
        parts += ["", "## Unreadable runs", "", _markdown(problems_frame(runs.problems))]
    return "\n".join(parts) + "\n"


def training_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per objective and estimator: runs, steps, training seconds and the last value of the
    training objective (mean over runs)."""
    if train.empty or not {"objective", "estimator", "step"} <= set(train.columns):
        return pd.DataFrame()
    rows = []
    for (objective, estimator), frame in train.groupby(["objective", "estimator"], sort=False):
        column = _train_value_column(frame)
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
            row["training time (s)"] = _fmt(float(last["wall_time_s"].mean()))
        if column:
            values = [float(f[column].iloc[-1]) for f in finals if len(f)]
            row["final value"] = _fmt(float(np.mean(values))) if values else "–"
            row["of"] = column
        rows.append(row)
    return pd.DataFrame(rows)


def problems_frame(problems: Sequence[Problem]) -> pd.DataFrame:
    return pd.DataFrame(
        [(p.run_dir, p.file, p.reason) for p in problems], columns=["run", "file", "reason"]
    )


# --------------------------------------------------------------------------- html

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
.problem { color: #a40000; }
"""


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="–", escape=True)


def index_html(
    folder: Path, runs: Runs, report: Report, captions: dict[str, str], formats: Sequence[str]
) -> str:
    """One page with every table and figure; links are relative, to files that exist."""
    e = html.escape
    records, summary = runs.records, report.summary
    n_runs = records["run_dir"].nunique() if "run_dir" in records else 0
    status = (
        records.drop_duplicates("run_dir")["status"].str.split(":").str[0].value_counts()
        if len(records)
        else pd.Series(dtype=int)
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
    body = [
        f"<h1>gradbench report: {e(folder.resolve().name)}</h1>",
        f"<p>{n_runs} runs ({e(counts) or 'none with records'}), {len(records)} rows, "
        f"{runs.train['run_dir'].nunique() if len(runs.train) else 0} training runs. "
        f"Unreadable: {len(report.problems)}.</p>",
        "<p>Files: " + ", ".join(f'<a href="{e(f)}">{e(f)}</a>' for f in report.files) + "</p>",
    ]
    if report.problems:
        body += ['<h2 class="problem">Unreadable runs</h2>',
                 _html_table(problems_frame(report.problems))]  # fmt: skip
    if report.figures:
        body.append("<h2>Figures</h2>")
    for name in report.figures:
        extra = " ".join(f'<a href="{e(name)}.{ext}">{ext}</a>' for ext in formats)
        body.append(
            f'<figure id="{e(name)}"><img src="{e(name)}.png" alt="{e(name)}">'
            f"<figcaption>{e(captions[name])} {extra}</figcaption></figure>"
        )
    if summary is not None and len(summary):
        body += ["<h2>Summary</h2>", f"<p>{e(threshold_sentence(summary))}</p>"]
        table = display_table(summary)
        for objective in ordered_objectives(summary):
            body += [f"<h3>{e(str(objective))}</h3>",
                     _html_table(table[summary["objective"] == objective])]  # fmt: skip
    trained = training_table(runs.train)
    if len(trained):
        body += ["<h2>Training runs</h2>", _html_table(trained)]
    missing = not_measured(records)
    if len(missing):
        body += ["<h2>Cells without results</h2>", _html_table(missing)]
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>gradbench report: {e(folder.resolve().name)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- CLI


def _formats(value: str) -> list[str]:
    formats = [v.strip().lower() for v in value.split(",") if v.strip()]
    for fmt in formats:
        if fmt not in ("svg", "pdf"):
            raise argparse.ArgumentTypeError(f"unknown format {fmt!r}; choose from svg, pdf")
    return formats


def main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gradbench report",
        description="Tables, figures and an HTML page from a folder of runs, in FOLDER/report/.",
    )
    parser.add_argument("folder", help="a sweep folder, or any folder holding runs")
    parser.add_argument(
        "--format",
        type=_formats,
        action="append",
        default=[],
        help="also write the figures as svg and/or pdf (e.g. --format svg,pdf)",
    )
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    ns = parser.parse_args(list(args))
    matplotlib.use("Agg")  # no display needed; the figures are drawn on Figure objects anyway
    formats = list(dict.fromkeys(f for group in ns.format for f in group))
    report = write_report(ns.folder, formats=formats, dpi=ns.dpi)
    for problem in report.problems:
        print(f"gradbench: could not use {problem}", file=sys.stderr)
    print(
        f"report: {report.folder / 'index.html'} ({len(report.figures)} figures, "
        f"{len(report.summary) if report.summary is not None else 0} summary rows, "
        f"{len(report.problems)} unreadable)"
    )
    return 0
