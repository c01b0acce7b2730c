"""Writing and reading records on disk: atomic parquet files, and the sweep summary."""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd

RECORDS = "records.parquet"


def write_parquet_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path`` so that a reader sees the whole file or none.

    As ``write_atomic``. A job killed before the rename leaves at most a
    ``.records.parquet.*.tmp`` file, which readers ignore and the next run of the cell
    removes (``remove_stale_temporaries``).
    """
    return write_atomic(path, lambda handle: frame.to_parquet(handle, index=False))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file and rename it over ``path``.

    The temporary file lies in the same folder (``.NAME.*.tmp``), is flushed to disk, and is
    renamed over ``path`` (an atomic step on POSIX file systems); then the folder itself is
    synced, so that the rename survives a crash of the machine, not only of the job. A
    reader sees the whole file or none; a failed ``write`` leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions of a plain open().
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which is not thread-safe.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still stands
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(
    folder: str | Path, name: str = RECORDS, min_age_s: float = 60
) -> None:
    """Delete temporary files that killed writers left in ``folder``.

    Only files untouched for ``min_age_s`` seconds: a younger one may belong to a writer
    that is still alive (the same sweep started twice, an orphaned worker), and readers
    ignore temporary files anyway.
    """
    now = time.time()
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > min_age_s:
                tmp.unlink()
        except FileNotFoundError:  # its writer finished or cleaned up meanwhile
            pass


def records_complete(path: str | Path, config_hash: str) -> bool:
    """Whether a cell's records at ``path`` can be kept when its sweep is run again.

    True when the file reads, has rows, was written for the same configuration
    (``config_hash`` column) and no row says ``failed`` (failed cells are retried).
    """
    try:
        frame = pd.read_parquet(path, columns=["status", "config_hash"])
    except Exception:  # missing, truncated, foreign or older files: run the cell again
        return False
    return (
        not frame.empty
        and bool((frame["config_hash"] == config_hash).all())
        and not frame["status"].astype(str).str.startswith("failed").any()
    )


def collect_records(folder: str | Path, name: str = RECORDS) -> pd.DataFrame:
    """Every ``name`` file under ``folder`` concatenated, with ``run_dir`` and config columns.

    Files that cannot be read are skipped with one line each on stderr; ``scan_runs``
    returns them instead, for callers (the report) that list them.
    """
    runs = scan_runs(folder)
    for problem in runs.problems:
        print(f"gradbench: skipped {problem}", file=sys.stderr)
    return runs.train if name == TRAIN else runs.records


@dataclass(frozen=True)
class Problem:
    """A run folder, or one file in it, that could not be used, and why."""

    run_dir: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.run_dir}/{self.file}: {self.reason}"


@dataclass
class Runs:
    """What ``scan_runs`` found: tidy frames of all readable rows, and what was not readable."""

    records: pd.DataFrame
    train: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)


def scan_runs(folder: str | Path) -> Runs:
    """Read every run below ``folder``: its records, training log and configuration.

    A run folder is one that holds ``records.parquet``, ``train.parquet`` or Hydra's
    ``.hydra/``. Each row gets ``run_dir`` (relative to ``folder``), ``overrides`` (the
    command-line overrides that produced the run) and the run's resolved config flattened
    into dotted columns (``objective.sigma``, ``task.warmup_steps`` ...), so that results
    can be grouped and plotted by any swept setting. Report folders (marked with
    ``REPORT_MARKER``) and hidden folders are not descended into, so collecting again after
    a report is written gives the same rows.

    Never raises for a bad run: a truncated or unreadable parquet file, one without the
    columns the report needs, a run folder without results (a crashed or killed job) or an
    unreadable config becomes a ``Problem`` and the scan goes on.
    """
    folder = Path(folder)
    records, train, problems = [], [], []
    for run, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        run = Path(run)
        if REPORT_MARKER in files:
            dirs[:] = []
            continue
        rel = run.relative_to(folder).as_posix()
        has_hydra = (run / ".hydra").is_dir()
        if RECORDS not in files and TRAIN not in files:
            if has_hydra and not _is_sweep_root(run):
                problems.append(Problem(rel, RECORDS, _missing_reason(run, files)))
            continue
        config = {}
        if has_hydra:
            try:
                config = read_run_config(run)
            except Exception as exc:  # a bad config must not hide the run's results
                problems.append(Problem(rel, ".hydra", f"config not readable: {_first_line(exc)}"))
        for name, required, out in ((RECORDS, RECORD_KEYS, records), (TRAIN, TRAIN_KEYS, train)):
            if name not in files:
                continue
            frame, reason = _read_frame(run / name, required)
            if reason:
                problems.append(Problem(rel, name, reason))
                continue
            frame["run_dir"] = rel
            extra = {k: v for k, v in config.items() if k not in frame.columns}
            if extra:  # one concat, not a column at a time (a fragmented frame is slow)
                extra_frame = pd.DataFrame([extra] * len(frame), index=frame.index)
                frame = pd.concat([frame, extra_frame], axis=1)
            out.append(frame)
    return Runs(_concat(records), _concat(train), problems)


# Columns without which a file is not a usable records / training file.
RECORD_KEYS = ("objective", "estimator", "param", "n_samples", "var_grad", "status")
TRAIN_KEYS = ("estimator", "step")
TRAIN = "train.parquet"
# A file in every report folder: collecting never descends into one.
REPORT_MARKER = ".gradbench-report"


def read_run_config(run: Path) -> dict[str, object]:
    """A run's ``.hydra`` config as flat ``{"objective.sigma": 0.5, ...}`` plus ``overrides``.

    Top-level keys and ``_target_`` entries are left out: the records already hold the
    former, and the estimator and objective names say more than the latter.
    """
    from omegaconf import OmegaConf

    flat: dict[str, object] = {}
    overrides_file = run / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        flat["overrides"] = " ".join(str(o) for o in overrides or [])
    config_file = run / ".hydra" / "config.yaml"
    if config_file.is_file():
        config = OmegaConf.load(config_file)
        try:
            tree = OmegaConf.to_container(config, resolve=True)
        except Exception:  # interpolations that need Hydra's resolvers (${now:...})
            tree = OmegaConf.to_container(config, resolve=False)
        for group, node in tree.items():
            if isinstance(node, dict):
                flat.update(_flatten(node, group))
    return flat


def _flatten(node: dict, prefix: str) -> dict[str, object]:
    flat = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        elif isinstance(value, list):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat


def _read_frame(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame | None, str]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        return None, f"unreadable ({_first_line(exc)})"
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return None, f"missing columns: {', '.join(missing)}"
    if frame.empty:
        return None, "no rows"
    return frame, ""


def _is_sweep_root(run: Path) -> bool:
    return (run / "multirun.yaml").is_file()


def _missing_reason(run: Path, files: list[str]) -> str:
    reason = "no records.parquet: the job did not finish"
    error_log = run / "error.log"
    if error_log.is_file():
        lines = [ln for ln in error_log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            reason += f" ({lines[-1].strip()})"
    if any(f.startswith(f".{RECORDS}.") and f.endswith(".tmp") for f in files):
        reason += "; a half-written temporary file is left"
    return reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame from many runs; config columns get one type (number, bool or text)."""
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = _one_type(frame[column])
    return frame


def _one_type(column: pd.Series) -> pd.Series:
    values = column.dropna()
    if values.empty:
        return column
    if values.map(pd.api.types.is_bool).all():
        return column.astype("boolean")
    if values.map(pd.api.types.is_number).all():
        return pd.to_numeric(column).astype(float)
    return column.map(lambda v: v if pd.isna(v) else str(v)).astype("str")


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
