"""Statistical test helpers: z-tests with a stated false-fail rate, and the suite's budget.

Every statistical test in this suite is a two-sided z-test whose threshold is set by a
family-wise false-fail rate, split over the coordinates tested (Bonferroni). The seeds are
fixed, so a run is repeatable; the rate says how often the test would fail a correct
implementation over random seeds.

A negative control (a deliberately wrong estimator or value that a test must reject) can
fail too, by missing the error. Each one checks its power first: the expected |z| of the
error it must see lies above the threshold by ``power_margin(miss_rate)``, so it misses
with probability at most ``miss_rate``.

``FALSE_FAIL_RATES`` lists every family of the default suite with its rate; a test reads
its rate from there by name (``rate("...")``), ``tests/test_budget.py`` checks that the
rates sum to at most ``SUITE_BUDGET`` and that docs/testing.md lists the same table.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

from benchmarks.measure import variance_standard_error
from benchmarks.significance import bonferroni_z
from estimators import Estimator

SUITE_BUDGET = 1e-3

# Family -> probability over seeds that it fails a correct implementation in one run.
# "miss:" families are negative controls: the probability that they miss the error.
FALSE_FAIL_RATES: dict[str, float] = {
    "toys: closed-form value is the mean cost": 1e-5,
    "toys: unbiasedness of every estimator": 2e-5,
    "miss: toys: scaled and self-mean estimators rejected": 1e-5,
    "toys: variance matches the closed forms": 2e-5,
    "miss: toys: variance test rejects the wrong closed form": 1e-5,
    "discrete: unbiasedness": 2e-5,
    "miss: discrete: scaled DisARM and measure-valued rejected": 1e-5,
    "discrete: Gumbel-softmax matches its relaxed gradient": 1e-5,
    "miss: discrete: Gumbel-softmax bias seen": 1e-5,
    "discrete: Bernoulli variances match the reference": 2e-5,
    "miss: discrete: wrong Bernoulli reference rejected": 1e-5,
    "discrete: measure-valued variance through the harness": 1e-5,
    "discrete: bernoulli_shared variances match enumeration": 1e-5,
    "scores: Bernoulli draws have the right mean": 1e-5,
    "miss: scores: shifted Bernoulli mean rejected": 1e-5,
    "models: unbiased against enumeration": 2e-5,
    "miss: models: scaled and relaxed estimators rejected": 1e-5,
    "models: Bayesian logistic regression quadrature gradient": 1e-5,
    "models: held-out IWAE bound unbiased for its exact L_K": 1e-5,
    "miss: models: the ELBO is rejected as an estimate of L_K": 1e-5,
    "multisample: IWAE at the posterior, mean and Fisher/K": 1e-5,
    "miss: multisample: a Fisher/K 10% off rejected": 1e-5,
    "multisample: unbiased for the bound of their K": 2e-5,
    "multisample: single-sample estimators see the ELBO": 1e-5,
    "miss: multisample: biased estimators rejected": 1e-5,
    "multisample: VIMCO against enumeration": 1e-5,
    "multisample: VAEs unbiased for the bound of their K": 2e-5,
    "miss: multisample: VAE negative controls rejected": 1e-5,
    "control variates: unbiased": 2e-5,
    "miss: control variates: each known bug rejected": 1e-5,
    "control variates: tiny VAE against enumeration": 1e-5,
    "miss: control variates: VAE detached z̃ rejected": 1e-5,
    "compare: a re-run with a new seed raises no alarm": 5e-5,
    "verify: our estimators pass": 6e-5,
    "miss: verify: wrong estimators fail": 3e-5,
    "miss: compare: an offset estimator's bias is flagged": 1e-5,
    "miss: compare: a variance increase through the CLI is flagged": 1e-5,
}


def rate(family: str) -> float:
    """The false-fail rate of ``family`` (a key of ``FALSE_FAIL_RATES``)."""
    return FALSE_FAIL_RATES[family]


def power_margin(miss_rate: float) -> float:
    """How far above the threshold a negative control's expected |z| must lie so that it
    misses the error with probability at most ``miss_rate`` (one-sided normal quantile)."""
    return NormalDist().inv_cdf(1 - miss_rate)


def z_threshold(false_fail_rate: float, n_tests: int) -> float:
    """|z| above which a two-sided test rejects, Bonferroni over ``n_tests`` tests."""
    return bonferroni_z(false_fail_rate, n_tests)


def mean_z(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """z-scores of the sample mean against ``expected``, per coordinate. samples [R, D]."""
    r = samples.shape[0]
    return (samples.mean(0) - expected) / (samples.var(0) / r).sqrt()


def variance_z(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """z-scores of the sample variance against ``expected``, per coordinate, with the
    fourth-moment standard error the records use (valid for large R)."""
    return (samples.var(0) - expected) / variance_standard_error(samples)


class Scaled(Estimator):
    """Negative control: a correct estimator times 1.1 (a 10% bias)."""

    def __init__(self, inner, factor=1.1):
        self.inner, self.factor = inner, factor

    def check(self, objective, theta, n_samples):
        self.inner.check(objective, theta, n_samples)

    def surrogate(self, objective, theta, n_samples):
        return self.factor * self.inner.surrogate(objective, theta, n_samples)
