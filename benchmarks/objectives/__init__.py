"""Objectives: the interface the tasks use (``base``), the toy suite with exact answers
(``toy``), the model contract (``model``) and the models (``vae``, ``bayes_logreg``) with
their data (``data``)."""

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
