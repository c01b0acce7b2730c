"""Exact tests: at fixed randomness each estimator returns its hand formula (float64).

Each test seeds torch, lets the estimator draw, then re-seeds and redraws the same numbers
in the same order to evaluate the estimator's formula by hand.
"""

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

from benchmarks.objectives import BernoulliThreshold, CategoricalLinear, GaussianQuadratic
from estimators import (
    Baseline,
    LeaveOneOut,
    MovingAverage,
    NotApplicable,
    OptimalConstant,
    Reinforce,
    Reparameterization,
    estimate_gradient,
    objective_with_estimator_gradient,
    replicate_gradients,
)

F64 = {"dtype": torch.float64}
MU, SIGMA, TARGET = 0.7, 1.3, -0.4


@pytest.fixture
def quadratic():
    return GaussianQuadratic(mu=MU, sigma=SIGMA, target=TARGET, **F64)


def gaussian_score(x):
    """∇(mu, sigma) log N(x; mu, sigma²), [..., 2]."""
    return torch.stack([(x - MU) / SIGMA**2, ((x - MU) ** 2 - SIGMA**2) / SIGMA**3], -1)


def draw_normal(n, seed):
    torch.manual_seed(seed)
    return Normal(torch.tensor(MU, **F64), torch.tensor(SIGMA, **F64)).sample((n,))


