"""The analytic scores of ``estimators.scores`` against autograd through ``log_prob``.

Every family with a written score is checked on batched parameters built from θ through
a nonlinear map (so that autograd's chain rule to θ is exercised), for the first and the
second derivative. A family without a written score takes the fallback, which must agree
too. The negative controls show that the comparison would catch a wrong score.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Gamma,
    Independent,
    Normal,
)

from estimators import scores
from estimators.scores import (
    per_sample_scores,
    revalidation_skipped,
    sample,
    score_square_sums,
    with_score,
)
from tests.stats import power_margin, rate, z_threshold

FAMILIES = {
    "normal": (lambda t: Normal(t[..., 0], t[..., 1].exp()), 2),
    "normal_fixed_scale": (lambda t: Normal(t[..., 0] * t[..., 1], 1.5), 2),
    "independent_normal": (lambda t: Independent(Normal(t[..., :3], t[..., 3:].exp()), 1), 6),
    "nested_independent_normal": (
        lambda t: Independent(
            Independent(
                Normal(
                    t[..., :4].reshape(*t.shape[:-1], 2, 2),
                    t[..., 4:].exp().reshape(*t.shape[:-1], 2, 2),
                ),
                1,
            ),
            1,
        ),
        8,
    ),
    "bernoulli_logits": (lambda t: Bernoulli(logits=t[..., 0] - t[..., 1]), 2),
    "bernoulli_probs": (lambda t: Bernoulli(probs=torch.sigmoid(t[..., 0])), 1),
    "independent_bernoulli": (lambda t: Independent(Bernoulli(logits=t), 1), 4),
    "shared_bernoulli": (
        lambda t: Independent(Bernoulli(logits=t[..., :1].expand(*t.shape[:-1], 5)), 1),
        2,
    ),
    "categorical_logits": (lambda t: Categorical(logits=t), 3),
    "categorical_probs": (lambda t: Categorical(probs=torch.softmax(t, -1)), 4),
    "independent_categorical": (
        lambda t: Independent(Categorical(logits=t.reshape(*t.shape[:-1], 2, 3)), 1),
        6,
    ),
    "gamma_fallback": (lambda t: Gamma(t[..., 0].exp(), t[..., 1].exp()), 2),
}


class Objective:
    """The least an estimator sees: ``distribution(theta)``."""

    def __init__(self, make):
        self.distribution = make


def _setup(name, batch=(5,), n=6, seed=0):
    make, d = FAMILIES[name]
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(*batch, d, generator=generator, dtype=torch.float64) * 0.5
    torch.manual_seed(seed)
    dist = make(theta)
    x = dist.sample((n,))
    return make, theta, x


@pytest.mark.parametrize("name", FAMILIES)
def test_with_score_has_the_gradients_of_weight_times_log_prob(name):
    make, theta, x = _setup(name)
    theta.requires_grad_(True)
    dist = make(theta)
    weight = torch.randn(x.shape[: x.dim() - len(dist.event_shape)], dtype=theta.dtype)
    value = torch.randn(weight.shape, dtype=theta.dtype)
    analytic = with_score(value, dist, x, weight)
    reference = value + weight * dist.log_prob(x)
    assert torch.equal(analytic, value)  # the value passes through unchanged
    # A non-uniform outer gradient, so the constant-gradient shortcut is not the only path.
    outer = torch.rand(value.shape, dtype=theta.dtype)
    (g_a,) = torch.autograd.grad((analytic * outer).sum(), theta, create_graph=True)
    (g_r,) = torch.autograd.grad((reference * outer).sum(), theta, create_graph=True)
    torch.testing.assert_close(g_a, g_r)
    # Second derivatives: the backward is itself differentiable.
    direction = torch.randn(theta.shape, dtype=theta.dtype)
    (h_a,) = torch.autograd.grad((g_a * direction).sum(), theta, retain_graph=True)
    (h_r,) = torch.autograd.grad((g_r * direction).sum(), theta, retain_graph=True)
    torch.testing.assert_close(h_a, h_r)
    # Through a sum (a broadcast constant gradient: the shortcut).
    (s_a,) = torch.autograd.grad(with_score(value, make(theta), x, weight).sum() / 3, theta)
    (s_r,) = torch.autograd.grad((value + weight * make(theta).log_prob(x)).sum() / 3, theta)
    torch.testing.assert_close(s_a, s_r)
    # A weight that is one number, through a sum (both folded into one factor).
    (c_a,) = torch.autograd.grad(with_score(value, make(theta), x, -0.5).sum(), theta)
    (c_r,) = torch.autograd.grad((value - 0.5 * make(theta).log_prob(x)).sum(), theta)
    torch.testing.assert_close(c_a, c_r)


@pytest.mark.parametrize("path", ["copies", "forward_mode"])
@pytest.mark.parametrize("name", FAMILIES)
def test_per_sample_scores_and_square_sums_match_autograd_per_sample(name, path, monkeypatch):
    monkeypatch.setattr(scores, "FORWARD_MODE_ABOVE", 10**9 if path == "copies" else 0)
    make, theta, x = _setup(name, batch=(4,), n=5)
    objective = Objective(make)
    copies = theta.expand(x.shape[0], *theta.shape).clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(make(copies).log_prob(x).sum(), copies)  # [N, B, D]
    torch.testing.assert_close(per_sample_scores(objective, theta, x), expected)
    f = torch.randn(expected.shape[:-1], dtype=theta.dtype)
    weighted, total = score_square_sums(objective, theta, x, f)
    torch.testing.assert_close(weighted, (f.unsqueeze(-1) * expected.square()).sum(0))
    torch.testing.assert_close(total, expected.square().sum(0))


def test_a_wrong_score_is_caught():
    """Negative control: the comparison above fails for a score that is off."""
    make, theta, x = _setup("normal")
    theta.requires_grad_(True)
    dist = make(theta)
    weight = torch.ones(x.shape, dtype=theta.dtype)
    original = scores._SCORES["normal"]
    scores._SCORES["normal"] = lambda gw, x, loc, scale: tuple(
        1.01 * g for g in original(gw, x, loc, scale)
    )
    try:
        (g_a,) = torch.autograd.grad(with_score(weight, dist, x, weight).sum(), theta)
    finally:
        scores._SCORES["normal"] = original
    (g_r,) = torch.autograd.grad((weight * make(theta).log_prob(x)).sum(), theta)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(g_a, g_r)


def test_unwritten_family_falls_back_to_log_prob():
    make, theta, x = _setup("gamma_fallback")
    assert scores._family(make(theta))[0] is None


def test_bernoulli_sample_has_the_right_distribution():
    """rand < p draws Bernoulli(p): 10⁵ draws per p, a z-test on each mean. Negative
    control: p shifted by 0.01 is rejected (with its power checked)."""
    p = torch.tensor([0.05, 0.5, 0.9], dtype=torch.float64)
    torch.manual_seed(0)
    draws = sample(Bernoulli(probs=p), (100_000,))
    assert draws.shape == (100_000, 3) and draws.dtype == p.dtype
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    se = (p * (1 - p) / draws.shape[0]).sqrt()
    threshold = z_threshold(rate("scores: Bernoulli draws have the right mean"), 3)
    assert ((draws.mean(0) - p).abs() < threshold * se).all()
    margin = power_margin(rate("miss: scores: shifted Bernoulli mean rejected"))
    assert (0.01 / se).max() > threshold + margin
    assert not ((draws.mean(0) - (p + 0.01)).abs() < threshold * se).all()
    independent = sample(Independent(Bernoulli(logits=torch.zeros(2, 4)), 1), (3,))
    assert independent.shape == (3, 2, 4)


def test_normal_sample_is_a_plain_sample():
    dist = Normal(torch.zeros(3, requires_grad=True), torch.ones(3))
    x = sample(dist, (7,))
    assert x.shape == (7, 3) and not x.requires_grad


def test_revalidation_skipped_restores_the_default_even_after_an_error():
    before = Distribution._validate_args
    with pytest.raises(RuntimeError), revalidation_skipped():
        assert Distribution._validate_args is False
        Normal(torch.zeros(1), -torch.ones(1))  # would fail validation; passes here
        raise RuntimeError("boom")
    assert Distribution._validate_args == before


class _Exp(torch.autograd.Function):
    """exp with a backward but no forward-mode rule: torch.func.jvp refuses it."""

    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


@pytest.mark.parametrize("family", ["normal", "categorical"])
def test_objectives_without_forward_mode_fall_back_to_copies(family, monkeypatch):
    """Large draws use forward mode over θ; a distribution() it cannot run still works."""
    monkeypatch.setattr(scores, "FORWARD_MODE_ABOVE", 0)
    if family == "normal":
        objective = Objective(lambda t: Normal(t[..., 0], _Exp.apply(t[..., 1])))
        d = 2
    else:
        objective = Objective(
            lambda t: Categorical(probs=_Exp.apply(t) / _Exp.apply(t).sum(-1, keepdim=True))
        )
        d = 3
    theta = torch.randn(4, d, dtype=torch.float64)
    x = objective.distribution(theta).sample((5,))
    copies = theta.expand(5, *theta.shape).clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(objective.distribution(copies).log_prob(x).sum(), copies)
    torch.testing.assert_close(per_sample_scores(objective, theta, x), expected)
    f = torch.randn(5, 4, dtype=torch.float64)
    weighted, total = score_square_sums(objective, theta, x, f)
    torch.testing.assert_close(total, expected.square().sum(0))
    torch.testing.assert_close(weighted, (f.unsqueeze(-1) * expected.square()).sum(0))
