"""Reading the runs below a folder into tidy frames, with each run's configuration.

``scan_runs`` is what the report and the CLI's sweep summary read; it never raises for a
bad run but lists it as a ``Problem``.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.storage import RECORDS, TRAIN

# Columns without which a file is not a usable records / training file.
RECORD_KEYS = ("objective", "estimator", "param", "n_samples", "var_grad", "status")
TRAIN_KEYS = ("estimator", "step")
KEYS = {RECORDS: RECORD_KEYS, TRAIN: TRAIN_KEYS}
# A file in every report folder: collecting never descends into one.
REPORT_MARKER = ".gradbench-report"
# A value that is a reference to another node of the config (``data: ${data}``).
NODE_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
# PyYAML's safe loader, in C where PyYAML was built with libyaml: the same constructor, so
# the same values, at a tenth of the time of the Python scanner (a sweep has a config per cell).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    runs, problems = [], []
    for run, dirs, files in os.walk(folder):
        has_hydra = ".hydra" in dirs
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if REPORT_MARKER in files:
            dirs[:] = []
            continue
        run = Path(run)
        names = [name for name in (RECORDS, TRAIN) if name in files]
        if names or (has_hydra and not _is_sweep_root(run)):
            runs.append((run, run.relative_to(folder).as_posix(), has_hydra, names, files))
    # Reading parquet files is mostly C++ that releases the GIL: threads overlap it.
    jobs = [(run / name, KEYS[name]) for run, _, _, names, _ in runs for name in names]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        tables = iter(pool.map(_read_table, *zip(*jobs, strict=True)) if jobs else [])
    parts: dict[str, list[_Part]] = {RECORDS: [], TRAIN: []}
    for run, rel, has_hydra, names, files in runs:
        if not names:
            problems.append(Problem(rel, RECORDS, _missing_reason(run, files)))
            continue
        config = {}
        if has_hydra:
            try:
                config = read_run_config(run)
            except Exception as exc:  # a bad config must not hide the run's results
                problems.append(Problem(rel, ".hydra", f"config not readable: {_first_line(exc)}"))
        for name in names:
            table, reason = next(tables)
            if reason:
                problems.append(Problem(rel, name, reason))
                continue
            columns = set(table.column_names)
            extra = {k: v for k, v in config.items() if k not in columns}
            parts[name].append(_Part(rel, table, extra))
    return Runs(_concat(parts[RECORDS]), _concat(parts[TRAIN]), problems)


@dataclass(frozen=True)
class _Part:
    """One run's file as read: its rows, and the config values its columns lack."""

    run_dir: str
    table: pa.Table
    config: dict[str, object]


def read_run_config(run: Path) -> dict[str, object]:
    """A run's ``.hydra`` config as flat ``{"objective.sigma": 0.5, ...}`` plus ``overrides``.

    Top-level keys and ``_target_`` entries are left out: the records already hold the
    former, and the estimator and objective names say more than the latter.

    Hydra writes these files with PyYAML's dumper, which quotes every string that would
    read back as another type, so PyYAML's safe loader reads them back as they were
    composed (``YAML_LOADER``: its libyaml version where PyYAML has one). References to
    other nodes (``data: ${data}``) are resolved; other interpolations (resolvers such as
    ``${now:...}``) are kept as text.
    """
    flat: dict[str, object] = {}
    overrides_file = run / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = yaml.load(overrides_file.read_text(), Loader=YAML_LOADER)
        flat["overrides"] = " ".join(str(o) for o in overrides or [])
    config_file = run / ".hydra" / "config.yaml"
    if config_file.is_file():
        tree = yaml.load(config_file.read_text(), Loader=YAML_LOADER) or {}
        for group, node in _resolve(tree, tree).items():
            if isinstance(node, dict):
                flat.update(_flatten(node, group))
    return flat


def _resolve(node, root: dict, depth: int = 0):
    """``node`` with every ``${dotted.key}`` value replaced by that node of ``root``."""
    if isinstance(node, dict):
        return {key: _resolve(value, root, depth) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, root, depth) for value in node]
    match = NODE_REFERENCE.fullmatch(node) if isinstance(node, str) else None
    if match is None or depth > 32:  # not a reference, or a cycle of them
        return node
    target = root
    for key in match.group(1).split("."):
        if not isinstance(target, dict) or key not in target:
            return node
        target = target[key]
    return _resolve(target, root, depth + 1)


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


def _read_table(path: Path, required: tuple[str, ...]) -> tuple[pa.Table | None, str]:
    try:
        with pq.ParquetFile(path) as handle:  # a third of pq.read_table's time on small files
            table = handle.read(use_threads=False)
    except Exception:
        try:  # the general reader, whose errors name the file
            table = pq.read_table(path, use_threads=False)
        except Exception as exc:  # pyarrow raises several types for truncated or foreign files
            return None, f"unreadable ({_first_line(exc)})"
    columns = set(table.column_names)
    missing = [c for c in required if c not in columns]
    if missing:
        return None, f"missing columns: {', '.join(missing)}"
    if table.num_rows == 0:
        return None, "no rows"
    # A stored pandas index (not a RangeIndex) is a column of its own; the rows of all runs
    # get one new index, so it is dropped, as pandas would drop it.
    index = [c for c in _pandas_index_columns(table) if c in columns]
    return table.drop_columns(index).replace_schema_metadata(None), ""


def _pandas_index_columns(table: pa.Table) -> list[str]:
    raw = (table.schema.metadata or {}).get(b"pandas", b"")
    if b'"index_columns": []' in raw or b'"index_columns": [{"kind": "range"' in raw:
        return []  # what pandas writes without a stored index: no JSON to parse
    metadata = table.schema.pandas_metadata or {}
    return [c for c in metadata.get("index_columns", []) if isinstance(c, str)]


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


def _concat(parts: list[_Part]) -> pd.DataFrame:
    """One frame from many runs' files, each row with its ``run_dir`` and its run's config.

    The files are joined as arrow tables and converted to pandas once (a frame per file,
    concatenated, costs milliseconds a file: minutes for a sweep of thousands of cells).
    The columns are those of a concatenation of the files' frames, each with ``run_dir``
    and its config columns appended, in that order; config columns get one type (number,
    bool or text).
    """
    if not parts:
        return pd.DataFrame()
    try:
        table = pa.concat_tables([p.table for p in parts], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # A column whose type differs between files (numbers in one, text in another):
        # pandas' concatenation gives it the type that holds both.
        frame = pd.concat([p.table.to_pandas() for p in parts], ignore_index=True)
    else:
        frame = table.to_pandas()
    order = list(
        dict.fromkeys(c for p in parts for c in (*p.table.column_names, "run_dir", *p.config))
    )
    rows = np.repeat(np.arange(len(parts)), [p.table.num_rows for p in parts])
    frame["run_dir"] = np.array([p.run_dir for p in parts], dtype=object)[rows]
    configs = pd.DataFrame([p.config for p in parts], index=range(len(parts))).take(rows)
    configs.index = frame.index
    for column in configs.columns[configs.isna().all()]:  # only nulls: no type to give them
        configs[column] = configs[column].astype(object)
    for column in [c for c in configs.columns if c in frame.columns]:
        # Another file's own column: each row keeps the value from its own file.
        own = frame[column].astype(object)
        frame[column] = own.where(own.notna(), configs.pop(column).astype(object))
    frame = pd.concat([frame, configs], axis=1)
    frame = frame[order]
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
