"""The report's figures: pure functions ``frame -> matplotlib Figure``.

Each returns ``None`` when the frame holds no data for it. They draw on
``matplotlib.figure.Figure`` objects (no pyplot state) inside ``STYLE``, so they look the
same from the CLI, a test or a notebook. ``styles`` (``estimator_styles``) gives every
figure of one report the same colour and marker per estimator; without it a figure takes
the estimators of its own frame.

Intervals: a variance estimated from R replicates is drawn with the band
``var · exp(±2 · sqrt(2 / (R − 1)))``, the normal-theory ≈95% interval of a sample
variance (heavy-tailed estimators, REINFORCE at small n above all, have wider ones). Bias
is drawn with ±2 standard errors, ``bias_se = sqrt(var / R)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmarks.report.frames import (
    TRAIN_VALUE_LABELS,
    completed,
    constant_notes,
    first_appearance,
    hold_fixed,
    in_run_order,
    is_group,
    is_numeric,
    log_safe,
    objective_parameters,
    ordered_estimators,
    ordered_objectives,
    pool,
    present,
    train_value_column,
    variance_band,
)
from benchmarks.report.palettes import flare
from benchmarks.report.panels import (
    categorical,
    finish,
    grid,
    label,
    line_with_band,
    panel_title,
    panels,
)
from benchmarks.report.style import estimator_styles, styled

Styles = dict[str, tuple]


def _styles(frame: pd.DataFrame, styles: Styles | None) -> Styles:
    return styles if styles is not None else estimator_styles(ordered_estimators(frame))


def _coordinate_panels(data: pd.DataFrame) -> tuple[pd.DataFrame, list, list[str]]:
    """(pooled rows, a group per objective and coordinate, notes) against n_samples, the
    other swept settings held fixed."""
    data, notes = hold_fixed(data, free=["n_samples"])
    pooled = pool(data, ["objective", "param", "estimator", "n_samples"])
    return pooled, panels(pooled, ["objective", "param"]), notes


@styled
def fig_variance_vs_n_samples(
    records: pd.DataFrame, *, styles: Styles | None = None
) -> Figure | None:
    """Variance of one estimate against n_samples (log-log), a panel per objective and
    gradient coordinate, a line per estimator, with a dotted ∝ 1/n guide."""
    records = in_run_order(records)
    data = log_safe(completed(records), "var_grad")
    if data.empty or data["n_samples"].nunique() < 2:
        return None
    styles = _styles(records, styles)
    pooled, groups, notes = _coordinate_panels(data)
    fig, axes = grid(len(groups))
    for ax, ((objective, param), panel) in zip(axes, groups, strict=True):
        for name in present(styles, panel):
            rows = panel[panel["estimator"] == name].sort_values("n_samples")
            lo, hi = variance_band(rows["var_grad"], rows["replicates"])
            line_with_band(ax, rows["n_samples"], rows["var_grad"], lo, hi, *styles[name], name)
        n = np.array(sorted(panel["n_samples"].unique()), dtype=float)
        top = panel.loc[panel["n_samples"] == n[0], "var_grad"].max()
        ax.plot(n, top * n[0] / n, ls=":", color="0.45", lw=1, label="∝ 1/n")
        ax.set(xscale="log", yscale="log", title=panel_title(objective, param))
    label(axes, "n_samples (draws per estimate)", "variance of one estimate")
    title = "Gradient variance against samples per estimate"
    return finish(fig, axes, title, notes, order=list(styles))


@styled
def fig_variance_vs_parameter(
    records: pd.DataFrame, parameter: str | None = None, *, styles: Styles | None = None
) -> Figure | None:
    """Variance against a swept objective setting, a line per estimator (Mohamed et al.
    2020, Fig. 2): a panel per objective and gradient coordinate, log variance axis."""
    records = in_run_order(records)
    candidates = objective_parameters(records)
    if parameter is None and candidates:
        parameter = candidates[0]
    if parameter not in candidates:
        return None
    styles = _styles(records, styles)
    data = log_safe(completed(records), "var_grad")
    data = data[data[parameter].notna()]
    data, notes = hold_fixed(data, free=[parameter])
    notes = list(dict.fromkeys(notes + constant_notes(data, ["n_samples"])))
    pooled = pool(data, ["objective", "param", "estimator", parameter])
    lines = pooled.groupby(["objective", "param", "estimator"])[parameter].nunique()
    if lines.empty or lines.max() < 2:  # swept only where other settings were not held
        return None
    groups = panels(pooled, ["objective", "param"])
    fig, axes = grid(len(groups))
    values = pooled[parameter]
    log_x = values.min() > 0 and values.max() / values.min() >= 20
    for ax, ((objective, param), panel) in zip(axes, groups, strict=True):
        for name in present(styles, panel):
            rows = panel[panel["estimator"] == name].sort_values(parameter)
            lo, hi = variance_band(rows["var_grad"], rows["replicates"])
            line_with_band(ax, rows[parameter], rows["var_grad"], lo, hi, *styles[name], name)
        ax.set(xscale="log" if log_x else "linear", yscale="log")
        ax.set(title=panel_title(objective, param))
    name = parameter.removeprefix("objective.")
    label(axes, f"{name} ({parameter})", "variance of one estimate")
    return finish(fig, axes, f"Gradient variance against {name}", notes, order=list(styles))


@styled
def fig_bias(records: pd.DataFrame, *, styles: Styles | None = None) -> Figure | None:
    """Bias ± 2 se per estimator, a panel per objective and gradient coordinate, a colour
    per n_samples. Estimators whose records say they are biased carry a ``*``."""
    records = in_run_order(records)
    data = completed(records)
    if data.empty or "bias" not in data:
        return None
    data = data[np.isfinite(data["bias"].astype(float))]
    if data.empty:
        return None
    order = list(_styles(records, styles))
    data, notes = hold_fixed(data, free=["n_samples"])
    pooled = pool(data, ["objective", "param", "estimator", "n_samples"])
    biased = set()
    if "unbiased" in records:
        flags = records["unbiased"].astype("boolean")
        biased = set(records.loc[flags.eq(False).fillna(False), "estimator"])
    sizes = sorted(pooled["n_samples"].unique())
    colors = dict(zip(sizes, flare(len(sizes)), strict=True))
    groups = panels(pooled, ["objective", "param"])
    fig, axes = grid(len(groups))
    height = 0.7 / len(sizes)
    for ax, ((objective, param), panel) in zip(axes, groups, strict=True):
        names = present(order, panel)
        where = {name: i for i, name in enumerate(names)}
        for j, n in enumerate(sizes):
            rows = panel[panel["n_samples"] == n]
            if rows.empty:
                continue
            y = rows["estimator"].map(where).astype(float) + (j - (len(sizes) - 1) / 2) * height
            ax.errorbar(rows["bias"], y, xerr=2 * rows["bias_se"], fmt="o", ms=3.5, capsize=2,
                        color=colors[n], label=f"{n}", lw=1)  # fmt: skip
        ax.axvline(0, color="0.3", lw=0.8, zorder=0)
        ax.set_yticks(range(len(names)), [f"{n}*" if n in biased else n for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set(title=panel_title(objective, param))
    label(axes, "bias (mean − exact), ± 2 se", "")
    title = "Bias of the gradient estimate, ± 2 standard errors"
    if biased:
        title += "  (* biased by design)"
    return finish(fig, axes, title, notes, legend_title="n_samples")


@styled
def fig_time_per_estimate(records: pd.DataFrame, *, styles: Styles | None = None) -> Figure | None:
    """Wall-clock time of one gradient estimate against n_samples, a panel per objective."""
    records = in_run_order(records)
    data = log_safe(completed(records), "time_per_estimate_s")
    if data.empty:
        return None
    styles = _styles(records, styles)
    data, notes = hold_fixed(data, free=["n_samples"])
    cells = data.drop_duplicates([c for c in ["run_dir", "objective", "estimator"] if c in data])
    pooled = pool(cells, ["objective", "estimator", "n_samples"])
    groups = panels(pooled, "objective")
    fig, axes = grid(len(groups))
    # Labels first: a panel with a single n_samples clears its x label.
    label(axes, "n_samples (draws per estimate)", "time per estimate (s)")
    for ax, (objective, panel) in zip(axes, groups, strict=True):
        _cost_panel(ax, panel, "time_per_estimate_s", styles)
        ax.set(title=panel_title(objective))
    notes = list(dict.fromkeys(notes + constant_notes(pooled, ["n_samples"])))
    title = "Cost of one gradient estimate (median wall-clock)"
    return finish(fig, axes, title, notes, order=list(styles))


@styled
def fig_work_normalized_variance(
    records: pd.DataFrame, *, styles: Styles | None = None
) -> Figure | None:
    """Variance × time per estimate (lower is better per second of compute) against
    n_samples, a panel per objective and gradient coordinate."""
    records = in_run_order(records)
    data = log_safe(completed(records), "time_per_estimate_s")
    if data.empty:
        return None
    data = log_safe(data.assign(_wnv=data["var_grad"] * data["time_per_estimate_s"]), "_wnv")
    if data.empty:
        return None
    styles = _styles(records, styles)
    pooled, groups, notes = _coordinate_panels(data)
    fig, axes = grid(len(groups))
    # Labels first: a panel with a single n_samples clears its x label.
    label(axes, "n_samples (draws per estimate)", "variance × time (s)")
    for ax, ((objective, param), panel) in zip(axes, groups, strict=True):
        _cost_panel(ax, panel, "work_normalized_var", styles)
        ax.set(title=panel_title(objective, param))
    notes = list(dict.fromkeys(notes + constant_notes(pooled, ["n_samples"])))
    title = "Work-normalised variance (variance × seconds per estimate)"
    return finish(fig, axes, title, notes, order=list(styles))


def _cost_panel(ax, panel: pd.DataFrame, column: str, styles: Styles) -> None:
    names = present(styles, panel)
    if panel["n_samples"].nunique() < 2:
        categorical(ax, names, panel.set_index("estimator")[column], styles)
        ax.set(yscale="log", xlabel="")  # one n_samples: estimators along x
        return
    for name in names:
        rows = panel[panel["estimator"] == name].sort_values("n_samples")
        line_with_band(ax, rows["n_samples"], rows[column], None, None, *styles[name], name)
    ax.set(xscale="log", yscale="log")


def _variance_along_training(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(rows with a ``log10_var`` column per step, panel columns).

    From training records: the tracked estimators' variance, for models the group that
    covers every coordinate (``all``), else the mean over coordinates (as
    ``benchmarks.train`` logs it). From a training log: its ``log10_var``.
    """
    if "var_grad" in frame and "param" in frame:
        keys = [c for c in ["objective", "train_estimator", "estimator", "run_dir", "step"]
                if c in frame]  # fmt: skip
        rows = frame
        if is_group(rows).any():  # a toy's cells keep every coordinate
            widest = rows.groupby(keys, sort=False, dropna=False)["n_coords"].transform("max")
            rows = rows[~is_group(rows) | (rows["n_coords"] == widest)]
        rows = rows.groupby(keys, sort=False, dropna=False)["var_grad"].mean().reset_index()
        rows["log10_var"] = np.log10(rows["var_grad"])
        return rows, [c for c in ["objective", "train_estimator"] if c in rows]
    if "log10_var" not in frame or not is_numeric(frame, "log10_var"):
        return frame.iloc[0:0], []
    rows = frame[np.isfinite(frame["log10_var"].astype(float))]
    return rows, [c for c in ["objective"] if c in rows]


