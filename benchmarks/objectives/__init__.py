"""Objectives: the toy suite with exact answers (``toy``)."""

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
    "ToyObjective",
]
