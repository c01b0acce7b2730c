"""Multi-sample bounds: IWAE, STL, DReG, VIMCO on ``linear_gaussian`` and a Bernoulli joint.

Every estimator here estimates ∇θ of the loss −L_K. Exact tests redraw the estimator's
noise and evaluate its formula by hand (float64). Statistical tests are z-tests with the
false-fail rate in their docstrings (each ≤ 1e-5, Bonferroni over the coordinates and
cases inside); negative controls must fail the same tests.
"""

import itertools
import math

import numpy
import pandas as pd
import pytest
import torch
from torch.distributions import Normal

from benchmarks.cli import main
from benchmarks.measure import measure_variance, variance_standard_error
from benchmarks.measure_model import measure_model_variance, replicate_moments, true_gradient
from benchmarks.objectives import (
    BernoulliLatent,
    BernoulliThreshold,
    GaussianQuadratic,
    LinearGaussian,
)
from benchmarks.objectives.data import synthetic
from benchmarks.objectives.vae import BernoulliVAE, GaussianVAE
from estimators import (
    IWAE,
    STL,
    VIMCO,
    DReG,
    NotApplicable,
    Reinforce,
    Reparameterization,
    estimate_gradient,
    replicate_gradients,
)
from estimators.multisample import leave_one_out_bound
from tests.stats import mean_z, power_margin, rate, variance_z, z_threshold

F64 = {"dtype": torch.float64}
X, MU, SIGMA = 1.4, 0.5, 0.8**0.5  # REFERENCE.md's check point, away from the posterior
POST_MU, POST_SIGMA = X / 2, 0.5**0.5


@pytest.fixture
def far():
    return LinearGaussian(x=X, mu=MU, sigma=SIGMA, **F64)


@pytest.fixture
def posterior():
    return LinearGaussian(x=X, mu=POST_MU, sigma=POST_SIGMA, **F64)


# -- hand formulas ------------------------------------------------------------------------


def draws(k, seed):
    """The ε [K] the estimators draw after ``torch.manual_seed(seed)`` (one estimate)."""
    torch.manual_seed(seed)
    return torch.randn((1, k), **F64)[0]


def pieces(eps, mu=MU, sigma=SIGMA):
    """Per sample: z, ℓ, dℓ/dz with q held fixed, the path ∂z/∂θ, the score ∇θ log q(z)."""
    z = mu + sigma * eps
    # log N(z; 0, 1) + log N(x; z, 1) − log N(z; mu, sigma²)
    log_w = -0.5 * (z**2 + (X - z) ** 2 - eps**2) - 0.5 * math.log(2 * math.pi) + math.log(sigma)
    dlogw_dz = -z + (X - z) + (z - mu) / sigma**2
    path = torch.stack([torch.ones_like(eps), eps], -1)  # [K, 2]
    score = torch.stack([eps / sigma, (eps**2 - 1) / sigma], -1)
    return z, log_w, dlogw_dz, path, score


@pytest.mark.parametrize("k", [1, 3])
def test_iwae_stl_dreg_single_estimate_is_the_hand_formula(far, k):
    eps = draws(k, 7)
    _, log_w, dlogw_dz, path, score = pieces(eps)
    w = torch.softmax(log_w, 0).unsqueeze(-1)
    path_term = dlogw_dz.unsqueeze(-1) * path
    expected = {
        IWAE: -(w * (path_term - score)).sum(0),
        STL: -(w * path_term).sum(0),
        DReG: -(w.square() * path_term).sum(0),
    }
    for cls, grad in expected.items():
        torch.manual_seed(7)
        torch.testing.assert_close(
            estimate_gradient(cls(k=k), far, far.theta, 1), grad, rtol=1e-12, atol=1e-14
        )


def test_surrogate_value_is_the_negative_bound_estimate(far):
    eps = draws(4, 2)
    bound = torch.logsumexp(pieces(eps)[1], 0) - math.log(4)
    for cls in (IWAE, STL, DReG):
        torch.manual_seed(2)
        value = cls(k=4).surrogate(far, far.theta.clone().requires_grad_(True), 1)
        torch.testing.assert_close(value, -bound.reshape(1), rtol=1e-13, atol=0)


