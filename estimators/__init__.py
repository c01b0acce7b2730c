"""Monte Carlo gradient estimators in pure torch. The contract is in ``estimators.base``."""

from estimators.antithetic import ARM, DisARM
from estimators.base import (
    Estimator,
    ImportanceWeightedObjective,
    NotApplicable,
    StochasticObjective,
    bound_k,
    estimate_gradient,
    is_importance_weighted,
    objective_with_estimator_gradient,
    replicate_gradients,
)
from estimators.baselines import Baseline, Learned, LeaveOneOut, MovingAverage, OptimalConstant
from estimators.control_variates import REBAR, RELAX
from estimators.measure_valued import MeasureValued
from estimators.multisample import IWAE, STL, VIMCO, DReG
from estimators.pathwise import Reparameterization
from estimators.relaxed import GumbelSoftmax, StraightThrough
from estimators.score_function import Reinforce

__all__ = [
    "ARM",
    "Baseline",
    "DReG",
    "DisARM",
    "Estimator",
    "GumbelSoftmax",
    "IWAE",
    "ImportanceWeightedObjective",
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
    "STL",
    "StochasticObjective",
    "StraightThrough",
    "VIMCO",
    "bound_k",
    "estimate_gradient",
    "is_importance_weighted",
    "objective_with_estimator_gradient",
    "replicate_gradients",
]