def test_reinforce_single_sample_is_f_times_score(quadratic):
    torch.manual_seed(1)
    grad = estimate_gradient(Reinforce(), quadratic, quadratic.theta, 1)
    x = draw_normal(1, 1)[0]
    torch.testing.assert_close(grad, (x - TARGET) ** 2 * gaussian_score(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("baseline", [None, LeaveOneOut(), OptimalConstant()])
def test_reinforce_surrogate_value_is_the_cost_of_its_samples(quadratic, baseline, monkeypatch):
    """The score terms add to the gradient only (estimators.scores.with_score). The
    optimal baseline is taken on its two-pass path, whose value is f as well."""
    import estimators.score_function

    monkeypatch.setattr(estimators.score_function, "PER_SAMPLE_SCORE_LIMIT", 0)
    theta = quadratic.theta.expand(3, 2).clone().requires_grad_(True)
    torch.manual_seed(4)
    surrogate = Reinforce(baseline).surrogate(quadratic, theta, 5)
    torch.manual_seed(4)
    x = quadratic.distribution(theta.detach()).sample((5,))
    torch.testing.assert_close(surrogate, quadratic.cost(x), rtol=1e-12, atol=0)


def test_reparam_single_sample_is_pathwise_derivative(quadratic):
    torch.manual_seed(2)
    grad = estimate_gradient(Reparameterization(), quadratic, quadratic.theta, 1)
    torch.manual_seed(2)
    eps = torch.randn((1,), **F64)[0]
    x = MU + SIGMA * eps
    expected = torch.stack([2 * (x - TARGET), 2 * (x - TARGET) * eps])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


def test_leave_one_out_uses_the_other_samples(quadratic):
    torch.manual_seed(3)
    grad = estimate_gradient(Reinforce(LeaveOneOut()), quadratic, quadratic.theta, 3)
    x = draw_normal(3, 3)
    f = (x - TARGET) ** 2
    b = torch.stack([(f[1] + f[2]) / 2, (f[0] + f[2]) / 2, (f[0] + f[1]) / 2])
    expected = ((f - b).unsqueeze(-1) * gaussian_score(x)).mean(0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


def test_moving_average_baseline_comes_from_earlier_calls_only(quadratic):
    estimator = Reinforce(MovingAverage(decay=0.5))
    torch.manual_seed(4)
    first = estimate_gradient(estimator, quadratic, quadratic.theta, 2)
    second = estimate_gradient(estimator, quadratic, quadratic.theta, 2)
    third = estimate_gradient(estimator, quadratic, quadratic.theta, 2)
    x = draw_normal(6, 4).reshape(3, 2)
    f = (x - TARGET) ** 2
    # First call: no history, b = 0; its mean cost starts the average; then decay 0.5.
    baselines = [0.0, f[0].mean(), 0.5 * f[0].mean() + 0.5 * f[1].mean()]
    for grad, xs, fs, b in zip((first, second, third), x, f, baselines, strict=True):
        expected = ((fs - b).unsqueeze(-1) * gaussian_score(xs)).mean(0)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    estimator.reset()
    assert estimator.baseline.value is None


def test_optimal_baseline_is_fitted_on_independent_draws(quadratic):
    torch.manual_seed(5)
    grad = estimate_gradient(Reinforce(OptimalConstant(n_extra=4)), quadratic, quadratic.theta, 2)
    draws = draw_normal(6, 5)  # the estimate's 2 draws come first, then the 4 extra ones
    x, x_extra = draws[:2], draws[2:]
    s2 = gaussian_score(x_extra) ** 2  # [4, 2]
    b = (((x_extra - TARGET) ** 2).unsqueeze(-1) * s2).sum(0) / s2.sum(0)  # [2]
    expected = (((x - TARGET) ** 2).unsqueeze(-1) - b) * gaussian_score(x)
    torch.testing.assert_close(grad, expected.mean(0), rtol=1e-12, atol=1e-14)


def test_optimal_baseline_matches_its_closed_form(quadratic):
    # REFERENCE.md: for f = (x - k)², b_mu = a² + 3σ², b_sigma = a² + 5σ². With 10⁶ draws
    # the estimate is within a few parts in a thousand (ratio estimator; 0.02 is > 5 se).
    torch.manual_seed(6)
    theta = quadratic.theta
    b = OptimalConstant(n_extra=1_000_000)(quadratic, theta, None, torch.zeros(1, **F64))
    a2 = (MU - TARGET) ** 2
    torch.testing.assert_close(
        b, torch.tensor([a2 + 3 * SIGMA**2, a2 + 5 * SIGMA**2], **F64), rtol=0.02, atol=0
    )


def test_bernoulli_and_categorical_scores():
    objective = BernoulliThreshold(logit=-0.3, target=0.45, **F64)
    torch.manual_seed(7)
    grad = estimate_gradient(Reinforce(), objective, objective.theta, 1)
    torch.manual_seed(7)
    b = Bernoulli(logits=torch.tensor(-0.3, **F64)).sample()
    p = torch.sigmoid(torch.tensor(-0.3, **F64))
    torch.testing.assert_close(grad, ((b - 0.45) ** 2 * (b - p)).reshape(1), rtol=1e-12, atol=0)

    logits, rewards = [0.5, -0.3, 0.1], [1.0, 2.0, -1.0]
    objective = CategoricalLinear(logits=logits, rewards=rewards, **F64)
    torch.manual_seed(8)
    grad = estimate_gradient(Reinforce(), objective, objective.theta, 1)
    torch.manual_seed(8)
    z = Categorical(logits=torch.tensor(logits, **F64)).sample()
    p = torch.softmax(torch.tensor(logits, **F64), 0)
    expected = rewards[int(z)] * (torch.nn.functional.one_hot(z, 3).double() - p)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "estimator",
    [Reinforce(), Reinforce(LeaveOneOut()), Reinforce(OptimalConstant(n_extra=3)),
     Reparameterization()],
    ids=["reinforce", "loo", "optimal", "reparam"],
)  # fmt: skip
def test_replicates_are_computed_independently(quadratic, estimator):
    # Batched replicates must equal the formula applied to each replicate's own draws:
    # no draw, baseline or gradient leaks between replicates.
    n, r = 3, 5
    torch.manual_seed(9)
    grads = replicate_gradients(estimator, quadratic, quadratic.theta, n, r)
    assert grads.shape == (r, 2)
    torch.manual_seed(9)
    if isinstance(estimator, Reparameterization):
        eps = torch.randn((n, r), **F64)
        x = MU + SIGMA * eps
        expected = torch.stack([2 * (x - TARGET), 2 * (x - TARGET) * eps], -1).mean(0)
    else:
        mu, sigma = torch.full((r,), MU, **F64), torch.full((r,), SIGMA, **F64)
        x = Normal(mu, sigma).sample((n,))  # [n, r]
        f = ((x - TARGET) ** 2).unsqueeze(-1)
        if isinstance(estimator.baseline, LeaveOneOut):
            b = (f.sum(0, keepdim=True) - f) / (n - 1)
        elif isinstance(estimator.baseline, OptimalConstant):
            x_extra = Normal(mu, sigma).sample((3,))
            s2 = gaussian_score(x_extra) ** 2  # [3, r, 2]
            b = (((x_extra - TARGET) ** 2).unsqueeze(-1) * s2).sum(0) / s2.sum(0)
        else:
            b = 0.0
        expected = ((f - b) * gaussian_score(x)).mean(0)
    torch.testing.assert_close(grads, expected, rtol=1e-12, atol=1e-13)


def test_value_preserving_objective_has_the_estimators_gradient(quadratic):
    theta = quadratic.theta.clone().requires_grad_(True)
    torch.manual_seed(10)
    surrogate = Reinforce().surrogate(quadratic, theta, 4)
    value = quadratic.exact_value(theta)
    loss = objective_with_estimator_gradient(value, surrogate)
    (grad,) = torch.autograd.grad(loss, theta)
    torch.manual_seed(10)
    expected = estimate_gradient(Reinforce(), quadratic, quadratic.theta, 4)
    assert loss.item() == pytest.approx(value.item())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


def test_inapplicable_combinations_are_refused_with_a_reason(quadratic):
    bernoulli = BernoulliThreshold(**F64)
    with pytest.raises(NotApplicable, match="reparameterizable"):
        Reparameterization().check(bernoulli, bernoulli.theta, 10)
    with pytest.raises(NotApplicable, match="n_samples >= 2"):
        Reinforce(LeaveOneOut()).check(quadratic, quadratic.theta, 1)
    with pytest.raises(NotApplicable, match="at least 1"):
        Reinforce().check(quadratic, quadratic.theta, 0)
    with pytest.raises(ValueError, match="decay"):
        MovingAverage(decay=1.0)
    with pytest.raises(TypeError, match="Baseline"):
        Reinforce(baseline="loo")


def test_a_custom_per_coordinate_baseline_enters_each_coordinate(quadratic):
    class Fixed(Baseline):
        per_coordinate = True

        def __call__(self, objective, theta, x, f):
            return torch.tensor([1.5, -2.0], **F64).expand(theta.shape)

    torch.manual_seed(11)
    grad = estimate_gradient(Reinforce(Fixed()), quadratic, quadratic.theta, 2)
    x = draw_normal(2, 11)
    f = ((x - TARGET) ** 2).unsqueeze(-1)
    expected = ((f - torch.tensor([1.5, -2.0], **F64)) * gaussian_score(x)).mean(0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