def test_vimco_single_estimate_is_the_hand_formula(far):
    k = 4
    torch.manual_seed(5)
    grad = estimate_gradient(VIMCO(k=k), far, far.theta, 1)
    torch.manual_seed(5)
    z = Normal(torch.tensor(MU, **F64), torch.tensor(SIGMA, **F64)).sample((1, k))[0]
    _, log_w, _, _, score = pieces((z - MU) / SIGMA)
    w = log_w.exp()
    bound = torch.log(w.mean())
    signal = []
    for j in range(k):
        others = [i for i in range(k) if i != j]
        geometric = log_w[others].mean().exp()
        signal.append(bound - torch.log((w[others].sum() + geometric) / k))
    signal = torch.stack(signal).unsqueeze(-1)
    expected = -((signal * score).sum(0) - ((w / w.sum()).unsqueeze(-1) * score).sum(0))
    torch.testing.assert_close(grad, expected, rtol=1e-11, atol=1e-14)


def test_leave_one_out_bound_is_stable_when_one_weight_dominates():
    log_w = torch.tensor([[800.0, 0.0, 1.0]], **F64).unsqueeze(-1)  # [N=1, K=3, batch=1]
    got = leave_one_out_bound(log_w)[0, :, 0]
    # Leaving out the dominant weight: the other two, plus their geometric mean e^0.5.
    assert got[0].item() == pytest.approx(math.log((1 + math.e + math.exp(0.5)) / 3), rel=1e-14)
    # Leaving out a small weight: e^800 decides, log(e^800 (1 + tiny) / 3).
    assert got[1].item() == pytest.approx(800 - math.log(3), rel=1e-14)
    assert got[2].item() == pytest.approx(800 - math.log(3), rel=1e-14)


# -- the exact bound of linear_gaussian -----------------------------------------------------


def two_sample_bound(objective, theta, step=0.04, half_width=10.0):
    """L_2 by a two-dimensional trapezoid rule over (ε_1, ε_2), differentiable.

    The trapezoid rule rather than Gauss–Hermite: log(w_1 + w_2) has complex singularities
    near the real plane, which Gauss–Hermite's few widely spaced nodes converge to slowly
    (1e-6 off at 100 nodes per dimension); a fine uniform grid converges exponentially.
    """
    e = torch.arange(-half_width, half_width + step / 2, step, **F64)
    weight = torch.exp(-0.5 * e**2) * step / math.sqrt(2 * math.pi)
    z = theta[0] + theta[1] * e
    log_w = objective.log_joint(z) - Normal(theta[0], theta[1]).log_prob(z)
    pair = torch.logaddexp(log_w.unsqueeze(0), log_w.unsqueeze(1)) - math.log(2)
    return (pair * weight.unsqueeze(0) * weight.unsqueeze(1)).sum()


def test_quadrature_matches_the_closed_form_at_k1_and_a_2d_rule_at_k2(far):
    theta = far.theta.clone().requires_grad_(True)
    by_quadrature = far.bound_by_quadrature(theta, 1)
    closed = -far.exact_value(theta, 1)
    torch.testing.assert_close(by_quadrature, closed, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(v, theta)[0] for v in (by_quadrature, closed)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-11)
    for point in ([0.5, SIGMA], [0.0, 1.3], [1.0, 0.6]):
        theta = torch.tensor(point, **F64, requires_grad=True)
        by_quadrature = far.bound_by_quadrature(theta, 2)
        by_2d = two_sample_bound(far, theta)
        torch.testing.assert_close(by_quadrature, by_2d, rtol=0, atol=1e-12)
        grads = [torch.autograd.grad(v, theta)[0] for v in (by_quadrature, by_2d)]
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-11)


def test_bound_rises_with_k_to_log_p_x_as_reference_md_says(far):
    """REFERENCE.md: L_1 = −1.8605, L_50 = −1.7566, L_500 = −1.7556, log p(x) = −1.7555."""
    values = {k: -far.exact_value(far.theta, k).item() for k in (1, 2, 5, 50, 500)}
    assert values[1] == pytest.approx(-1.8605, abs=1e-4)
    assert values[50] == pytest.approx(-1.7566, abs=2e-4)  # a Monte Carlo value there
    assert values[500] == pytest.approx(-1.7556, abs=1e-4)
    assert far.log_marginal() == pytest.approx(-1.7555, abs=1e-4)
    assert list(values.values()) == sorted(values.values())
    # Large K: L_K ≈ log p(x) − (E_q[w²]/p(x)² − 1)/(2K), E_q[w²]/p(x)² in closed form.
    m, v, s2 = X / 2, 0.5, SIGMA**2
    second = s2 / math.sqrt(v * (2 * s2 - v)) * math.exp((m - MU) ** 2 / (2 * s2 - v))
    assert values[500] == pytest.approx(far.log_marginal() - (second - 1) / 1000, abs=2e-6)


