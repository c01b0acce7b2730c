"""Objectives: the interface the tasks use (``base``), the toy suite with exact answers
(``toy``), importance-weighted bounds with exact answers (``linear_gaussian``,
``bernoulli_latent``), the model contract (``model``) and the models (``vae``,
``bayes_logreg``) with their data (``data``)."""

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
