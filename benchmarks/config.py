"""The door: the one place a composed config becomes plain objects.

``build_cell`` turns a cell's config into a ``Cell``: the estimator, the objective, the
task's typed settings (``benchmarks.settings``) and, for ``task=train``, the tracked
estimators. Below this module nothing reads a config: the tasks take these objects. The
Hydra job (``benchmarks.run``) and the CLI's check of every sweep cell before anything
runs both call ``build_cell``, so a config that passes the check is exactly a config the
job accepts. What a config is before anything is built from it (the schema, where
``conf/`` is, a cell's fingerprint and folder name) is ``benchmarks.schema``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmarks.errors import ConfigError
from benchmarks.objectives.base import Objective
from benchmarks.schema import hydra_context
from benchmarks.settings import MeasureSettings, TrainSettings, VarianceSettings, check_sizes
from estimators import Estimator

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Objects ``build`` keeps for later configs that build the same (``_built``).
BUILT_KEPT = 16
DEVICES = ("cpu", "cuda", "auto")
# The settings each task takes; ``benchmarks.run.TASKS`` names the function that runs it.
TASK_SETTINGS: dict[str, type[MeasureSettings]] = {
    "variance": VarianceSettings,
    "train": TrainSettings,
}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def joblib_jobs(n_jobs: int | None) -> int:
    """The jobs joblib runs at once for its ``n_jobs`` (negative: CPUs + 1 + n_jobs)."""
    n = int(n_jobs or -1)
    return n if n > 0 else max(1, available_cpus() + 1 + n)


def joblib_threads(n_jobs: int | None) -> int:
    """torch threads per job under joblib: the CPUs shared out between its jobs at once."""
    cpus = available_cpus()
    return max(1, cpus // min(joblib_jobs(n_jobs), cpus))


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
        return joblib_threads(launcher.get("n_jobs"))
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


def build(
    cfg: DictConfig, device: torch.device | None = None, built: dict | None = None
) -> tuple[Estimator, Objective]:
    """Check ``cfg`` and instantiate ``(estimator, objective)`` on ``device``.

    ``built``: the objects built so far, by what each is built from (``_built``), for
    building many configs only to see that they build (the CLI's check).

    Raises:
        ConfigError: with a one-line message naming the bad setting.
    """
    check_settings(cfg)
    if device is None:
        device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    objective = _built(
        built, ("objective", cfg.objective, device, dtype),
        lambda: _instantiate(cfg.objective, "objective", device=device, dtype=dtype),
    )  # fmt: skip
    estimator = _built(
        built, ("estimator", cfg.estimator), lambda: _instantiate(cfg.estimator, "estimator")
    )
    return estimator, objective


def _built(built: dict | None, source: tuple, make):
    """``make()``, or where ``built`` holds an object made from the same ``source`` (its
    nodes resolved), that object. Built objects are shared: only for ``build``'s callers
    that use none of them. A node that does not resolve here is built as it is. ``built``
    keeps the last ``BUILT_KEPT`` objects: a model objective holds its data."""
    if built is None:
        return make()
    try:
        key = json.dumps(
            [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else str(v)
             for v in source],
            sort_keys=True,
        )  # fmt: skip
    except Exception:  # e.g. a ${hydra:...} value, outside a job: the job decides
        return make()
    if key not in built:
        if len(built) >= BUILT_KEPT:
            del built[next(iter(built))]  # the oldest
        built[key] = make()
    return built[key]


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
    built: dict | None = None,
) -> Cell:
    """Everything one sweep cell needs, built from its composed config, or ``ConfigError``.

    The CLI's pre-check calls this for every cell before anything runs, and the Hydra job
    calls it again, so a config that passes the check is exactly a config the job accepts.
    The check passes ``built`` (``build``): cells that differ only in their sizes or task
    settings share an estimator and objective there, built once.
    """
    estimator, objective = build(cfg, device, built)
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
                tracked[name] = _built(built, ("tracked", name), partial(build_estimator, name))
    return Cell(
        estimator=estimator,
        objective=objective,
        task=settings,
        task_name=cfg.task.name,
        estimator_name=estimator_name,
        objective_name=objective_name,
        tracked=tracked,
    )