def test_gradient_of_the_bound_is_zero_at_the_posterior_for_every_k(posterior):
    for k in (1, 2, 10, 100):
        torch.testing.assert_close(posterior.true_grad(k), torch.zeros(2, **F64), atol=1e-9, rtol=0)


def test_elbo_gradient_is_reference_md_closed_form(far):
    expected = torch.tensor([(MU - X / 2) / 0.5, -(1 / SIGMA - SIGMA / 0.5)], **F64)  # of −ELBO
    torch.testing.assert_close(far.true_grad(1), expected, rtol=1e-12, atol=1e-14)


# -- at the posterior -----------------------------------------------------------------------


def test_stl_and_dreg_are_zero_at_the_posterior_while_iwae_has_variance_fisher_over_k(
    posterior,
):
    """z-tests of IWAE's mean (0) and variance (Fisher/K: 1/(K s²) for mu, 2/(K s²) for
    sigma), Bonferroni over 2 K × 2 statistics × 2 coordinates."""
    threshold = z_threshold(rate("multisample: IWAE at the posterior, mean and Fisher/K"), 8)
    margin = power_margin(rate("miss: multisample: a Fisher/K 10% off rejected") / 2)
    for k in (1, 5):
        for cls in (STL, DReG):
            grads = replicate_gradients(cls(k=k), posterior, posterior.theta, 4, 1000)
            assert grads.abs().max().item() < 1e-12
        torch.manual_seed(11 + k)
        grads = replicate_gradients(IWAE(k=k), posterior, posterior.theta, 1, 120_000)
        fisher = torch.tensor([1.0, 2.0], **F64) / (k * POST_SIGMA**2)
        assert mean_z(grads, torch.zeros(2, **F64)).abs().max().item() < threshold
        assert variance_z(grads, fisher).abs().max().item() < threshold
        # Negative control: the variance test sees a Fisher/K off by 10% (power first).
        assert (0.1 * fisher / variance_standard_error(grads)).min() > threshold + margin
        assert variance_z(grads, 1.1 * fisher).abs().min().item() > threshold


# -- unbiasedness against the exact gradient of L_K -----------------------------------------

UNBIASED_CASES = [(IWAE, 1), (STL, 1), (DReG, 1), (IWAE, 5), (DReG, 5), (VIMCO, 2), (VIMCO, 5)]
Z_UNBIASED = z_threshold(
    rate("multisample: unbiased for the bound of their K") / len(UNBIASED_CASES), 2
)
# Negative controls judge their power from their own draw: the observed |z| (an estimate
# of its expectation, standard error 1) must clear the threshold by the margin plus one.
MISS_MARGIN = power_margin(rate("miss: multisample: biased estimators rejected") / 4) + 1


def unbiasedness_z(estimator, objective, replicates, seed):
    """z-scores of ``replicates`` one-estimate gradients against ∇(−L_K) of the estimator's K."""
    torch.manual_seed(seed)
    grads = replicate_gradients(estimator, objective, objective.theta, 1, replicates)
    return mean_z(grads, objective.true_grad(estimator.k))


@pytest.mark.parametrize(("cls", "k"), UNBIASED_CASES)
def test_multisample_estimators_are_unbiased_for_the_bound_of_their_k(far, cls, k):
    """The family's rate shared over the 7 cases, Bonferroni over each case's 2
    coordinates. The references: closed form at K = 1, the exact quadrature above."""
    z = unbiasedness_z(cls(k=k), far, 20000, seed=k)
    assert z.abs().max().item() < Z_UNBIASED


@pytest.mark.parametrize(
    ("cls", "objective"), [(Reinforce, "far"), (Reparameterization, "far"), (Reinforce, "bits")]
)
def test_single_sample_estimators_see_the_elbo(cls, objective, request):
    """The family's rate shared over the 3 cases, Bonferroni over coordinates: with
    f = −log w at q's current θ, their mean is ∇(−ELBO)."""
    objective = request.getfixturevalue(objective)
    torch.manual_seed(3)
    grads = replicate_gradients(cls(), objective, objective.theta, 1, 20000)
    z = mean_z(grads, objective.true_grad(1))
    family = rate("multisample: single-sample estimators see the ELBO")
    assert z.abs().max().item() < z_threshold(family / 3, z.numel())


