"""Objectives: the toy suite with exact answers (``toy``), and importance-weighted bounds
with exact answers (``linear_gaussian``, ``bernoulli_latent``)."""

from benchmarks.objectives.bernoulli_latent import BernoulliLatent
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
    "BernoulliLatent",
    "BernoulliThreshold",
    "CategoricalLinear",
    "GaussianCosine",
    "GaussianQuadratic",
    "LinearGaussian",
    "ToyObjective",
]
