"""What the speed suite measures: every estimator in conf/estimator/ on every toy and
model it applies to (on the importance-weighted toys, the multi-sample estimators: the
single-sample ones are timed on the other toys).

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
from estimators import NotApplicable, bound_k

CONF = Path(__file__).resolve().parents[2] / "conf"
ESTIMATORS = sorted(p.stem for p in (CONF / "estimator").glob("*.yaml"))
# The toys whose loss is a bound −L_K (estimators.ImportanceWeightedObjective).
IW_TOYS = ("linear_gaussian", "bernoulli_latent")
TOY_NAMES = [name for name in (*TOYS, *IW_TOYS) if (CONF / "objective" / f"{name}.yaml").is_file()]
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
    made = make_estimator(estimator)
    if toy in IW_TOYS and not made.importance_weighted:
        return False
    try:
        made.check(objective, objective.theta, n_samples)
    except NotApplicable:
        return False
    return True


def samples_for(estimator: str, draws: int) -> int:
    """Estimates per replicate that spend ``draws`` draws: ``draws / K`` for a multi-sample
    estimator (K draws per estimate), so every large case draws the same number."""
    return max(1, draws // bound_k(make_estimator(estimator)))


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
