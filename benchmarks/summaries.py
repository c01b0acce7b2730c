"""Text summaries of records: the table a run prints and the summary a sweep prints."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmarks.significance import bonferroni_z
from benchmarks.storage import RECORDS, status_kind


def format_table(records: pd.DataFrame) -> str:
    """The short table a run prints: estimator, param, truth, mean ± se, variance, time."""
    table = pd.DataFrame({
        "objective": records["objective"],
        "estimator": records["estimator"],
        "n": records["n_samples"],
        "param": records["param"],
        "true": records["true_grad"].map("{:.4g}".format),
        "mean ± se": [
            f"{m:.4g} ± {se:.2g}"
            for m, se in zip(records["mean_grad"], records["bias_se"], strict=True)
        ],
        "variance": records["var_grad"].map("{:.4g}".format),
        "time/estimate": records["time_per_estimate_s"].map(_format_seconds),
        "status": records["status"],
    })  # fmt: skip
    return table.to_string(index=False)


# Family-wise rate at which a correct unbiased estimator's run is called out as biased.
BIAS_NOTE_RATE = 1e-3


def bias_notes(records: pd.DataFrame) -> list[str]:
    """One line per coordinate where an estimator that claims to be unbiased has a mean many
    standard errors from the exact gradient (two-sided z-test, Bonferroni over the rows at
    family-wise rate ``BIAS_NOTE_RATE``)."""
    claimed = records["unbiased"].fillna(False).astype(bool) if "unbiased" in records else False
    rows = records[
        claimed & (records["status"] == "ok") & records["true_grad"].notna()
        & (records["bias_se"] > 0)
    ]  # fmt: skip
    if rows.empty:
        return []
    threshold = bonferroni_z(BIAS_NOTE_RATE, len(rows))
    z = rows["bias"] / rows["bias_se"]
    return [
        f"note: {r.estimator} claims to be unbiased, but its mean for {r.param} is "
        f"{zi:+.1f} standard errors from the exact gradient (|z| > {threshold:.2f}): biased, "
        "or an exact gradient that does not belong to this estimator's objective"
        for r, zi in zip(rows.itertuples(), z, strict=True)
        if abs(zi) > threshold
    ]


def _label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _format_seconds(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def swept_columns(records: pd.DataFrame) -> list[str]:
    """Config columns (dotted names) whose value changes between runs of one estimator.

    These are the settings a sweep varied, such as ``objective.sigma``; a setting that
    only differs between estimators (``estimator.baseline.decay``) is not one.
    """
    dotted = [c for c in records.columns if "." in c]
    if records.empty or not dotted:
        return []
    groups = records.groupby(["objective", "estimator"], sort=False)
    return [c for c in dotted if groups[c].nunique(dropna=True).max() > 1]


def summary_table(records: pd.DataFrame) -> str:
    """Variance per (objective, param, n_samples, swept settings) × estimator."""
    ok = records[records["status"] == "ok"].copy()
    if ok.empty:
        return "(no completed cells)"
    swept = swept_columns(ok)
    for column in swept:  # printable labels in numeric order; "-" where a setting does not apply
        values = ok[column]
        order = sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))
        labels = list(dict.fromkeys([_label(v) for v in order] + ["-"]))
        ok[column] = pd.Categorical([_label(v) for v in values], categories=labels, ordered=True)
    pivot = ok.pivot_table(
        index=["objective", *swept, "param", "n_samples"],
        columns="estimator",
        values="var_grad",
        aggfunc="mean",
        observed=True,
    )
    return pivot.to_string(float_format="{:.4g}".format, na_rep="-")


def sweep_summary(
    records: pd.DataFrame, folder: Path, started: float | None = None
) -> tuple[str, int]:
    """The text a finished sweep prints, and the number of its cells that failed.

    ``records`` are the sweep's (``collect.collect_records(folder)``). Cells whose records
    are older than ``started`` (a ``time.time()``) were kept from an earlier run of the
    same sweep.
    """
    cells = records.drop_duplicates("run_dir")
    kinds = status_kind(cells["status"])
    counts = kinds.value_counts().to_dict()
    lines = ["", "var_grad (variance of one estimate) per estimator:", summary_table(records)]
    line = f"\n{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if started is not None:
        kept = sum((folder / d / RECORDS).stat().st_mtime < started for d in cells["run_dir"])
        line += f" ({len(cells) - kept} run now, {kept} kept from an earlier run)"
    lines.append(line)
    failed = int(counts.get("failed", 0))
    if failed:
        logs = [d for d, s in zip(cells["run_dir"], kinds, strict=True) if s == "failed"]
        lines.append(f"{failed} failed; tracebacks in error.log of: {', '.join(logs)}")
    lines.append(f"records under: {folder}")
    return "\n".join(lines), failed
