"""Tests of the estimators beyond the card: ARM, DisARM, Gumbel-softmax, straight-through
and measure-valued.

Exact tests seed torch, let the estimator draw, then re-seed and redraw the same numbers in
the same order to evaluate the formula by hand. Statistical tests are two-sided z-tests in
float64 with fixed seeds; each family states its false-fail rate (Bonferroni over its
coordinates, see tests/stats.py), and each has a negative control that it must reject.
"""

import itertools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.distributions import Bernoulli, Independent, Normal

from benchmarks.measure import measure_variance
from benchmarks.objectives import BernoulliThreshold, CategoricalLinear, GaussianQuadratic
from benchmarks.objectives.toy import BernoulliShared, GaussianCosine
from estimators import (
    ARM,
    DisARM,
    GumbelSoftmax,
    LeaveOneOut,
    MeasureValued,
    NotApplicable,
    Reinforce,
    StraightThrough,
    estimate_gradient,
    replicate_gradients,
)
from tests.stats import Scaled, mean_z, power_margin, rate, variance_z, z_threshold

F64 = {"dtype": torch.float64}
CONF = Path(__file__).parents[1] / "conf" / "estimator"


class Bits:
    """x ~ Independent(Bernoulli(logits=θ), 1), θ [*batch, K]; f(b) = (b·w − c)².

    f couples the bits, so per-dimension formulas are tested where they matter. The exact
    gradient comes from enumerating the 2^K states.
    """

    cost_is_differentiable = False

    def __init__(self, theta, w=(1.0, -2.0, 0.5), c=0.3):
        self.theta = torch.as_tensor(theta, **F64)
        self.w = torch.tensor(w, **F64)
        self.c = torch.as_tensor(c, **F64)

    def distribution(self, theta):
        return Independent(Bernoulli(logits=theta), 1)

    def cost(self, x):
        return (x @ self.w - self.c) ** 2

    def relaxed_cost(self, y):
        return self.cost(y)

    def true_grad(self):
        k = self.theta.shape[-1]
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), **F64)
        theta = self.theta.clone().requires_grad_(True)
        log_p = self.distribution(theta.unsqueeze(-2)).log_prob(states)  # [*batch, 2^K]
        (grad,) = torch.autograd.grad((log_p.exp() * self.cost(states)).sum(), theta)
        return grad


class DiagonalGaussianDot:
    """x ~ N(μ, diag σ²), θ = (μ, σ) [*batch, 2K]; f(x) = (x·w − c)².

    L = (μ·w − c)² + Σ w_k² σ_k², so ∇μ L = 2(μ·w − c) w and ∇σ L = 2 w² σ.
    """

    cost_is_differentiable = True

    def __init__(self, mu=(0.4, -1.0), sigma=(0.7, 1.3), w=(1.5, -0.5), c=0.2):
        self.theta = torch.tensor([*mu, *sigma], **F64)
        self.w, self.c = torch.tensor(w, **F64), c
        self.k = len(mu)

    def distribution(self, theta):
        return Independent(Normal(theta[..., : self.k], theta[..., self.k :]), 1)

    def cost(self, x):
        return (x @ self.w - self.c) ** 2

    def true_grad(self):
        mu, sigma = self.theta[: self.k], self.theta[self.k :]
        return torch.cat([2 * (mu @ self.w - self.c) * self.w, 2 * self.w**2 * sigma])


def replicates(estimator, objective, n_samples, r, seed=0):
    """[r, D] estimates (batch dimensions of θ flattened into D)."""
    torch.manual_seed(seed)
    estimator.check(objective, objective.theta, n_samples)
    grads = replicate_gradients(estimator, objective, objective.theta, n_samples, r)
    return grads.reshape(r, -1)


# --- Exact gradients at fixed randomness -------------------------------------------------

LOGITS = [[0.3, -0.8, 1.5], [-1.2, 0.0, 0.7]]  # [batch 2, K 3]


def antithetic_pair(logits, seed, pairs=1):
    torch.manual_seed(seed)
    u = torch.rand((pairs, *logits.shape), **F64)
    b = (u < torch.sigmoid(logits)).double()
    b_tilde = (u > torch.sigmoid(-logits)).double()
    return u, b, b_tilde


