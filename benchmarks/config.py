"""Typed top-level settings and the one place a composed config becomes objects.

``build`` is used both by the Hydra job (``benchmarks.run``) and by the CLI's check of
every sweep cell before anything runs, so a config that passes the check is exactly a
config the job accepts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("cpu", "cuda", "auto")


class ConfigError(ValueError):
    """A bad setting; its message is one line naming the setting and what is allowed."""


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
    estimator: Any = MISSING
    objective: Any = MISSING
    task: Any = MISSING
    sweep: Any = None
    # The models' data set (conf/data/); objectives that use it interpolate ${data}.
    data: Any = None


ConfigStore.instance().store(name="gradbench_schema", node=Settings)


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
        message = str(exc.__cause__ or exc).splitlines()[0]
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
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {cfg.threads}")


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
