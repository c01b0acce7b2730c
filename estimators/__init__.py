"""Monte Carlo gradient estimators in pure torch. The contract is in ``estimators.base``."""

from estimators.antithetic import ARM, DisARM
from estimators.base import (
    Estimator,
    NotApplicable,
    StochasticObjective,
    estimate_gradient,
    objective_with_estimator_gradient,
    replicate_gradients,
)
from estimators.baselines import Baseline, Learned, LeaveOneOut, MovingAverage, OptimalConstant
from estimators.control_variates import REBAR, RELAX
from estimators.measure_valued import MeasureValued
from estimators.pathwise import Reparameterization
from estimators.relaxed import GumbelSoftmax, StraightThrough
from estimators.score_function import Reinforce

__all__ = [
    "ARM",
    "Baseline",
    "DisARM",
    "Estimator",
    "GumbelSoftmax",
    "Learned",
    "LeaveOneOut",
    "MeasureValued",
    "MovingAverage",
    "NotApplicable",
    "OptimalConstant",
    "REBAR",
    "RELAX",
    "Reinforce",
    "Reparameterization",
    "StochasticObjective",
    "StraightThrough",
    "estimate_gradient",
    "objective_with_estimator_gradient",
    "replicate_gradients",
]