def test_disarm_one_pair_is_the_per_dimension_formula():
    objective = Bits(LOGITS)
    torch.manual_seed(1)
    grad = estimate_gradient(DisARM(), objective, objective.theta, 2)
    u, b, bt = antithetic_pair(objective.theta, 1)
    expected = torch.zeros(2, 3, **F64)
    for i, k in itertools.product(range(2), range(3)):
        f, ft = objective.cost(b[0, i]), objective.cost(bt[0, i])
        if b[0, i, k] != bt[0, i, k]:
            sign = -1.0 if bt[0, i, k] == 1 else 1.0
            phi = objective.theta[i, k]
            expected[i, k] = 0.5 * (f - ft) * sign * torch.sigmoid(phi.abs())
    assert (b != bt).any() and (b == bt).any()  # both branches are exercised
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_arm_one_pair_is_the_formula():
    objective = Bits(LOGITS)
    torch.manual_seed(2)
    grad = estimate_gradient(ARM(), objective, objective.theta, 2)
    u, b, bt = antithetic_pair(objective.theta, 2)
    f, ft = objective.cost(b[0]), objective.cost(bt[0])  # [2]
    expected = (ft - f).unsqueeze(-1) * (u[0] - 0.5)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_disarm_averages_its_pairs_and_is_exact_at_logit_zero():
    objective = Bits(LOGITS)
    torch.manual_seed(3)
    surrogate = DisARM().surrogate(objective, objective.theta, 6)
    assert surrogate.shape == (3, 2)  # n_samples / 2 terms, one per pair
    torch.manual_seed(3)
    grad = estimate_gradient(DisARM(), objective, objective.theta, 6)
    u, b, bt = antithetic_pair(objective.theta, 3, pairs=3)
    f, ft = objective.cost(b), objective.cost(bt)  # [3, 2]
    sign = 1 - 2 * bt
    weight = sign * (b != bt).double() * torch.sigmoid(objective.theta.abs())
    expected = (0.5 * (f - ft).unsqueeze(-1) * weight).mean(0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    # One bit at logit 0: the pair always differs and the estimate is the gradient itself.
    threshold = BernoulliThreshold(logit=0.0, target=0.45, **F64)
    grads = replicates(DisARM(), threshold, 2, 1000)
    torch.testing.assert_close(grads, threshold.true_grad().expand(1000, 1), rtol=1e-13, atol=0)


def test_gumbel_softmax_single_sample_bernoulli_and_categorical():
    phi, tau, t = -0.3, 0.7, 0.45
    objective = BernoulliThreshold(logit=phi, target=t, **F64)
    torch.manual_seed(4)
    grad = estimate_gradient(GumbelSoftmax(tau), objective, objective.theta, 1)
    torch.manual_seed(4)
    u = torch.rand((1,), **F64)
    y = torch.sigmoid((phi + u.log() - (-u).log1p()) / tau)
    torch.testing.assert_close(grad, 2 * (y - t) * y * (1 - y) / tau, rtol=1e-10, atol=0)

    logits, rewards = [0.5, -0.3, 0.1], [1.0, 2.0, -1.0]
    objective = CategoricalLinear(logits=logits, rewards=rewards, **F64)
    torch.manual_seed(5)
    grad = estimate_gradient(GumbelSoftmax(tau), objective, objective.theta, 1)
    torch.manual_seed(5)
    gumbel = -(-torch.rand((1, 3), **F64).log()).log()
    y = torch.softmax((torch.tensor(logits, **F64) + gumbel[0]) / tau, -1)
    r = torch.tensor(rewards, **F64)
    # ∇φ (y·r) = (diag y − y yᵀ) r / τ
    torch.testing.assert_close(grad, y * (r - y @ r) / tau, rtol=1e-10, atol=1e-14)


def test_straight_through_is_hard_forward_relaxed_backward():
    phi, tau, t = 0.4, 0.8, 0.45
    objective = BernoulliThreshold(logit=phi, target=t, **F64)
    torch.manual_seed(6)
    grad = estimate_gradient(StraightThrough(tau), objective, objective.theta, 1)
    torch.manual_seed(6)
    u = torch.rand((1,), **F64)
    y = torch.sigmoid((phi + u.log() - (-u).log1p()) / tau)
    b = (y > 0.5).double()
    torch.testing.assert_close(grad, 2 * (b - t) * y * (1 - y) / tau, rtol=1e-10, atol=0)

    # temperature=None: Bengio et al.'s estimator, the gradient through the mean σ(φ).
    torch.manual_seed(7)
    grad = estimate_gradient(StraightThrough(None), objective, objective.theta, 1)
    torch.manual_seed(7)
    p = torch.sigmoid(torch.tensor(phi, **F64))
    b = torch.bernoulli(p.expand(1))
    torch.testing.assert_close(grad, 2 * (b - t) * p * (1 - p), rtol=1e-12, atol=0)
    # The forward value is f at the hard sample.
    torch.manual_seed(6)
    value = StraightThrough(tau).surrogate(objective, objective.theta, 1)
    assert value.item() in ((0 - t) ** 2, (1 - t) ** 2)


def test_straight_through_gumbel_softmax_categorical():
    # Forward: rewards at the argmax of φ + G (an exact categorical draw). Backward: the
    # Gumbel-softmax gradient, which for the linear relaxed cost is (diag y − y yᵀ) r / τ.
    logits, rewards, tau = [0.5, -0.3, 0.1], [1.0, 2.0, -1.0], 0.6
    objective = CategoricalLinear(logits=logits, rewards=rewards, **F64)
    torch.manual_seed(21)
    value = StraightThrough(tau).surrogate(objective, objective.theta, 1)
    torch.manual_seed(21)
    grad = estimate_gradient(StraightThrough(tau), objective, objective.theta, 1)
    torch.manual_seed(21)
    gumbel = -(-torch.rand((1, 3), **F64).log()).log()[0]
    scores = torch.tensor(logits, **F64) + gumbel
    y = torch.softmax(scores / tau, -1)
    r = torch.tensor(rewards, **F64)
    assert value.item() == rewards[int(scores.argmax())]
    torch.testing.assert_close(grad, y * (r - y @ r) / tau, rtol=1e-10, atol=1e-14)


def test_disarm_replicates_are_computed_independently():
    # The batched replicate path gives each replicate its own pairs: replicate r's estimate
    # is the formula on the uniforms drawn for it.
    phi, t, r, pairs = -0.8, 0.45, 5, 2
    objective = BernoulliThreshold(logit=phi, target=t, **F64)
    torch.manual_seed(22)
    grads = replicate_gradients(DisARM(), objective, objective.theta, 2 * pairs, r)
    u, b, bt = antithetic_pair(torch.full((r,), phi, **F64), 22, pairs=pairs)  # [pairs, r]
    f, ft = (b - t) ** 2, (bt - t) ** 2
    g = 0.5 * (f - ft) * (1 - 2 * bt) * (b != bt).double() * torch.sigmoid(torch.tensor(0.8, **F64))
    torch.testing.assert_close(grads, g.mean(0).unsqueeze(-1), rtol=1e-12, atol=1e-15)


def test_measure_valued_single_draw_is_the_coupled_weak_derivative():
    mu, sigma, k = 0.7, 1.3, -0.4
    objective = GaussianQuadratic(mu=mu, sigma=sigma, target=k, **F64)
    torch.manual_seed(8)
    grad = estimate_gradient(MeasureValued(), objective, objective.theta, 1)
    torch.manual_seed(8)
    w = (-2 * torch.log1p(-torch.rand((1, 1), **F64))).sqrt()
    eps3 = torch.randn((1, 1, 3), **F64)
    m = eps3[..., 0].sign() * eps3.norm(dim=-1)
    u = torch.rand((1, 1), **F64)

    def f(x):
        return (x - k) ** 2

    g_mu = (f(mu + sigma * w) - f(mu - sigma * w)) / (sigma * math.sqrt(2 * math.pi))
    g_sigma = (f(mu + sigma * m) - f(mu + sigma * m * u)) / sigma
    torch.testing.assert_close(grad, torch.cat([g_mu[0], g_sigma[0]]), rtol=1e-12, atol=0)
    # For f = (x − k)², the μ part is 4 a W / √(2π) whatever σ is.
    a = mu - k
    torch.testing.assert_close(g_mu[0, 0], 4 * a * w[0, 0] / math.sqrt(2 * math.pi))


def test_measure_valued_replaces_one_coordinate_at_a_time():
    objective = DiagonalGaussianDot()
    mu, sigma = objective.theta[:2], objective.theta[2:]
    torch.manual_seed(9)
    grad = estimate_gradient(MeasureValued(), objective, objective.theta, 1)
    torch.manual_seed(9)
    w = (-2 * torch.log1p(-torch.rand((1, 2), **F64))).sqrt()[0]
    eps3 = torch.randn((1, 2, 3), **F64)[0]
    m = eps3[..., 0].sign() * eps3.norm(dim=-1)
    x0 = mu + sigma * m * torch.rand((1, 2), **F64)[0]
    expected = torch.zeros(4, **F64)
    for j in range(2):

        def f_with(value, j=j):
            x = x0.clone()
            x[j] = value
            return objective.cost(x)

        plus, minus = f_with(mu[j] + sigma[j] * w[j]), f_with(mu[j] - sigma[j] * w[j])
        expected[j] = (plus - minus) / (sigma[j] * math.sqrt(2 * math.pi))
        expected[2 + j] = (f_with(mu[j] + sigma[j] * m[j]) - objective.cost(x0)) / sigma[j]
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_gradients_reach_an_encoder_and_the_cost_parameters():
    # The VAE setting: θ = encoder(inputs) [batch, K], Independent(Bernoulli(θ), 1); the
    # estimator's gradient w.r.t. θ flows on to the encoder weights, and parameters inside
    # f (a decoder) keep their own gradient.
    inputs = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], **F64)
    weights = torch.tensor([[0.2, -0.4, 0.9], [0.3, 0.1, -0.5]], **F64, requires_grad=True)
    objective = Bits(LOGITS, c=torch.tensor(0.3, **F64, requires_grad=True))
    for estimator, n in [
        (DisARM(), 4),
        (ARM(), 2),
        (GumbelSoftmax(0.5), 3),
        (StraightThrough(), 3),
    ]:
        theta = inputs @ weights
        torch.manual_seed(10)
        surrogate = estimator.surrogate(objective, theta, n)
        assert surrogate.shape == (n // 2 if isinstance(estimator, (DisARM, ARM)) else n, 2)
        g_w, g_c = torch.autograd.grad(surrogate.mean(0).sum(), [weights, objective.c])
        torch.manual_seed(10)
        g_theta = estimate_gradient(estimator, objective, (inputs @ weights).detach(), n)
        torch.testing.assert_close(g_w, inputs.T @ g_theta, rtol=1e-12, atol=1e-15)
        assert g_c.item() != 0.0


def test_disarm_cost_gradient_is_the_pair_mean():
    objective = Bits(LOGITS, c=torch.tensor(0.3, **F64, requires_grad=True))
    torch.manual_seed(11)
    surrogate = DisARM().surrogate(objective, objective.theta, 2)
    (g_c,) = torch.autograd.grad(surrogate.mean(0).sum(), objective.c)
    _, b, bt = antithetic_pair(objective.theta, 11)
    w = objective.w
    expected = (-(b[0] @ w - 0.3) - (bt[0] @ w - 0.3)).sum()  # ½ Σ_pair ∂f/∂c, f = (b·w − c)²
    torch.testing.assert_close(g_c, expected, rtol=1e-12, atol=1e-15)


# --- Unbiasedness ------------------------------------------------------------------------

UNBIASED_CASES = [
    ("disarm-threshold", DisARM, lambda: BernoulliThreshold(logit=-1.0, target=0.45, **F64), 2),
    ("arm-threshold", ARM, lambda: BernoulliThreshold(logit=-1.0, target=0.45, **F64), 2),
    ("disarm-bits", DisARM, lambda: Bits(LOGITS), 4),
    ("arm-bits", ARM, lambda: Bits(LOGITS), 4),
    ("disarm-shared", DisARM, lambda: BernoulliShared(phi=-0.7, **F64), 2),
    ("mvd-quadratic", MeasureValued, lambda: GaussianQuadratic(mu=1.0, sigma=0.8, target=-0.5, **F64), 1),  # noqa: E501
    ("mvd-uncoupled", lambda: MeasureValued(coupling=False),
     lambda: GaussianQuadratic(mu=1.0, sigma=0.8, target=-0.5, **F64), 1),
    ("mvd-cosine", MeasureValued, lambda: GaussianCosine(mu=1.0, sigma=0.7, omega=1.5, **F64), 3),
    ("mvd-diagonal", MeasureValued, DiagonalGaussianDot, 2),
]  # fmt: skip
N_UNBIASED_COORDINATES = 1 + 1 + 6 + 6 + 1 + 2 + 2 + 2 + 4
# Family-wise false-fail rate over every coordinate tested (tests/stats.py).
Z_UNBIASED = z_threshold(rate("discrete: unbiasedness"), N_UNBIASED_COORDINATES)
R_UNBIASED = 20_000


@pytest.mark.parametrize(
    "make_estimator, make_objective, n_samples",
    [case[1:] for case in UNBIASED_CASES],
    ids=[case[0] for case in UNBIASED_CASES],
)
def test_estimator_is_unbiased(make_estimator, make_objective, n_samples):
    objective = make_objective()
    grads = replicates(make_estimator(), objective, n_samples, R_UNBIASED, seed=12)
    z = mean_z(grads, objective.true_grad().reshape(-1))
    assert z.abs().max().item() < Z_UNBIASED, f"z = {z.tolist()}"


def test_unbiasedness_test_rejects_a_scaled_disarm_and_measure_valued():
    # Negative controls with a power check: a 10% bias must sit far enough above the
    # threshold in expectation that the test misses it at most at the stated rate.
    margin = power_margin(rate("miss: discrete: scaled DisARM and measure-valued rejected"))
    for inner, objective, n in [
        (DisARM(), BernoulliThreshold(logit=-1.0, target=0.45, **F64), 2),
        (MeasureValued(), GaussianQuadratic(mu=1.0, sigma=0.8, target=-0.5, **F64), 1),
    ]:
        grads = replicates(Scaled(inner), objective, n, 60_000, seed=13)
        true = objective.true_grad()
        se = (grads.var(0) / 60_000).sqrt()
        assert (0.1 * true.abs() / se).min().item() > Z_UNBIASED + margin
        z = mean_z(grads, true)
        assert z.abs().min().item() > Z_UNBIASED, f"bias went unseen: z = {z.tolist()}"


def relaxed_bernoulli_gradient(phi, t, tau, points=2_000_000):
    """d/dφ E[(y − t)²], y = σ((φ + logit U) / τ), by the midpoint rule over U."""
    u = (torch.arange(points, **F64) + 0.5) / points
    y = torch.sigmoid((phi + u.log() - (-u).log1p()) / tau)
    return (2 * (y - t) * y * (1 - y) / tau).mean()


def test_gumbel_softmax_is_biased_at_high_temperature():
    # At τ = 5 the relaxation is far from the discrete variable: the z-test against the
    # true gradient must reject, while against the gradient of the relaxed objective
    # E[f(y)] (by quadrature) it must pass: the bias is the relaxation's, not a bug.
    objective = BernoulliThreshold(logit=0.0, target=0.45, **F64)
    grads = replicates(GumbelSoftmax(5.0), objective, 1, R_UNBIASED, seed=14)
    threshold = z_threshold(rate("discrete: Gumbel-softmax matches its relaxed gradient"), 1)
    relaxed = relaxed_bernoulli_gradient(0.0, 0.45, 5.0)
    assert mean_z(grads, relaxed).abs().item() < threshold
    se = (grads.var(0) / R_UNBIASED).sqrt().item()
    margin = power_margin(rate("miss: discrete: Gumbel-softmax bias seen"))
    assert abs(relaxed - objective.true_grad().item()) / se > threshold + margin
    z = mean_z(grads, objective.true_grad())
    assert z.abs().item() > threshold, f"bias went unseen: z = {z.tolist()}"
    assert GumbelSoftmax.unbiased is False and StraightThrough.unbiased is False
    # A lower temperature moves the relaxed gradient towards the true one (0.025).
    assert abs(relaxed_bernoulli_gradient(0.0, 0.45, 0.5) - 0.025) < abs(relaxed - 0.025)


def test_straight_through_through_the_mean_is_exact_for_a_linear_cost():
    # f(z) = rewards[z] is linear in the one-hot vector, so the gradient through the mean,
    # rewards · ∂softmax(φ)/∂φ, does not depend on the sample: every estimate is exact.
    # A check of the categorical path.
    objective = CategoricalLinear(logits=[0.5, -0.3, 0.1], rewards=[1.0, 2.0, -1.0], **F64)
    grads = replicates(StraightThrough(None), objective, 3, 100, seed=15)
    torch.testing.assert_close(grads, objective.true_grad().expand(100, 3), rtol=1e-12, atol=1e-15)


# --- Variance against ../shared/REFERENCE.md ---------------------------------------------

# Bernoulli threshold: variance of one estimate (one sample for REINFORCE, one pair for
# RLOO, ARM and DisARM), as printed in REFERENCE.md.
REFERENCE_BERNOULLI = {
    (0.45, 0.0): {"reinforce": 0.015939, "rloo": 6.25e-4, "arm": 2.083e-4, "disarm": 0.0},
    (0.45, -1.0): {"reinforce": 0.014934, "rloo": 5.965e-4, "arm": 3.645e-4, "disarm": 3.321e-4},
    (0.499, 0.0): {"reinforce": 0.015625, "rloo": 2.5e-7, "arm": 8.33e-8, "disarm": 0.0},
    (0.499, -1.0): {"reinforce": 0.012334, "rloo": 2.386e-7, "arm": 1.458e-7, "disarm": 1.328e-7},
}
# The table is rounded to 3-4 significant digits; allow that much on top of the noise.
ROUNDING = 1e-3


def closed_form_variance(name, t, eta):
    """Exact variances of the four estimators on the Bernoulli threshold toy."""
    p = 1 / (1 + math.exp(-eta))
    q = min(p, 1 - p)
    d = 1 - 2 * t  # f(1) − f(0)
    grad = p * (1 - p) * d
    if name == "reinforce":  # f(b)(b − p)
        return p * (1 - t) ** 4 * (1 - p) ** 2 + (1 - p) * t**4 * p**2 - grad**2
    if name == "rloo":  # ½ (f₁ − f₂)(b₁ − b₂) = ½ d 1[b₁ ≠ b₂]
        pair = 2 * p * (1 - p)
        return d**2 / 4 * pair * (1 - pair)
    if name == "arm":  # d |u − ½| on {u < q} ∪ {u > 1 − q}
        return d**2 * 2 * (0.5**3 - (0.5 - q) ** 3) / 3 - grad**2
    # DisARM: ½ d σ(|η|) with probability 2q, else 0.
    return (0.5 * d * (1 - q)) ** 2 * 2 * q * (1 - 2 * q)


def test_reference_table_agrees_with_the_closed_forms():
    for (t, eta), row in REFERENCE_BERNOULLI.items():
        for name, printed in row.items():
            exact = closed_form_variance(name, t, eta)
            assert exact == pytest.approx(printed, rel=ROUNDING, abs=1e-20), (t, eta, name)


BERNOULLI_ESTIMATORS = {
    "reinforce": (Reinforce, 1),
    "rloo": (lambda: Reinforce(LeaveOneOut()), 2),
    "arm": (ARM, 2),
    "disarm": (DisARM, 2),
}
VARIANCE_CELLS = [
    (t, eta, name)
    for (t, eta), row in REFERENCE_BERNOULLI.items()
    for name, value in row.items()
    if value > 0
]
# Family-wise false-fail rate over the 14 cells with non-zero variance (tests/stats.py).
Z_VARIANCE = z_threshold(
    rate("discrete: Bernoulli variances match the reference"), len(VARIANCE_CELLS)
)
R_VARIANCE = 60_000


@pytest.mark.parametrize("t, eta, name", VARIANCE_CELLS)
def test_bernoulli_variance_matches_reference(t, eta, name):
    objective = BernoulliThreshold(logit=eta, target=t, **F64)
    make, n = BERNOULLI_ESTIMATORS[name]
    grads = replicates(make(), objective, n, R_VARIANCE, seed=16)
    reference = REFERENCE_BERNOULLI[(t, eta)][name]
    variance = grads.var(0).item()
    se = variance / variance_z(grads, torch.tensor([0.0], **F64)).item()  # sqrt((m4 − s⁴)/R)
    assert abs(variance - reference) < Z_VARIANCE * se + ROUNDING * reference, (
        f"{name} at t={t}, eta={eta}: {variance:.5g} vs REFERENCE {reference:.5g} (se {se:.2g})"
    )


@pytest.mark.parametrize("t", [0.45, 0.499])
def test_disarm_has_zero_variance_at_logit_zero(t):
    objective = BernoulliThreshold(logit=0.0, target=t, **F64)
    grads = replicates(DisARM(), objective, 2, 10_000, seed=17)
    assert grads.var(0).item() < 1e-30
    torch.testing.assert_close(grads.mean(0), objective.true_grad(), rtol=1e-13, atol=0)


def test_variance_test_rejects_the_wrong_reference():
    # Negative control: ARM measured against DisARM's value (3.321e-4 vs 3.645e-4, 9%
    # apart) at t = 0.45, η = −1 must fail the same tolerance.
    objective = BernoulliThreshold(logit=-1.0, target=0.45, **F64)
    grads = replicates(ARM(), objective, 2, R_VARIANCE, seed=18)
    se = grads.var(0).item() / variance_z(grads, torch.tensor([0.0], **F64)).item()
    wrong = REFERENCE_BERNOULLI[(0.45, -1.0)]["disarm"]
    tolerance = Z_VARIANCE * se + ROUNDING * wrong
    # Power: the true variance lies far enough outside the tolerance band around the wrong
    # value that the measured one misses it at most at the stated rate.
    margin = power_margin(rate("miss: discrete: wrong Bernoulli reference rejected"))
    assert (abs(closed_form_variance("arm", 0.45, -1.0) - wrong) - tolerance) / se > margin
    assert abs(grads.var(0).item() - wrong) > tolerance


def test_measure_valued_variance_matches_reference_through_the_harness():
    # REFERENCE.md: one coupled draw on the Gaussian quadratic has variance (16/π − 4) a²
    # for μ and 4a² + 4 at σ = 1. measure_variance is the path `gradbench run` takes.
    # Bias and variance z-tests over the 2 coordinates x 2 points.
    threshold = z_threshold(rate("discrete: measure-valued variance through the harness"), 8)
    for k in (-1.0, 0.0):
        objective = GaussianQuadratic(mu=1.0, sigma=1.0, target=k, **F64)
        a = 1.0 - k
        expected = torch.tensor([(16 / math.pi - 4) * a**2, 4 * a**2 + 4], **F64)
        records = measure_variance(
            MeasureValued(), objective, estimator_name="measure_valued",
            objective_name=objective.name, n_samples=1, replicates=50_000, seed=19,
            warmup_steps=0, timing_min_run_time=0.0,
        )  # fmt: skip
        assert (records["status"] == "ok").all()
        assert (records["z_bias"].abs() < threshold).all()
        grads = replicates(MeasureValued(), objective, 1, 50_000, seed=19)
        torch.testing.assert_close(
            torch.tensor(records["var_grad"].to_numpy()), grads.var(0), rtol=0.05, atol=0
        )
        z = variance_z(grads, expected)
        assert z.abs().max().item() < threshold, f"{grads.var(0).tolist()} vs {expected}"


def bernoulli_shared_exact_variances(phi, targets):
    """Exact single-sample REINFORCE and one-pair DisARM variances on the shared-logit toy,
    by enumerating the 2^K states and the 3^K per-dimension pair outcomes."""
    p = 1 / (1 + math.exp(-phi))
    q = min(p, 1 - p)
    k = len(targets)

    def f(b):
        return sum((bi - ti) ** 2 for bi, ti in zip(b, targets, strict=True))

    m1 = m2 = 0.0
    for b in itertools.product([0, 1], repeat=k):
        prob = math.prod(p if bi else 1 - p for bi in b)
        g = f(b) * sum(bi - p for bi in b)
        m1, m2 = m1 + prob * g, m2 + prob * g * g
    reinforce = m2 - m1**2
    # Per dimension the pair (b, b̃) is (1, 0) or (0, 1) with probability q each, else both
    # equal to the more likely value.
    same = 1 if p > 0.5 else 0
    outcomes = [((1, 0), q), ((0, 1), q), ((same, same), 1 - 2 * q)]
    m1 = m2 = 0.0
    for combo in itertools.product(outcomes, repeat=k):
        prob = math.prod(c[1] for c in combo)
        b, bt = [c[0][0] for c in combo], [c[0][1] for c in combo]
        g = (
            0.5
            * (f(b) - f(bt))
            * sum((-1) ** bti * (bi != bti) * (1 - q) for bi, bti in zip(b, bt, strict=True))
        )
        m1, m2 = m1 + prob * g, m2 + prob * g * g
    return reinforce, m2 - m1**2


def test_bernoulli_shared_matches_reference_and_disarm_beats_rloo():
    # REFERENCE.md at φ = 0: L = 0.7605, dL/dφ = −0.045, REINFORCE variance 0.43842.
    # Bonferroni over the 4 variance comparisons below.
    threshold = z_threshold(rate("discrete: bernoulli_shared variances match enumeration"), 4)
    targets = [0.6, 0.51, 0.48]
    objective = BernoulliShared(phi=0.0, targets=targets, **F64)
    assert objective.exact_value(objective.theta).item() == pytest.approx(0.7605, abs=1e-12)
    assert objective.true_grad().item() == pytest.approx(-0.045, abs=1e-12)
    exact_reinforce, _ = bernoulli_shared_exact_variances(0.0, targets)
    assert exact_reinforce == pytest.approx(0.43842, abs=5e-6)
    for phi in (0.0, -1.0):
        objective = BernoulliShared(phi=phi, targets=targets, **F64)
        exact = bernoulli_shared_exact_variances(phi, targets)
        variances = {}
        for name, make, n in [("reinforce", Reinforce, 1), ("disarm", DisARM, 2),
                              ("rloo", lambda: Reinforce(LeaveOneOut()), 2)]:  # fmt: skip
            grads = replicates(make(), objective, n, 50_000, seed=20)
            variances[name] = grads.var(0).item()
            if name in ("reinforce", "disarm"):
                expected = exact[0] if name == "reinforce" else exact[1]
                z = variance_z(grads, torch.tensor([expected], **F64)).item()
                assert abs(z) < threshold, f"{name} at phi={phi}: {variances[name]} vs {expected}"
        # Same budget of two evaluations of f: DisARM's pair beats RLOO's two samples.
        assert variances["disarm"] < 0.8 * variances["rloo"]


# --- Refusals, options and configs -------------------------------------------------------


def test_inapplicable_combinations_are_refused_with_a_reason():
    threshold = BernoulliThreshold(**F64)
    quadratic = GaussianQuadratic(**F64)
    categorical = CategoricalLinear(**F64)
    for estimator in (DisARM(), ARM()):
        for n in (1, 3):
            with pytest.raises(NotApplicable, match="even"):
                estimator.check(threshold, threshold.theta, n)
        with pytest.raises(NotApplicable, match="Bernoulli.*Normal"):
            estimator.check(quadratic, quadratic.theta, 2)
        with pytest.raises(NotApplicable, match="Bernoulli.*Categorical"):
            estimator.check(categorical, categorical.theta, 2)
        with pytest.raises(NotApplicable, match="even"):
            estimator.surrogate(threshold, threshold.theta, 3)
    with pytest.raises(NotApplicable, match="Gaussian.*Bernoulli"):
        MeasureValued().check(threshold, threshold.theta, 1)
    for estimator in (GumbelSoftmax(), StraightThrough(), StraightThrough(None)):
        with pytest.raises(NotApplicable, match="relaxed_cost"):
            estimator.check(quadratic, quadratic.theta, 1)

        class NoRelaxation(Bits):
            relaxed_cost = None

        bits = NoRelaxation(LOGITS)
        with pytest.raises(NotApplicable, match="relaxed_cost"):
            estimator.check(bits, bits.theta, 1)

        class RelaxedGaussian(DiagonalGaussianDot):
            relaxed_cost = DiagonalGaussianDot.cost

        gaussian = RelaxedGaussian()
        with pytest.raises(NotApplicable, match="Bernoulli or Categorical.*Normal"):
            estimator.check(gaussian, gaussian.theta, 1)
        estimator.check(threshold, threshold.theta, 1)
        estimator.check(categorical, categorical.theta, 1)


@pytest.mark.parametrize("bad", [0.0, -1.0, "hot", None])
def test_bad_temperature_names_the_config_key(bad):
    with pytest.raises(ValueError, match=r"^estimator\.temperature must be"):
        GumbelSoftmax(temperature=bad)
    if bad is not None:
        with pytest.raises(ValueError, match=r"^estimator\.temperature must be"):
            StraightThrough(temperature=bad)


def test_measure_valued_rejects_a_non_boolean_coupling():
    with pytest.raises(ValueError, match="estimator.coupling"):
        MeasureValued(coupling="yes")


@pytest.mark.parametrize(
    "name, cls, options",
    [("disarm", DisARM, {}), ("arm", ARM, {}),
     ("gumbel_softmax", GumbelSoftmax, {"temperature": 0.5}),
     ("straight_through", StraightThrough, {"temperature": 1.0}),
     ("measure_valued", MeasureValued, {"coupling": True})],
)  # fmt: skip
def test_configs_instantiate(name, cls, options):
    estimator = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert type(estimator) is cls
    for key, value in options.items():
        assert getattr(estimator, key) == value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logits", [[0.3, -1.2, 4.0], [20.0, -40.0, 0.0]], ids=["mid", "clamped"])
def test_fast_relaxed_bernoulli_is_torch_distributions_draw(dtype, logits):
    """Same uniforms, same values and gradients as RelaxedBernoulli.rsample, including
    where torch.distributions clamps the probability (|logit| beyond logit(1 − eps))."""
    from torch.distributions import RelaxedBernoulli

    from estimators.relaxed import relaxed_bernoulli

    phi = torch.tensor(logits, dtype=dtype, requires_grad=True)
    torch.manual_seed(0)
    fast = relaxed_bernoulli(phi, 0.5, 7)
    torch.manual_seed(0)
    reference = RelaxedBernoulli(torch.tensor(0.5, dtype=dtype), logits=phi).rsample((7,))
    torch.testing.assert_close(fast, reference)
    weights = torch.randn(7, 3, dtype=dtype)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), phi)
    (g_reference,) = torch.autograd.grad((reference * weights).sum(), phi)
    torch.testing.assert_close(g_fast, g_reference)
    assert g_fast.abs().sum() > 0  # not a vacuous comparison of zeros
