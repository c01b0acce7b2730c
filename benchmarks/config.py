"""Typed top-level settings and the one place a composed config becomes objects.

``build`` is used both by the Hydra job (``benchmarks.run``) and by the CLI's check of
every sweep cell before anything runs, so a config that passes the check is exactly a
config the job accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from benchmarks.errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("cpu", "cuda", "auto")
# What a variance cell does with non-finite replicate estimates: record the count and leave
# the statistics NaN, or compute the statistics over the finite replicates only.
NONFINITE = ("record", "drop")


@dataclass
class Settings:
    """Schema of the top-level keys. Hydra refuses a wrong type (``n_samples=ten``)."""

    n_samples: int = 10
    replicates: int = 1000
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    # torch intra-op threads per job; None keeps torch's default. Set it when running
    # parallel jobs so that they do not oversubscribe the cores.
    threads: int | None = None
    # In a sweep, skip cells whose records are already complete (see ``benchmarks.run``);
    # ``resume=false`` runs every cell again.
    resume: bool = True
    estimator: Any = MISSING
    objective: Any = MISSING
    task: Any = MISSING
    sweep: Any = None
    # The models' data set (conf/data/); objectives that use it interpolate ${data}.
    data: Any = None


ConfigStore.instance().store(name="gradbench_schema", node=Settings)


def config_path() -> str:
    """The conf/ folder of a source checkout or editable install, else the installed copy."""
    source = Path(__file__).resolve().parent.parent / "conf"
    return str(source) if (source / "config.yaml").is_file() else "pkg://benchmarks.conf"


# Longest cell folder name kept as is; longer ones are cut and get a hash.
MAX_CELL_DIRNAME = 160


def cell_dirname(override_dirname: str) -> str:
    """A sweep cell's folder name, from Hydra's ``hydra.job.override_dirname``.

    That is the cell's overrides, sorted, ``key=value`` joined by commas
    (``estimator=reinforce,n_samples=10``), so the folder says which cell it holds and the
    same cell of the same sweep always lands in the same folder, which is what lets a
    re-run sweep find the cells it already has. Slashes (paths in values) would make
    sub-folders and long names hit file-system limits, so such names are shortened and
    made unique with a hash of the full text.
    """
    if not override_dirname:
        return "defaults"
    safe = re.sub(r"[/\\\x00]", "_", override_dirname)
    if safe == override_dirname and len(safe) <= MAX_CELL_DIRNAME:
        return safe
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: MAX_CELL_DIRNAME - 11]}-{digest}"


OmegaConf.register_new_resolver("gradbench.cell_dir", cell_dirname, replace=True)


# Settings that change how a cell runs but not what it measures.
RESULT_NEUTRAL_KEYS = ("threads", "resume")


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of everything that decides a cell's results (``threads`` aside).

    Stored with the records; a resumed sweep re-runs a cell whose stored fingerprint
    differs, e.g. because a preset's values were edited since.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in RESULT_NEUTRAL_KEYS:
        tree.pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launcher_threads(launcher: DictConfig | None) -> int | None:
    """torch threads per job when ``threads`` is not set, from the launcher's settings.

    joblib runs ``n_jobs`` jobs at once on this machine: the CPUs are shared out between
    them. submitit (local or Slurm) gives each job ``cpus_per_task`` CPUs (1 unless set).
    Any other launcher (the basic one runs jobs one after another): None, torch's default.
    """
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        cpus = available_cpus()
        n_jobs = int(launcher.get("n_jobs") or -1)
        workers = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)
        return max(1, cpus // min(workers, cpus))
    if "hydra_submitit_launcher" in target:
        return int(launcher.get("cpus_per_task") or 1)
    return None


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (an error without CUDA) or ``auto`` (CUDA if present, else CPU)."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError(
            "device=cuda but CUDA is not available to this torch "
            f"({torch.__version__}); use device=cpu, or device=auto to fall back to CPU"
        )
    print("gradbench: device=auto: CUDA is not available, running on CPU", file=sys.stderr)
    return torch.device("cpu")


def _instantiate(node: DictConfig, what: str, **kwargs):
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ImportError) and isinstance(cause.__cause__, ImportError):
            # Hydra could not locate _target_; its message puts the reason on later lines.
            message = f"cannot import {node.get('_target_')!r}: {cause.__cause__}"
        else:
            message = str(cause).splitlines()[0]
        if f"{what}." not in message:  # say which group the error came from
            message = f"{what}: {message}"
        raise ConfigError(message) from None


def check_settings(cfg: DictConfig) -> None:
    """Refuse top-level values no measurement can use."""
    if cfg.n_samples < 1:
        raise ConfigError(f"n_samples must be at least 1, got {cfg.n_samples}")
    if cfg.replicates < 2:
        raise ConfigError(
            f"replicates must be at least 2 to estimate a variance, got {cfg.replicates}"
        )
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {cfg.dtype!r}")
    if cfg.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {cfg.device!r}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {cfg.threads}")
    nonfinite = OmegaConf.select(cfg, "task.nonfinite", default="record")
    if nonfinite not in NONFINITE:
        raise ConfigError(
            f"task.nonfinite must be one of {', '.join(NONFINITE)}; got {nonfinite!r}"
        )


def build(cfg: DictConfig, device: torch.device | None = None):
    """Check ``cfg`` and instantiate ``(estimator, objective)`` on ``device``.

    Raises:
        ConfigError: with a one-line message naming the bad setting.
    """
    check_settings(cfg)
    if device is None:
        device = resolve_device(cfg.device)
    objective = _instantiate(cfg.objective, "objective", device=device, dtype=DTYPES[cfg.dtype])
    estimator = _instantiate(cfg.estimator, "estimator")
    return estimator, objective


def build_cell(cfg: DictConfig, device: torch.device | None = None):
    """Everything one sweep cell needs, built from its composed config, or ``ConfigError``.

    The CLI's pre-check calls this for every cell before anything runs, and the Hydra job
    calls it again, so a config that passes the check is exactly a config the job accepts.
    """
    built = build(cfg, device)
    if cfg.task.name == "train":
        from benchmarks.train import check_train

        check_train(cfg)
    return built


def measurement_settings(cfg: DictConfig) -> dict:
    """The keyword arguments every measurement (toy, model, along training) takes from cfg."""
    return {
        "n_samples": cfg.n_samples,
        "replicates": cfg.replicates,
        "seed": cfg.seed,
        "warmup_steps": cfg.task.warmup_steps,
        "timing_min_run_time": cfg.task.timing_min_run_time,
        "nonfinite": cfg.task.get("nonfinite", "record"),
    }