def test_stl_is_biased_for_k_above_one(far):
    """The bias STL's docstring states, shown: at K = 10, away from the posterior, its mean
    is hundreds of standard errors from ∇(−L_10)."""
    z = unbiasedness_z(STL(k=10), far, 20000, seed=4)
    assert z.abs().max().item() > Z_UNBIASED + MISS_MARGIN
    assert STL.unbiased is False and IWAE.unbiased and DReG.unbiased and VIMCO.unbiased


class UniformWeights(IWAE):
    """Negative control: IWAE's gradient with weights 1/K instead of w̃_k, i.e. the
    gradient of the K-sample average ELBO, not of L_K."""

    def surrogate(self, objective, theta, n_samples):
        dist = objective.distribution(theta)
        z = dist.rsample((n_samples, self.k))
        return -(objective.log_joint(z) - dist.log_prob(z)).mean(1)


class BaselineWithSelf(VIMCO):
    """Negative control: VIMCO whose stand-in for w_k is the geometric mean of all K
    weights, w_k included, so the baseline depends on z_k."""

    def surrogate(self, objective, theta, n_samples):
        dist = objective.distribution(theta)
        z = dist.sample((n_samples, self.k))
        log_q = dist.log_prob(z)
        log_w = objective.log_joint(z) - log_q
        bound = torch.logsumexp(log_w, 1) - math.log(self.k)
        w = log_w.detach().exp()
        others = torch.log(w.sum(1, keepdim=True) - w)  # log Σ_{j≠k} w_j
        geometric_all = log_w.detach().mean(1, keepdim=True)
        baseline = torch.logaddexp(others, geometric_all) - math.log(self.k)
        score = ((bound.detach().unsqueeze(1) - baseline) * log_q).sum(1)
        return -(bound + score - score.detach())


def test_negative_controls_fail_the_unbiasedness_test(far):
    """The z-test of the unbiasedness cases (same threshold) rejects both controls (they
    sit tens of standard errors off)."""
    z = unbiasedness_z(UniformWeights(k=5), far, 20000, seed=5)
    assert z.abs().max().item() > Z_UNBIASED + MISS_MARGIN
    z = unbiasedness_z(BaselineWithSelf(k=2), far, 20000, seed=6)
    assert z.abs().max().item() > Z_UNBIASED + MISS_MARGIN


# -- VIMCO against enumeration on a Bernoulli joint -----------------------------------------


def bound_by_k_tuples(objective, theta, k):
    """L_K by summing over all (2^B)^K tuples of states: the definition, term by term."""
    states = objective.states(theta.dtype)
    log_q = objective.distribution(theta).log_prob(states)  # [2^B]
    log_w = objective.log_joint(states) - log_q
    tuples = torch.tensor(list(itertools.product(range(len(states)), repeat=k)))  # [S^K, K]
    log_mean = torch.logsumexp(log_w[tuples], -1) - math.log(k)
    return (log_q[tuples].sum(-1).exp() * log_mean).sum()


@pytest.fixture
def bits():
    return BernoulliLatent(x=1.0, weights=(1.0, -0.5, 2.0), logits=(0.3, -0.8, 1.1), **F64)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bernoulli_latent_bound_matches_the_sum_over_k_tuples(bits, k):
    theta = bits.theta.clone().requires_grad_(True)
    exact = -bits.exact_value(theta, k)
    by_tuples = bound_by_k_tuples(bits, theta, k)
    torch.testing.assert_close(exact, by_tuples, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(v, theta)[0] for v in (exact, by_tuples)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-11)


Z_ENUMERATION = z_threshold(rate("multisample: VIMCO against enumeration"), 6)


@pytest.mark.parametrize("k", [2, 3])
def test_vimco_is_unbiased_against_enumeration_of_all_k_tuples(bits, k):
    """Bonferroni over 2 K × 3 coordinates."""
    z = unbiasedness_z(VIMCO(k=k), bits, 40000, seed=k)
    assert z.abs().max().item() < Z_ENUMERATION


def test_vimco_baseline_with_self_is_caught_by_enumeration(bits):
    """Negative control for the test above (same threshold)."""
    z = unbiasedness_z(BaselineWithSelf(k=2), bits, 40000, seed=9)
    assert z.abs().max().item() > Z_ENUMERATION + MISS_MARGIN


# -- where they apply -----------------------------------------------------------------------


