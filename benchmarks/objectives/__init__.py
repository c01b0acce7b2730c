"""Objectives: the toy suite with exact answers (``toy``), and ``linear_gaussian``."""

from benchmarks.objectives.linear_gaussian import LinearGaussian
from benchmarks.objectives.toy import (
    TOYS,
    BernoulliThreshold,
    CategoricalLinear,
    GaussianCosine,
    GaussianQuadratic,
    ToyObjective,
)

__all__ = [
    "TOYS",
    "BernoulliThreshold",
    "CategoricalLinear",
    "GaussianCosine",
    "GaussianQuadratic",
    "LinearGaussian",
    "ToyObjective",
]
