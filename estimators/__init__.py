"""Monte Carlo gradient estimators in pure torch. The contract is in ``estimators.base``."""

from estimators.base import (
    Estimator,
    NotApplicable,
    StochasticObjective,
    estimate_gradient,
    objective_with_estimator_gradient,
    replicate_gradients,
)
from estimators.baselines import Baseline, LeaveOneOut, MovingAverage, OptimalConstant
from estimators.pathwise import Reparameterization
from estimators.score_function import Reinforce

__all__ = [
    "Baseline",
    "Estimator",
    "LeaveOneOut",
    "MovingAverage",
    "NotApplicable",
    "OptimalConstant",
    "Reinforce",
    "Reparameterization",
    "StochasticObjective",
    "estimate_gradient",
    "objective_with_estimator_gradient",
    "replicate_gradients",
]