def test_not_applicable_reasons(bits):
    quadratic = GaussianQuadratic(**F64)
    with pytest.raises(
        NotApplicable, match=r"needs an importance-weighted objective \(log_joint\)"
    ):
        IWAE(k=2).check(quadratic, quadratic.theta, 10)
    for cls in (IWAE, STL, DReG):
        with pytest.raises(NotApplicable, match="needs a reparameterisable q; Independent"):
            cls(k=2).check(bits, bits.theta, 10)
    with pytest.raises(NotApplicable, match="needs k >= 2, got 1"):
        VIMCO(k=1).check(bits, bits.theta, 10)
    VIMCO(k=2).check(bits, bits.theta, 10)
    threshold = BernoulliThreshold(**F64)
    with pytest.raises(NotApplicable, match="log_joint"):
        VIMCO(k=2).check(threshold, threshold.theta, 10)
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="estimator.k must be a positive integer"):
            IWAE(k=bad)


def test_measure_variance_compares_with_the_bound_of_the_estimators_k(far):
    records = measure_variance(
        IWAE(k=10), far, estimator_name="iwae", objective_name="linear_gaussian",
        n_samples=2, replicates=50, seed=0, warmup_steps=1, timing_min_run_time=0.001,
    )  # fmt: skip
    assert records["k"].tolist() == [10, 10]
    assert records["true_grad"].tolist() == far.true_grad(10).tolist()
    assert records["true_value"].iloc[0] == far.exact_value(far.theta, 10).item()
    single = measure_variance(
        Reinforce(), far, estimator_name="reinforce", objective_name="linear_gaussian",
        n_samples=2, replicates=50, seed=0, warmup_steps=1, timing_min_run_time=0.001,
    )  # fmt: skip
    assert single["k"].tolist() == [1, 1]
    assert single["true_grad"].tolist() == far.true_grad(1).tolist()
    toy = measure_variance(
        Reinforce(), GaussianQuadratic(**F64), estimator_name="reinforce",
        objective_name="gaussian_quadratic", n_samples=2, replicates=50, seed=0,
        warmup_steps=1, timing_min_run_time=0.001,
    )  # fmt: skip
    assert toy["k"].tolist() == [1, 1]


def test_objective_settings_are_checked_in_one_line():
    with pytest.raises(ValueError, match="objective.sigma must be > 0, got 0.0"):
        LinearGaussian(sigma=0)
    with pytest.raises(ValueError, match="objective.weights needs one entry per logit, got 1"):
        BernoulliLatent(weights=(1.0,), logits=(0.0, 0.0))
    with pytest.raises(ValueError, match="objective.logits needs 1 to 12 entries, got 13"):
        BernoulliLatent(weights=(1.0,) * 13, logits=(0.0,) * 13)


# -- the VAEs as importance-weighted objectives ---------------------------------------------


def tiny_vae(cls, latent_dim, seed=1):
    """A VAE small enough for exact answers: 6 pixels, 4 hidden units, 4 data points."""
    data = synthetic(n_train=32, n_test=8, dim=6, seed=seed)
    return cls(data, latent_dim=latent_dim, hidden_dim=4, batch_size=4, init_seed=2, **F64)


def vae_gradient(vae, loss):
    """∇ of a scalar ``loss`` w.r.t. the VAE's groups, concatenated [P] (encoder first)."""
    params = [p for ps in vae.group_parameters().values() for p in ps]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def gauss_hermite_bound(vae, k, nodes=240):
    """L_K per data point of a one-latent Gaussian VAE, K ≤ 2, by a K-dimensional
    Gauss–Hermite rule over ε (z = μ + σ ε): [B], differentiable in every parameter."""
    eps, weight = numpy.polynomial.hermite_e.hermegauss(nodes)
    eps = torch.tensor(eps, **F64).reshape(-1, 1, 1)  # [n, 1, 1]
    weight = torch.tensor(weight / math.sqrt(2 * math.pi), **F64).reshape(-1, 1)  # [n, 1]
    theta = vae.encoder(vae.x)  # [B, 2]
    z = theta[:, :1] + theta[:, 1:].exp() * eps  # [n, B, 1]
    log_w = vae.log_joint(z) - vae.distribution(theta).log_prob(z)  # [n, B]
    if k == 1:
        return (weight * log_w).sum(0)
    pair = torch.logaddexp(log_w.unsqueeze(1), log_w.unsqueeze(0)) - math.log(2)  # [n, n, B]
    return (weight.unsqueeze(1) * weight.unsqueeze(0) * pair).sum((0, 1))


