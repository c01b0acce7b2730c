"""What the speed suite measures: every estimator in conf/estimator/ on every toy it applies to.

Estimators and toys are built from their config files, so an estimator added to
conf/estimator/ is benchmarked without touching this suite.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmarks.measure import synchronize
from benchmarks.objectives import TOYS
from estimators import NotApplicable

CONF = Path(__file__).resolve().parents[2] / "conf"
ESTIMATORS = sorted(p.stem for p in (CONF / "estimator").glob("*.yaml"))
TOY_NAMES = [name for name in TOYS if (CONF / "objective" / f"{name}.yaml").is_file()]


def make_estimator(name: str):
    """A fresh estimator (no carried state) from conf/estimator/NAME.yaml."""
    return instantiate(OmegaConf.load(CONF / "estimator" / f"{name}.yaml"))


def make_toy(name: str, device: torch.device):
    """The toy with its default parameters from conf/objective/NAME.yaml."""
    return instantiate(OmegaConf.load(CONF / "objective" / f"{name}.yaml"), device=device)


def applicable(toy: str, estimator: str, n_samples: int) -> bool:
    objective = make_toy(toy, torch.device("cpu"))
    try:
        make_estimator(estimator).check(objective, objective.theta, n_samples)
    except NotApplicable:
        return False
    return True


def pairs(n_samples: int) -> list[tuple[str, str]]:
    """(toy, estimator) pairs where the estimator applies at ``n_samples``."""
    return [(t, e) for t in TOY_NAMES for e in ESTIMATORS if applicable(t, e, n_samples)]


def synchronized(fn, device: torch.device):
    """``fn`` followed by a device synchronisation, so a GPU's queued work is timed."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        synchronize(device)
        return out

    return call
