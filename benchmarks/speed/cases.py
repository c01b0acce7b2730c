"""What the speed suite measures: every estimator in conf/estimator/ on every toy and
model it applies to.

Estimators, toys and models are built from their config files with their default
settings (models on ``data=digits``), so an estimator added to conf/estimator/ is
benchmarked without touching this suite.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from benchmarks.config import instantiate_file, load_file
from benchmarks.measure import synchronize
from benchmarks.objectives import TOYS
from estimators import NotApplicable

CONF = Path(__file__).resolve().parents[2] / "conf"
ESTIMATORS = sorted(p.stem for p in (CONF / "estimator").glob("*.yaml"))
TOY_NAMES = [name for name in TOYS if (CONF / "objective" / f"{name}.yaml").is_file()]
MODEL_NAMES = [
    m for m in ("vae_gaussian", "vae_bernoulli") if (CONF / "objective" / f"{m}.yaml").is_file()
]


def make_estimator(name: str):
    """A fresh estimator (no carried state) from conf/estimator/NAME.yaml."""
    return instantiate_file(CONF / "estimator" / f"{name}.yaml")


def make_toy(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The toy with its default parameters from conf/objective/NAME.yaml."""
    return instantiate_file(CONF / "objective" / f"{name}.yaml", device=device, dtype=dtype)


@functools.cache
def make_model(name: str, device: torch.device):
    """The model at initialisation, on the digits data, from conf/objective/NAME.yaml.

    Cached: building loads the data, and models carry no estimator state.
    """
    data = load_file(CONF / "data" / "digits.yaml")
    return instantiate_file(CONF / "objective" / f"{name}.yaml", device=device, data=data)


def applicable(toy: str, estimator: str, n_samples: int) -> bool:
    if toy in MODEL_NAMES:
        objective = make_model(toy, torch.device("cpu"))
    else:
        objective = make_toy(toy, torch.device("cpu"))
    try:
        make_estimator(estimator).check(objective, objective.theta, n_samples)
    except NotApplicable:
        return False
    return True


def pairs(n_samples: int, objectives=None) -> list[tuple[str, str]]:
    """(objective, estimator) pairs where the estimator applies at ``n_samples``; all
    toys unless ``objectives`` names others."""
    names = TOY_NAMES if objectives is None else objectives
    return [(t, e) for t in names for e in ESTIMATORS if applicable(t, e, n_samples)]


def synchronized(fn, device: torch.device):
    """``fn`` followed by a device synchronisation, so a GPU's queued work is timed."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        synchronize(device)
        return out

    return call