def vae_bound_by_k_tuples(vae, k):
    """L_K per data point of a Bernoulli VAE by summing over all (2^L)^K tuples, [B]."""
    states = vae.states().unsqueeze(1).expand(-1, len(vae.x), -1)  # [S, B, L]
    log_q = vae.distribution(vae.encoder(vae.x)).log_prob(states)  # [S, B]
    log_w = vae.log_joint(states) - log_q
    tuples = torch.tensor(list(itertools.product(range(len(states)), repeat=k)))  # [S^K, K]
    log_mean = torch.logsumexp(log_w[tuples], 1) - math.log(k)  # [S^K, B]
    return (log_q[tuples].sum(1).exp() * log_mean).sum(0)


@pytest.fixture
def gaussian_vae():
    return tiny_vae(GaussianVAE, latent_dim=1)


@pytest.fixture
def bernoulli_vae():
    return tiny_vae(BernoulliVAE, latent_dim=3)


def test_gauss_hermite_reference_has_converged_and_is_the_elbo_at_k1(gaussian_vae):
    """The rule converges geometrically (errors 4e-5, 2e-7, 5e-9 at 40, 80, 120 nodes):
    at 240 nodes it differs from 160 by under 1e-9, a millionth of the Monte Carlo
    standard errors it is compared with."""
    vae = gaussian_vae
    for k in (1, 2):
        coarse, fine = (
            vae_gradient(vae, -gauss_hermite_bound(vae, k, n).mean()) for n in (160, 240)
        )
        torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-9)
    # At K = 1, E_q[log p(x | z)] by quadrature plus the analytic KL is the same −ELBO.
    with torch.no_grad():
        elbo = gauss_hermite_bound(vae, 1)
        eps, weight = numpy.polynomial.hermite_e.hermegauss(240)
        theta = vae.theta
        z = theta[:, :1] + theta[:, 1:].exp() * torch.tensor(eps, **F64).reshape(-1, 1, 1)
        weight = torch.tensor(weight / math.sqrt(2 * math.pi), **F64).reshape(-1, 1)
        expected = -(weight * vae.cost(z)).sum(0) - vae.kl(theta)
    torch.testing.assert_close(elbo, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bernoulli_vae_exact_bound_is_the_sum_over_k_tuples(bernoulli_vae, k):
    """The model's exact −L_K (Frullani integral over the 2^L states; the analytic KL at
    K = 1) equals the definition term by term, in value and in every parameter's gradient."""
    vae = bernoulli_vae
    exact = vae.exact_loss(vae.x, k).mean()
    by_tuples = -vae_bound_by_k_tuples(vae, k).mean()
    torch.testing.assert_close(exact, by_tuples, rtol=0, atol=1e-12)
    grads = {g: vae_gradient(vae, v) for g, v in (("exact", exact), ("tuples", by_tuples))}
    torch.testing.assert_close(grads["exact"], grads["tuples"], rtol=0, atol=1e-11)
    exact_gradient = torch.cat(list(vae.exact_gradient(k).values()))
    torch.testing.assert_close(exact_gradient, grads["tuples"], rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    ("cls", "estimator"),
    [(GaussianVAE, IWAE(k=3)), (GaussianVAE, DReG(k=3)), (GaussianVAE, STL(k=3)),
     (GaussianVAE, VIMCO(k=3)), (BernoulliVAE, VIMCO(k=3))],
    ids=["gaussian-iwae", "gaussian-dreg", "gaussian-stl", "gaussian-vimco", "bernoulli-vimco"],
)  # fmt: skip
def test_one_batched_replicate_is_the_training_gradient_of_minus_l_k(cls, estimator):
    """Same random numbers: the batched replicate (θ and decoder copies) gives exactly the
    gradient backward() gives on the training loss, and that loss is −L_K's estimate (no
    KL added: the surrogate holds prior and entropy)."""
    vae = tiny_vae(cls, latent_dim=2)
    torch.manual_seed(3)
    batched = vae.replicate_gradients(estimator, 2, 1)
    torch.manual_seed(3)
    vae.zero_grad()
    loss = vae.loss(estimator, 2)
    loss.backward()
    for group, params in vae.group_parameters().items():
        expected = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(batched[group][0], expected, rtol=1e-10, atol=1e-12)
    torch.manual_seed(3)
    z = vae.distribution(vae.theta).sample((2, estimator.k))  # the draws of the surrogate
    bound = torch.logsumexp(vae.log_weights(z), 1) - math.log(estimator.k)
    torch.testing.assert_close(loss, -bound.mean(), rtol=1e-12, atol=0)


def vae_z(estimator, vae, truth, replicates, seed, truth_se=None):
    """z-scores of the mean of ``replicates`` one-estimate gradients against ``truth``
    [P] (its standard error ``truth_se`` in quadrature), over the coordinates that vary."""
    torch.manual_seed(seed)
    moments, _ = replicate_moments(estimator, vae, 1, replicates)
    mean = torch.cat([m.mean for m in moments.values()])
    se2 = torch.cat([m.var / m.count for m in moments.values()])
    if truth_se is not None:
        se2 = se2 + truth_se.square()
    keep = se2 > 0
    assert (mean - truth)[~keep].abs().sum() < 1e-12
    return (mean - truth)[keep] / se2[keep].sqrt()


VAE_CASES = [
    (GaussianVAE, IWAE, 1), (GaussianVAE, DReG, 1), (GaussianVAE, IWAE, 2),
    (GaussianVAE, DReG, 2), (GaussianVAE, VIMCO, 2), (BernoulliVAE, VIMCO, 2),
    (BernoulliVAE, VIMCO, 3),
]  # fmt: skip
# Shared by the 7 cases and the check of the Monte Carlo reference; Bonferroni over at
# most 90 coordinates (76 for the Gaussian VAE, 89 for the Bernoulli one).
Z_VAE = z_threshold(rate("multisample: VAEs unbiased for the bound of their K") / 8, 90)
VAE_REPLICATES = 20000


def exact_vae_gradient(vae, k):
    if isinstance(vae, GaussianVAE):
        return vae_gradient(vae, -gauss_hermite_bound(vae, k).mean()).detach()
    return torch.cat(list(vae.exact_gradient(k).values()))


@pytest.mark.parametrize(("cls", "estimator", "k"), VAE_CASES)
def test_multisample_estimators_are_unbiased_on_small_vaes(cls, estimator, k):
    """Encoder and decoder gradients of −L_K: against Gauss–Hermite quadrature on a
    one-latent Gaussian VAE, against enumeration on a 3-bit Bernoulli VAE."""
    vae = tiny_vae(cls, latent_dim=1 if cls is GaussianVAE else 3)
    z = vae_z(estimator(k=k), vae, exact_vae_gradient(vae, k), VAE_REPLICATES, seed=20 + k)
    assert z.abs().max().item() < Z_VAE


def test_monte_carlo_reference_of_l_k_agrees_with_quadrature(gaussian_vae):
    """The harness's truth for vae_gaussian at K = 2 (IWAE from reference_samples draws per
    data point) lies within its stated standard error of the quadrature gradient."""
    vae = gaussian_vae
    vae.reference_samples = 200_000
    reference, se = true_gradient(vae, 2)
    assert vae.true_grad_method == "reference"
    reference, se = torch.cat(list(reference.values())), torch.cat(list(se.values()))
    diff, keep = reference - exact_vae_gradient(vae, 2), se > 0
    assert diff[~keep].abs().max() < 1e-12  # weights of pixels that are 0 in the batch
    assert (diff[keep] / se[keep]).abs().max().item() < Z_VAE


class DoubleKL(IWAE):
    """Negative control: IWAE presented as a single-sample estimator, so the VAE adds the
    analytic KL to a surrogate that holds it already."""

    importance_weighted = False


def test_vae_negative_controls_fail_the_unbiasedness_test(gaussian_vae, bernoulli_vae):
    """The test above rejects the KL counted twice (Gaussian VAE, K = 2), VIMCO with the
    sample itself in its baseline (Bernoulli VAE, K = 2), and STL, biased for K > 1 as its
    docstring says (Gaussian VAE, K = 2)."""
    margin = power_margin(rate("miss: multisample: VAE negative controls rejected") / 3) + 1
    controls = ((DoubleKL(k=2), gaussian_vae), (BaselineWithSelf(k=2), bernoulli_vae),
                (STL(k=2), gaussian_vae))  # fmt: skip
    for control, vae in controls:
        z = vae_z(control, vae, exact_vae_gradient(vae, 2), VAE_REPLICATES, seed=31)
        assert z.abs().max().item() > Z_VAE + margin, type(control).__name__


def test_where_multisample_estimators_apply_on_the_vaes(gaussian_vae, bernoulli_vae):
    for estimator in (IWAE(k=2), STL(k=2), DReG(k=2), VIMCO(k=2)):
        estimator.check(gaussian_vae, gaussian_vae.theta, 1)
    VIMCO(k=2).check(bernoulli_vae, bernoulli_vae.theta, 1)
    for estimator in (IWAE(k=2), STL(k=2), DReG(k=2)):
        with pytest.raises(NotApplicable) as reason:
            estimator.check(bernoulli_vae, bernoulli_vae.theta, 1)
        assert str(reason.value) == (
            f"{estimator.name} needs a reparameterisable q; Independent(Bernoulli) is not "
            "(vimco takes any q)"
        )


def test_vae_records_carry_k_the_bound_and_its_truth(bernoulli_vae):
    vae = bernoulli_vae
    frames = {
        k: measure_model_variance(
            VIMCO(k=k), vae, estimator_name="vimco", objective_name="vae_bernoulli",
            n_samples=2, replicates=50, seed=0, warmup_steps=1, timing_min_run_time=0.001,
        ).set_index("param")
        for k in (2, 3)
    }  # fmt: skip
    single = measure_model_variance(
        Reinforce(), vae, estimator_name="reinforce", objective_name="vae_bernoulli",
        n_samples=2, replicates=50, seed=0, warmup_steps=1, timing_min_run_time=0.001,
    ).set_index("param")  # fmt: skip
    assert single["k"].tolist() == [1] * 3 and single["bound"].tolist() == ["elbo"] * 3
    for k, frame in frames.items():
        assert frame["k"].tolist() == [k] * 3 and frame["bound"].tolist() == [f"L_{k}"] * 3
        assert (frame["status"] == "ok").all()
        exact = vae.exact_gradient(k)["decoder"]
        assert frame.loc["decoder", "true_grad"] == pytest.approx(
            float(exact.square().mean().sqrt())
        )
    # Each K's truth is its own bound's (L_2 and L_3 differ), and neither is the ELBO's.
    truths = [frames[2].loc["all", "true_grad"], frames[3].loc["all", "true_grad"],
              single.loc["all", "true_grad"]]  # fmt: skip
    assert len(set(truths)) == 3


TINY_TRAIN = ["task=train", "data=synthetic", "task.steps=40", "task.eval_every=20", "task.lr=0.01",
              "replicates=8", "task.timing_min_run_time=0.001", "threads=1"]  # fmt: skip


def test_iwae_trains_a_gaussian_vae_on_its_bound(tmp_path):
    out = tmp_path / "iwae"
    code = main([
        "run", "objective=vae_gaussian", "estimator=iwae", "estimator.k=5", *TINY_TRAIN,
        "objective.hidden_dims=[8]", "objective.latent_dim=2", "objective.true_grad=none",
        "task.track=[reparam]", f"hydra.run.dir={out}",
    ])  # fmt: skip
    assert code == 0
    log = pd.read_parquet(out / "train.parquet")
    assert set(log["k"]) == {5} and set(log["bound"]) == {"L_5"}
    # The loss logged is −L_5 from fresh draws, below −ELBO (L_K ≥ ELBO), and it falls.
    assert log["loss"].mean() < -log["train_elbo"].mean()
    assert log["loss"].iloc[-10:].mean() < log["loss"].iloc[:10].mean() - 1
    records = pd.read_parquet(out / "records.parquet")
    assert (records["status"] == "ok").all() and set(records["step"]) == {0, 20, 40}
    by_estimator = records.groupby("estimator")
    assert by_estimator["k"].unique().to_dict() == {"iwae": [5], "reparam": [1]}
    assert by_estimator["bound"].unique().map(list).to_dict() == {
        "iwae": ["L_5"],
        "reparam": ["elbo"],
    }


def test_vimco_trains_a_sigmoid_belief_net_on_its_exact_bound(tmp_path):
    """Four latent bits: the logged loss is the exact −L_4 (enumeration), strictly below
    the exact −ELBO at every step, and the measured truth is exact too."""
    out = tmp_path / "vimco"
    code = main([
        "run", "objective=vae_sbn_linear", "estimator=vimco", "estimator.k=4", *TINY_TRAIN,
        "objective.latent_dim=4", "objective.batch_size=16", f"hydra.run.dir={out}",
    ])  # fmt: skip
    assert code == 0
    log = pd.read_parquet(out / "train.parquet")
    assert set(log["k"]) == {4} and set(log["bound"]) == {"L_4"}
    assert (log["loss"] < -log["train_elbo"]).all()
    records = pd.read_parquet(out / "records.parquet")
    assert (records["status"] == "ok").all() and (records["true_grad_method"] == "exact").all()
    assert set(records["k"]) == {4} and set(records["bound"]) == {"L_4"}
    assert records["true_grad"].notna().all()
