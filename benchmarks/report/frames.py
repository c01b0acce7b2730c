"""Tidy frames for the report, built from the records of ``benchmarks.collect.scan_runs``.

Every function here takes and returns pandas frames, one row per (cell, parameter), and
draws nothing. Orders for display come from the records themselves, not from lists of
names: objectives and estimators appear in the order of the runs (``in_run_order``), so an
estimator or objective added to the library appears without a change here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchmarks.report.formatting import format_number
from benchmarks.summaries import swept_columns


def completed(records: pd.DataFrame) -> pd.DataFrame:
    """Rows of cells that measured something: status ``ok`` and a finite variance."""
    if records.empty or "status" not in records or "var_grad" not in records:
        return records.iloc[0:0]
    ok = (records["status"] == "ok") & np.isfinite(records["var_grad"].astype(float))
    return records[ok]


def is_numeric(frame: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(
        frame[column]
    )


def log_safe(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows where ``column`` is finite and positive, so it can go on a log axis."""
    if column not in frame:
        return frame.iloc[0:0]
    values = frame[column].astype(float)
    return frame[np.isfinite(values) & (values > 0)]


def _natural_key(text: str) -> tuple:
    # "job2" < "job10": digit runs compare as numbers. re.split alternates text and digits,
    # so positions in two keys always hold the same type.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def in_run_order(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its runs in natural order of ``run_dir`` (rows of a run kept in order).

    A sweep's folders are named by their settings (``estimator=reinforce,n_samples=10``),
    or numbered by Hydra in the order of the sweep's lists; natural order puts job 2 before
    job 10 and ``n_samples=2`` before ``n_samples=10``. A frame without ``run_dir`` is
    returned as it is; rows without one come last.
    """
    if "run_dir" not in frame or frame.empty:
        return frame
    runs = frame["run_dir"]
    names = sorted(runs.dropna().astype(str).unique(), key=_natural_key)
    rank = runs.map({run: i for i, run in enumerate(names)}).fillna(len(names))  # none: last
    return frame.iloc[np.argsort(rank.to_numpy(), kind="stable")]


def first_appearance(frame: pd.DataFrame, column: str) -> list[str]:
    """The values of ``column`` in the order they first appear, runs in natural order."""
    if column not in frame:
        return []
    return list(dict.fromkeys(in_run_order(frame)[column].dropna().astype(str)))


def present(order: Sequence[str], frame: pd.DataFrame, column: str = "estimator") -> list[str]:
    """The names of ``order`` that occur in ``frame[column]``, in ``order``'s order."""
    names = set(frame[column].dropna().astype(str))
    return [name for name in order if name in names]


def ordered_objectives(frame: pd.DataFrame) -> list[str]:
    """The objectives of ``frame`` in the order of its runs."""
    return first_appearance(frame, "objective")


def ordered_estimators(frame: pd.DataFrame) -> list[str]:
    """The estimators of ``frame`` in the order of its runs."""
    return first_appearance(frame, "estimator")


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
            notes.append(f"{column} = {format_number(best)}")
        kept.append(rows)
    frame = pd.concat(kept) if kept else records
    return frame, sorted(set(notes))


def _sort_key(value):
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def constant_notes(data: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """``"n_samples = 10"`` for settings that have a single value in ``data``."""
    return [
        f"{c} = {format_number(data[c].iloc[0])}"
        for c in columns
        if c in data and len(data) and data[c].nunique(dropna=False) == 1
    ]


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


def is_group(frame: pd.DataFrame) -> pd.Series:
    """Rows that stand for a group of coordinates (a model's parameter groups and ``all``).

    Model records say how many coordinates a row covers (``n_coords``); a toy's rows are
    single coordinates and have none.
    """
    if "n_coords" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["n_coords"].notna()


def variance_band(var: pd.Series, replicates: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Normal-theory ≈95% interval of a sample variance from ``replicates`` estimates."""
    half_width = 2 * np.sqrt(2 / (replicates.astype(float) - 1))
    return var * np.exp(-half_width), var * np.exp(half_width)


def not_measured(records: pd.DataFrame) -> pd.DataFrame:
    """One row per cell whose status is not ``ok`` (skipped, failed, non-finite)."""
    if records.empty:
        return pd.DataFrame(columns=["run_dir", "objective", "estimator", "n_samples", "status"])
    rows = records[records["status"] != "ok"]
    columns = [c for c in ["run_dir", "objective", "estimator", "n_samples"] if c in rows]
    columns += [c for c in swept_columns(records) if c in rows] + ["status"]
    return rows[columns].drop_duplicates().reset_index(drop=True)


def objective_parameters(records: pd.DataFrame) -> list[str]:
    """Swept numeric objective settings (``objective.sigma``...), most values first."""
    data = completed(records)
    columns = [c for c in swept_columns(data) if c.startswith("objective.") and is_numeric(data, c)]
    return sorted(columns, key=lambda c: -data[c].nunique())


def training_records(records: pd.DataFrame) -> pd.DataFrame:
    """Variance records measured during training (``task = train``, with a ``step``)."""
    if records.empty or "step" not in records or "task" not in records:
        return records.iloc[0:0]
    rows = records[(records["task"] == "train") & records["step"].notna()]
    return log_safe(completed(rows), "var_grad")


def variance_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records of variance measurements at fixed parameters: everything but training's."""
    if records.empty or "task" not in records:
        return records
    return records[records["task"] != "train"]


# Columns of a training log (``train.parquet``, written by ``benchmarks.train``) that can be
# drawn against wall-clock time, preferred first, and their axis labels.
TRAIN_VALUE_LABELS = {
    "heldout_elbo": "held-out ELBO (nats)",
    "train_elbo": "training ELBO (nats)",
    "optimality_gap": "L(θ) − inf L",
    "loss": "loss",
}


def train_value_column(train: pd.DataFrame) -> str | None:
    """The training log's column that measures progress: the first with finite values."""
    for name in TRAIN_VALUE_LABELS:
        if name in train and is_numeric(train, name) and np.isfinite(train[name]).any():
            return name
    return None
