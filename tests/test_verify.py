"""``gradbench verify``: our estimators get a certificate, wrong ones are caught.

Seeds are fixed. Each certificate runs at the false-fail rate the suite's budget gives it
(tests/stats.py); each negative control checks that the certificate could see its error
(the detectable relative bias) before it asserts the failure.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.verify import SUITE, format_certificate, verify, write_certificate
from estimators import (
    VIMCO,
    Baseline,
    DisARM,
    Estimator,
    GumbelSoftmax,
    LeaveOneOut,
    Reinforce,
    Reparameterization,
)
from tests.stats import Scaled, rate

REPLICATES = 20_000
# Nine certificates of correct estimators share the family's rate: five here, the toy
# cells of the decoder control, three in tests/test_plugins.py.
PASS_RATE = rate("verify: our estimators pass") / 9
# Four negative controls share the rate at which one may miss its error.
MISS_RATE = rate("miss: verify: wrong estimators fail") / 4
MODELS = ("vae_bernoulli", "bayes_logreg")


class MeanIncludingSelf(Baseline):
    """Negative control: each sample's baseline is the mean of all samples, itself
    included; the estimate shrinks by (N − 1)/N."""

    def __call__(self, objective, theta, x, f):
        return f.mean(0, keepdim=True)


class NoDecoderGradient(Reinforce):
    """Negative control: REINFORCE with f detached in the surrogate, so the parameters of f
    (a VAE's decoder) get no gradient. A toy's f has no parameters: there it is right."""

    def surrogate(self, objective, theta, n_samples):
        dist = objective.distribution(theta)
        x = dist.sample((n_samples,))
        return objective.cost(x).detach() * dist.log_prob(x)


class WrongSigmaSign(Estimator):
    """Negative control: REINFORCE with the sign of the σ coordinate's score flipped."""

    def __init__(self):
        self.inner = Reinforce()

    def check(self, objective, theta, n_samples):
        if "sigma" not in getattr(objective, "param_names", ()):  # models have groups
            from estimators import NotApplicable

            raise NotApplicable("needs a sigma parameter")
        self.inner.check(objective, theta, n_samples)

    def surrogate(self, objective, theta, n_samples):
        sign = torch.ones_like(theta[..., :])
        sign[..., objective.param_names.index("sigma")] = -1
        flipped = theta.detach() + sign * (theta - theta.detach())
        return self.inner.surrogate(objective, flipped, n_samples)


@pytest.mark.parametrize(
    "make, name",
    [
        (Reinforce, "reinforce"),
        (lambda: Reinforce(LeaveOneOut()), "reinforce_loo"),
        (Reparameterization, "reparam"),
        (DisARM, "disarm"),
        (lambda: VIMCO(k=3), "vimco"),
    ],
)
def test_our_estimators_are_certified(make, name):
    cert = verify(make(), name, replicates=REPLICATES, false_fail=PASS_RATE)
    assert cert.ok, cert.failures
    assert all(c.passed for c in cert.cells if c.status == "ok")
    skipped = [c for c in cert.cells if c.status.startswith("skipped: ")]
    measured = {c.toy.split()[0] for c in cert.cells if c.status == "ok"}
    if name == "reparam":  # reparam needs a continuous family: the discrete toys are skipped
        assert len(skipped) == 20 and "gaussian" not in " ".join(c.toy for c in skipped)
        assert "vae_bernoulli" not in measured and "bayes_logreg" in measured
    elif name == "disarm":  # DisARM needs Bernoulli variables
        assert measured == {
            "bernoulli_threshold", "bernoulli_shared", "bernoulli_latent", "vae_bernoulli"
        }  # fmt: skip
    elif name == "vimco":  # importance-weighted objectives, each against its exact L_3
        assert measured == {"linear_gaussian", "bernoulli_latent", "vae_bernoulli"}
    else:  # the score-function estimators apply everywhere, every weight of a model tested
        assert not skipped and set(MODELS) <= measured
        vae = next(c for c in cert.cells if c.toy.startswith("vae_bernoulli"))
        assert len(vae.params) == 89 and vae.params[0] == "encoder[0]"


@pytest.mark.parametrize(
    "make",
    [lambda: Scaled(Reinforce(), 1.1), lambda: Reinforce(MeanIncludingSelf()), WrongSigmaSign],
    ids=["scaled_1.1", "loo_mean_including_self", "wrong_sigma_sign"],
)
def test_negative_controls_fail_with_the_claim_named(make):
    miss = MISS_RATE
    cert = verify(make(), "control", replicates=REPLICATES, false_fail=PASS_RATE, power=1 - miss)
    # Power: some cell detects a 10% bias with probability 1 − miss (all three errors are at
    # least that large in every cell they apply to).
    assert min(c.detectable_relative_bias for c in cert.cells if c.status == "ok") < 0.1
    assert not cert.ok and cert.failures
    assert all(" vs exact " in line and "z = " in line for line in cert.failures)
    vaes = [c for c in cert.cells if c.toy.startswith("vae_bernoulli")]
    if not isinstance(make(), WrongSigmaSign):  # the models have no σ: skipped
        # The errors scale every weight's gradient, and the VAE cells see them too.
        assert max(c.detectable_relative_bias for c in vaes) < 0.1
        assert not any(c.passed for c in vaes)


def test_a_control_wrong_only_on_a_model_is_caught_there():
    """Dropping f's own gradient changes nothing where f has no parameters (the toys,
    Bayesian logistic regression), so those cells pass; on the VAE the decoder gets no
    gradient and every cell fails, named."""
    cert = verify(NoDecoderGradient(), "control", replicates=REPLICATES, false_fail=PASS_RATE)
    vaes = [c for c in cert.cells if c.toy.startswith("vae_bernoulli")]
    assert all(c.passed for c in cert.cells if c not in vaes), cert.failures
    assert len(vaes) == 4 and not any(c.passed for c in vaes)
    assert all(c.status.startswith("failed: RuntimeError: ") for c in vaes)
    assert len(cert.failures) == 4 and all(
        line.startswith("vae_bernoulli") for line in cert.failures
    )
    assert not cert.ok and "4 claim(s) fail" in format_certificate(cert)


def test_a_declared_biased_estimator_is_measured_not_failed():
    cert = verify(GumbelSoftmax(1.0), "gumbel_softmax", replicates=2000)
    assert cert.unbiased_claimed is False and cert.ok
    measured = [c for c in cert.cells if c.status == "ok"]
    assert measured and all(c.passed is None for c in measured)
    # Its bias is many standard errors on the Bernoulli threshold toy at τ = 1.
    assert max(abs(z) for c in measured for z in c.z) > 5
    assert "measured" in format_certificate(cert) and "biased (declared" in format_certificate(cert)


def test_certificate_files(tmp_path):
    cert = verify(Reparameterization(), "reparam", replicates=2000, suite=SUITE[:2])
    md, js = write_certificate(cert, tmp_path)
    payload = json.loads(js.read_text())
    assert payload["estimator"] == "reparam" and payload["ok"] is True
    assert len(payload["cells"]) == 4 and payload["failures"] == []
    text = md.read_text()
    assert "| gaussian_quadratic mu=1 sigma=1 target=0 | 2 | mu |" in text
    # The closed forms at mu = 1, sigma = 1, target = 0, n = 2 for the mu coordinate:
    # REINFORCE (1 + 14 + 15) / 2 = 15, reparam 4σ²/2 = 2, optimal baseline (8 + 6) / 2 = 7.
    row = next(line for line in text.splitlines() if line.startswith("| gaussian_quadratic mu=1"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[5:8] == ["15", "2", "7"] and float(cells[4]) > 0


def test_an_estimator_that_applies_nowhere_is_not_certified():
    class Nowhere(Reinforce):
        def check(self, objective, theta, n_samples):
            from estimators import NotApplicable

            raise NotApplicable("applies to nothing")

    cert = verify(Nowhere(), "nowhere", replicates=100)
    assert not cert.ok and not cert.failures
    assert "no cell applies" in format_certificate(cert)


def test_non_finite_estimates_fail_the_cell_named():
    class NotFinite(Reinforce):
        def surrogate(self, objective, theta, n_samples):
            return super().surrogate(objective, theta, n_samples) * math.nan

    cert = verify(NotFinite(), "nan", replicates=100, suite=SUITE[:1])
    assert [c.status for c in cert.cells] == ["nonfinite", "nonfinite"]
    assert not cert.ok and cert.failures == [
        "gaussian_quadratic mu=1 sigma=1 target=0 n_samples=2: nonfinite",
        "gaussian_quadratic mu=1 sigma=1 target=0 n_samples=8: nonfinite",
    ]
