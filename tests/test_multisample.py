"""Multi-sample bounds: IWAE, STL, DReG, VIMCO on ``linear_gaussian`` and a Bernoulli joint.

Every estimator here estimates ∇θ of the loss −L_K. Exact tests redraw the estimator's
noise and evaluate its formula by hand (float64). Statistical tests are z-tests with the
false-fail rate in their docstrings (each ≤ 1e-5, Bonferroni over the coordinates and
cases inside); negative controls must fail the same tests.
"""

import itertools
import math

import pytest
import torch
from torch.distributions import Normal

from benchmarks.measure import measure_variance, variance_standard_error
from benchmarks.objectives import (
    BernoulliLatent,
    BernoulliThreshold,
    GaussianQuadratic,
    LinearGaussian,
)
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