@styled
def fig_train_variance(frame: pd.DataFrame, *, styles: Styles | None = None) -> Figure | None:
    """Gradient log10-variance against training step, a line per estimator (mean over runs,
    95% bootstrap band), a panel per objective and trained estimator.

    ``frame`` is either the records of training runs (``training_records``: every tracked
    estimator measured at the same parameters) or a training log (``train.parquet``).
    """
    if frame.empty or "step" not in frame or "estimator" not in frame:
        return None
    import seaborn as sns  # its bootstrap bands; a second to import, so only when drawn

    data, panel_keys = _variance_along_training(in_run_order(frame))
    data = data[np.isfinite(data["log10_var"])] if len(data) else data
    if data.empty:
        return None
    styles = _styles(data, styles)
    groups = list(data.groupby(panel_keys, sort=False)) if panel_keys else [("", data)]
    if len(panel_keys) == 2:  # (objective, trained estimator): both in the runs' order
        objectives = {name: i for i, name in enumerate(ordered_objectives(data))}
        trained = {name: i for i, name in enumerate(first_appearance(data, panel_keys[1]))}
        groups.sort(key=lambda group: (objectives[group[0][0]], trained[group[0][1]]))
    fig, axes = grid(len(groups), max_cols=3)
    for ax, (key, panel) in zip(axes, groups, strict=True):
        key = key if isinstance(key, tuple) else (key,)
        for name in present(styles, panel):
            rows = panel[panel["estimator"] == name]
            color, marker = styles[name]
            sns.lineplot(rows, x="step", y="log10_var", ax=ax, color=color, label=name,
                         marker=marker, ms=4, errorbar=("ci", 95), seed=0, lw=1.2)  # fmt: skip
        title = str(key[0]) if key != ("",) else ""
        if len(key) > 1:
            title += f"\ntrained with {key[1]}"
        ax.set(title=title)
        if ax.get_legend():
            ax.get_legend().remove()
    label(axes, "training step", "log10 variance of one estimate")
    return finish(fig, axes, "Gradient variance along the training trajectory", order=list(styles))


