"""The door: the one place a composed config becomes plain objects.

``build_cell`` turns a cell's config into a ``Cell``: the estimator, the objective, the
task's typed settings (``benchmarks.settings``) and, for ``task=train``, the tracked
estimators. Below this module nothing reads a config: the tasks take these objects. The
Hydra job (``benchmarks.run``) and the CLI's check of every sweep cell before anything
runs both call ``build_cell``, so a config that passes the check is exactly a config the
job accepts. Also here: the schema of the top-level keys, where ``conf/`` is, and the
fingerprint and folder name of a cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from benchmarks.errors import ConfigError
from benchmarks.finished import ENTRY_POINT_GROUP, INSTALLED_CONF, SOURCE_CONF
from benchmarks.objectives.base import Objective
from benchmarks.settings import MeasureSettings, TrainSettings, VarianceSettings, check_sizes
from estimators import Estimator

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("cpu", "cuda", "auto")
# The settings each task takes; ``benchmarks.run.TASKS`` names the function that runs it.
TASK_SETTINGS: dict[str, type[MeasureSettings]] = {
    "variance": VarianceSettings,
    "train": TrainSettings,
}


def config_path() -> str:
    """The conf/ folder of a source checkout or editable install, else the installed copy."""
    return str(SOURCE_CONF) if (SOURCE_CONF / "config.yaml").is_file() else "pkg://benchmarks.conf"


def hydra_context():
    """Initialise Hydra's Compose API on gradbench's config tree (a context manager), with
    the composition caches of ``hydra_plugins.gradbench_sweeper._compose``."""
    from hydra_plugins.gradbench_sweeper import _compose

    _compose.install()
    GlobalHydra.instance().clear()
    path = config_path()
    if path.startswith("pkg://"):
        return initialize_config_module(path.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(path, version_base="1.3")


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

# Estimators that other installed packages provide: an entry point in ENTRY_POINT_GROUP names
# an estimator class (``my_estimator = "my_package.module:MyEstimator"``), and becomes the
# option ``estimator=my_estimator`` with that class as its ``_target_``.


def register_entry_point_estimators() -> list[str]:
    """Add every installed ``gradbench.estimators`` entry point to the ``estimator`` group.

    Returns the names registered. Options in ``conf/estimator/`` keep their meaning: an
    entry point with the same name as one of them is not registered.
    """
    from importlib.metadata import entry_points

    conf = SOURCE_CONF if (SOURCE_CONF / "config.yaml").is_file() else INSTALLED_CONF
    shipped = {p.stem for p in (conf / "estimator").glob("*.yaml")}
    names = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in shipped:
            continue
        target = point.value.replace(":", ".")
        ConfigStore.instance().store(group="estimator", name=point.name, node={"_target_": target})
        names.append(point.name)
    return names


register_entry_point_estimators()


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


def check_device_name(name: str) -> None:
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (an error without CUDA) or ``auto`` (CUDA if present, else CPU)."""
    check_device_name(name)
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
    nonfinite = OmegaConf.select(cfg, "task.nonfinite", default="record")
    check_sizes(cfg.n_samples, cfg.replicates, nonfinite)
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {cfg.dtype!r}")
    check_device_name(cfg.device)
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {cfg.threads}")


def build(cfg: DictConfig, device: torch.device | None = None) -> tuple[Estimator, Objective]:
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


def task_settings(cfg: DictConfig) -> MeasureSettings:
    """The typed settings of ``cfg.task`` (and the top-level sizes), or ``ConfigError``."""
    name = cfg.task.get("name")
    if name not in TASK_SETTINGS:
        raise ConfigError(f"task must be one of: {', '.join(TASK_SETTINGS)}; got {name!r}")
    kind = TASK_SETTINGS[name]
    task = OmegaConf.to_container(cfg.task, resolve=True)
    values = {f.name: task[f.name] for f in fields(kind) if f.name in task}
    values.update(n_samples=cfg.n_samples, replicates=cfg.replicates, seed=cfg.seed)
    return kind(**values)


def estimator_options() -> list[str]:
    """The options of the ``estimator`` config group (empty if Hydra is not initialised)."""
    if not GlobalHydra.instance().is_initialized():
        return []
    return sorted(GlobalHydra.instance().config_loader().get_group_options("estimator"))


def build_estimator(name: str) -> Estimator:
    """A fresh estimator from ``conf/estimator/<name>.yaml``, through Hydra's compose."""
    if GlobalHydra.instance().is_initialized():
        node = compose(config_name="config", overrides=[f"estimator={name}"]).estimator
    else:
        with hydra_context():
            node = compose(config_name="config", overrides=[f"estimator={name}"]).estimator
    return _instantiate(node, "estimator")


def instantiate_file(path: str | Path, **kwargs):
    """The object a single config file describes (``_target_`` and its settings), for the
    speed suite, which builds options one file at a time without composing the tree."""
    return instantiate(OmegaConf.load(path), **kwargs)


def load_file(path: str | Path) -> DictConfig:
    """One config file's settings (``conf/objective/NAME.yaml`` and the like)."""
    return OmegaConf.load(path)


@dataclass
class Cell:
    """Everything one sweep cell needs, built: what the tasks take instead of a config.

    Attributes:
        estimator: the estimator measured (and, for ``task=train``, trained with).
        objective: the objective, on its device and dtype.
        task: the task's settings (``VarianceSettings`` or ``TrainSettings``).
        task_name: ``variance`` or ``train`` (a key of ``benchmarks.run.TASKS``).
        estimator_name, objective_name: the config options chosen, for the records.
        tracked: for ``task=train``, the other estimators of ``task.track``, fresh.
    """

    estimator: Estimator
    objective: Objective
    task: MeasureSettings
    task_name: str
    estimator_name: str = ""
    objective_name: str = ""
    tracked: dict[str, Estimator] = field(default_factory=dict)


def build_cell(
    cfg: DictConfig,
    device: torch.device | None = None,
    *,
    estimator_name: str = "",
    objective_name: str = "",
) -> Cell:
    """Everything one sweep cell needs, built from its composed config, or ``ConfigError``.

    The CLI's pre-check calls this for every cell before anything runs, and the Hydra job
    calls it again, so a config that passes the check is exactly a config the job accepts.
    """
    estimator, objective = build(cfg, device)
    settings = task_settings(cfg)
    tracked = {}
    if isinstance(settings, TrainSettings):
        options = estimator_options()
        for name in settings.track:
            if options and name not in options:
                raise ConfigError(
                    f"task.track: unknown estimator {name!r}; choose from: {', '.join(options)}"
                )
            if name != estimator_name and name not in tracked:
                tracked[name] = build_estimator(name)
    return Cell(
        estimator=estimator,
        objective=objective,
        task=settings,
        task_name=cfg.task.name,
        estimator_name=estimator_name,
        objective_name=objective_name,
        tracked=tracked,
    )
