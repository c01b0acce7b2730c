"""Statistical test helpers: z-tests with a stated false-fail rate.

Every statistical test in this suite is a two-sided z-test whose threshold is set by a
family-wise false-fail rate, split over the coordinates tested (Bonferroni). The seeds are
fixed, so a run is repeatable; the rate says how often the test would fail a correct
implementation over random seeds.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

from estimators import Estimator


def z_threshold(false_fail_rate: float, n_tests: int) -> float:
    """|z| above which a two-sided test rejects, Bonferroni over ``n_tests`` tests."""
    return NormalDist().inv_cdf(1 - false_fail_rate / (2 * n_tests))


def mean_z(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """z-scores of the sample mean against ``expected``, per coordinate. samples [R, D]."""
    r = samples.shape[0]
    return (samples.mean(0) - expected) / (samples.var(0) / r).sqrt()


def variance_z(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """z-scores of the sample variance against ``expected``, per coordinate.

    The standard error of the sample variance is sqrt((m4 − s⁴) / R), with m4 the fourth
    central moment, estimated from the same samples (valid for large R).
    """
    r = samples.shape[0]
    centred = samples - samples.mean(0)
    s2 = centred.square().mean(0)
    m4 = centred.pow(4).mean(0)
    return (samples.var(0) - expected) / ((m4 - s2.square()) / r).sqrt()


class Scaled(Estimator):
    """Negative control: a correct estimator times 1.1 (a 10% bias)."""

    def __init__(self, inner, factor=1.1):
        self.inner, self.factor = inner, factor

    def check(self, objective, theta, n_samples):
        self.inner.check(objective, theta, n_samples)

    def surrogate(self, objective, theta, n_samples):
        return self.factor * self.inner.surrogate(objective, theta, n_samples)
