"""Writing and reading records on disk: atomic parquet files, and the sweep summary."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pandas as pd

RECORDS = "records.parquet"


def write_parquet_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` so that a reader sees the whole file or none.

    The frame goes to a temporary file in the same folder, is flushed to disk, and is
    renamed over ``path`` (an atomic step on POSIX file systems).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            frame.to_parquet(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def collect_records(folder: str | Path, name: str = RECORDS) -> pd.DataFrame:
    """Every ``name`` file under ``folder`` concatenated, with a ``run_dir`` column."""
    folder = Path(folder)
    frames = []
    for path in sorted(folder.rglob(name)):
        if "report" in path.relative_to(folder).parts[:-1]:
            continue
        frame = pd.read_parquet(path)
        frame["run_dir"] = str(path.parent.relative_to(folder))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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


def _format_seconds(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def summary_table(records: pd.DataFrame) -> str:
    """Variance per (objective, param, n_samples) × estimator: the sweep's headline."""
    ok = records[records["status"] == "ok"]
    if ok.empty:
        return "(no completed cells)"
    pivot = ok.pivot_table(
        index=["objective", "param", "n_samples"],
        columns="estimator",
        values="var_grad",
        aggfunc="mean",
    )
    return pivot.to_string(float_format="{:.4g}".format, na_rep="-")