@styled
def fig_train_objective_vs_time(
    train: pd.DataFrame, *, styles: Styles | None = None
) -> Figure | None:
    """Training objective (held-out ELBO for models, L(θ) − inf L for toys) against
    wall-clock seconds of training, one line per run, coloured by estimator, a panel per
    objective: progress per second of compute."""
    if train.empty or "wall_time_s" not in train or "estimator" not in train:
        return None
    data = in_run_order(train)
    if "objective" in data:  # one column per objective: a model's ELBO, a toy's gap
        chosen = {o: train_value_column(rows) for o, rows in data.groupby("objective")}
        data = data[data["objective"].map(chosen).notna()]
    else:
        chosen = {None: train_value_column(data)}
    if data.empty or all(c is None for c in chosen.values()):
        return None
    styles = _styles(data, styles)
    run = "run_dir" if "run_dir" in data else None
    groups = panels(data, "objective") if "objective" in data else [(None, data)]
    fig, axes = grid(len(groups), max_cols=3)
    for ax, (objective, panel) in zip(axes, groups, strict=True):
        column = chosen[objective]
        sparse = panel[column].notna().mean() < 0.5  # evaluated every k steps: show markers
        panel = panel[np.isfinite(panel[column]) & np.isfinite(panel["wall_time_s"])]
        for name in present(styles, panel):
            color, marker = styles[name]
            runs = panel[panel["estimator"] == name]
            for i, (_, rows) in enumerate(runs.groupby(run, sort=False) if run else [(0, runs)]):
                rows = rows.sort_values("wall_time_s")
                ax.plot(rows["wall_time_s"], rows[column], color=color, lw=1.1, alpha=0.85,
                        marker=marker if sparse else None, ms=3.5,
                        label=name if i == 0 else None)  # fmt: skip
        if column == "optimality_gap" and (panel[column] > 0).all():
            ax.set_yscale("log")
        ax.set(title=str(objective or ""), ylabel=TRAIN_VALUE_LABELS[column])
        ax.set(xlabel="training wall-clock time (s)")
    return finish(fig, axes, "Training progress against wall-clock time", order=list(styles))
