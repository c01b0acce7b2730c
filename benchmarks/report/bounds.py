"""Figures of importance-weighted bounds against K (the bound L_K, and each estimator's
gradient variance), and of the variance of learned control variates along training.

Pure functions ``frame -> matplotlib Figure`` like ``benchmarks.report.figures``, drawn
inside the same ``STYLE`` with the same colour and marker per estimator. They read the
records of sweeps over ``estimator.k`` (rows with a ``k`` column); every other swept
objective setting (``objective.mu``, ``objective.sigma``) makes its own line or panel.
Each returns ``None`` when the frame holds no such rows.

``variance_vs_step`` reads training logs (``train.parquet``) instead: one line per run's
own estimator, all in one panel.

Records keep the minimised loss, ``true_value`` = −L_K, so the bound drawn is its negative.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from benchmarks.report.frames import (
    completed,
    log_safe,
    objective_parameters,
    ordered_estimators,
    variance_band,
    variance_records,
)
from benchmarks.report.panels import finish, grid, label, line_with_band
from benchmarks.report.style import estimator_styles, styled


def _k_records(records: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(variance rows of importance-weighted runs, with K as an int; the swept objective
    settings that tell their cells apart).

    Only estimators measured at more than one K on an objective count: a single K is a
    point, not a curve, and every record of a plain sweep carries K = 1.
    """
    if "k" not in records:
        return records.iloc[:0], []
    data = completed(variance_records(records))
    data = data[data["k"].notna()].copy()
    if data.empty:
        return data, []
    data["k"] = data["k"].astype(int)
    data = data[data.groupby(["objective", "estimator"])["k"].transform("nunique") > 1]
    if data.empty:
        return data, []
    return data, [c for c in objective_parameters(data) if data[c].nunique() > 1]


def _setting(row: pd.Series, settings: list[str]) -> str:
    return ", ".join(f"{c.removeprefix('objective.')} = {row[c]:.4g}" for c in settings)


def _k_axis(ax, k: pd.Series) -> None:
    """A log axis labelled at the swept K values themselves."""
    values = sorted(set(k))
    ax.set_xscale("log")
    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


@styled
def bound_vs_k(records: pd.DataFrame, limits: Mapping[str, float] | None = None) -> Figure | None:
    """L_K = −true_value against K (log axis), a panel per objective and a line per setting
    of the other swept objective parameters.

    Args:
        records: the records of one or more sweeps.
        limits: optional log p(x) per objective, drawn as a dashed line (the value L_K
            rises to as K grows).
    """
    data, settings = _k_records(records)
    if "true_value" not in data:
        return None
    data = data[np.isfinite(data["true_value"])]
    if data.empty:
        return None
    keys = ["objective", *settings]
    cells = data.groupby([*keys, "k"], sort=True)["true_value"].first().reset_index()
    objectives = list(dict.fromkeys(cells["objective"]))
    fig, axes = grid(len(objectives))
    for ax, objective in zip(axes, objectives, strict=True):
        rows = cells[cells["objective"] == objective]
        groups = rows.groupby(settings, sort=True) if settings else [((), rows)]
        for i, (_, line) in enumerate(groups):
            name = _setting(line.iloc[0], settings) or objective
            ax.plot(line["k"], -line["true_value"], marker="os^Dv"[i % 5], lw=1.3, ms=4, label=name)
        if limits and objective in limits:
            ax.axhline(limits[objective], color="0.3", ls="--", lw=1, label="log p(x)")
        _k_axis(ax, rows["k"])
        ax.set_title(objective)
    label(axes, "K (importance samples per estimate)", "bound L_K")
    return finish(fig, axes, "Importance-weighted bound L_K against K")


@styled
def variance_vs_k(records: pd.DataFrame, styles: dict | None = None) -> Figure | None:
    """Variance of one estimate against K (log-log), a line per estimator with its ≈95%
    band, a panel per objective setting and parameter coordinate."""
    data, settings = _k_records(records)
    data = log_safe(data, "var_grad") if len(data) else data
    if data.empty:
        return None
    styles = styles if styles is not None else estimator_styles(ordered_estimators(data))
    keys = ["objective", *settings, "param"]
    groups = list(data.groupby(keys, sort=True))
    fig, axes = grid(len(groups), max_cols=len(data["param"].unique()) if settings else 4)
    for ax, (key, rows) in zip(axes, groups, strict=True):
        for name in [e for e in styles if e in set(rows["estimator"])]:
            line = rows[rows["estimator"] == name].groupby("k").first().reset_index()
            lo, hi = variance_band(line["var_grad"], line["replicates"])
            color, marker = styles[name]
            line_with_band(ax, line["k"], line["var_grad"], lo, hi, color, marker, name)
        _k_axis(ax, rows["k"])
        ax.set_yscale("log")
        setting = _setting(rows.iloc[0], settings)
        ax.set_title(f"{key[0]}{', ' + setting if setting else ''}\n∂/∂{key[-1]}")
    label(axes, "K (importance samples per estimate)", "variance of one estimate")
    return finish(fig, axes, "Gradient variance against K", order=list(styles))


@styled
def variance_vs_step(train: pd.DataFrame, styles: dict | None = None) -> Figure | None:
    """log10 variance of one estimate of the training estimator against the training step,
    a line per estimator in one panel per objective (``train.parquet`` rows with a
    ``log10_var``)."""
    if "log10_var" not in train:
        return None
    data = train[np.isfinite(train["log10_var"])]
    if data.empty:
        return None
    styles = styles if styles is not None else estimator_styles(dict.fromkeys(data["estimator"]))
    objectives = list(dict.fromkeys(data["objective"]))
    fig, axes = grid(len(objectives))
    for ax, objective in zip(axes, objectives, strict=True):
        rows = data[data["objective"] == objective]
        for name in [e for e in styles if e in set(rows["estimator"])]:
            line = rows[rows["estimator"] == name].groupby("step")["log10_var"].mean()
            color, marker = styles[name]
            line_with_band(ax, line.index, line.to_numpy(), None, None, color, marker, name)
        ax.set_title(objective)
    label(axes, "training step", "log10 variance of one estimate")
    return finish(fig, axes, "Gradient variance along training", order=list(styles))
