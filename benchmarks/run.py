"""The Hydra entry point, the only ``@hydra.main``: build the cell, run its task, write.

``benchmarks.config.build_cell`` turns the composed config into plain objects; ``TASKS``
picks the function that runs them; nothing below this module sees the config.

In a sweep each cell is one job in its own folder. A job whose folder already holds
complete records for the same configuration does nothing (``resume=true``, the default),
so running an interrupted sweep again runs only the cells it is missing. A job that
raises records ``status = failed: <reason>`` and leaves the traceback in ``error.log``.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from benchmarks.config import Cell, ConfigError, build_cell, launcher_threads
from benchmarks.measure import RECORD_COLUMNS, environment_columns
from benchmarks.schema import config_hash, config_path
from benchmarks.storage import (
    RECORDS,
    records_complete,
    remove_stale_temporaries,
    write_parquet_atomic,
)
from benchmarks.summaries import bias_notes, format_table
from benchmarks.train import train_task

ERROR_LOG = "error.log"


def variance_task(cell: Cell, out: Path) -> pd.DataFrame:
    """``task=variance``: one measurement of the cell's estimator at its objective's
    parameters."""
    return cell.objective.measure(
        cell.estimator,
        cell.task,
        estimator_name=cell.estimator_name,
        objective_name=cell.objective_name,
    )


# The task a cell runs, by ``task.name`` (``benchmarks.config.TASK_SETTINGS`` has the same
# keys: the settings each one takes).
TASKS: dict[str, Callable[[Cell, Path], pd.DataFrame]] = {
    "variance": variance_task,
    "train": train_task,
}


def run_cell(cfg: DictConfig, estimator_name: str, objective_name: str) -> pd.DataFrame:
    """Measure one cell of a sweep as configured. Raises ``ConfigError`` for bad settings."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    cell = build_cell(cfg, estimator_name=estimator_name, objective_name=objective_name)
    return TASKS[cell.task_name](cell, Path(HydraConfig.get().runtime.output_dir))


def failed_records(cfg: DictConfig, estimator_name: str, objective_name: str, reason: str):
    """One row saying a cell failed, so a sweep's records show every cell it tried.

    It has every column of a measured row (statistics NaN), so readers need no special case.
    """
    row = dict.fromkeys(RECORD_COLUMNS, math.nan)
    row.update({
        "objective": objective_name, "estimator": estimator_name, "task": cfg.task.name,
        "param": "all", "n_samples": cfg.n_samples, "replicates": cfg.replicates,
        "seed": cfg.seed, "status": f"failed: {reason}", "n_finite": 0,
        **environment_columns(cfg.device, cfg.dtype),
    })  # fmt: skip
    return pd.DataFrame([row], columns=RECORD_COLUMNS)


@hydra.main(version_base="1.3", config_path=config_path(), config_name="config")
def main(cfg: DictConfig) -> str:
    """Run one cell; return ``kept``, ``ok`` or ``failed`` (what a sweep's progress counts)."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    estimator_name, objective_name = choices["estimator"], choices["objective"]
    in_sweep = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    fingerprint = config_hash(cfg)
    if in_sweep and cfg.resume and records_complete(out / RECORDS, fingerprint):
        print(f"gradbench: {out.name}: complete, not run again (resume=false re-runs it)")
        return "kept"
    remove_stale_temporaries(out)
    (out / ERROR_LOG).unlink(missing_ok=True)  # from an earlier, failed attempt
    threads = cfg.threads
    if threads is None and in_sweep:
        threads = launcher_threads(hydra_cfg.launcher)
    if threads is not None:
        torch.set_num_threads(threads)
    outcome = "ok"
    try:
        records = run_cell(cfg, estimator_name, objective_name)
    except Exception as exc:  # a sweep goes on past a cell that crashes
        # The CLI refuses bad settings before anything runs. What it cannot see depends on
        # the machine a cell runs on (device=cuda on a node without CUDA): in a sweep that
        # is a failed cell like any other.
        if isinstance(exc, ConfigError) and not in_sweep:
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        (out / ERROR_LOG).write_text(traceback.format_exc())
        records = failed_records(cfg, estimator_name, objective_name, reason)
        outcome = "failed"
        print(f"gradbench: cell failed ({reason}); traceback in {out / ERROR_LOG}", file=sys.stderr)
    records["config_hash"] = fingerprint
    records["threads"] = torch.get_num_threads()
    write_parquet_atomic(records, out / RECORDS)
    if hydra_cfg.mode is None or hydra_cfg.mode.name == "RUN":
        print(format_table(records))
        for note in bias_notes(records):
            print(note)
        print(f"records: {out / RECORDS}")
    return outcome


if __name__ == "__main__":
    main()
