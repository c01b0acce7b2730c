"""The toy objectives: exact values and gradients against hand-derived formulas."""

import math

import pytest
import torch

from benchmarks.objectives import (
    TOYS,
    BernoulliThreshold,
    CategoricalLinear,
    GaussianCosine,
    GaussianQuadratic,
)
from benchmarks.objectives.toy import BernoulliShared
from estimators import Reparameterization, estimate_gradient
from tests.stats import mean_z, rate, z_threshold

F64 = {"dtype": torch.float64}


@pytest.mark.parametrize("mu, sigma, target", [(1.0, 1.0, 0.0), (1.0, 1.0, -3.0), (-0.5, 2.0, 1.5)])
def test_gaussian_quadratic_gradient_is_mohamed_fig2(mu, sigma, target):
    # Mohamed et al. (2020), Fig. 2: dL/dmu = 2a, dL/dsigma = 2 sigma, a = mu - target.
    objective = GaussianQuadratic(mu=mu, sigma=sigma, target=target, **F64)
    expected = torch.tensor([2 * (mu - target), 2 * sigma], **F64)
    torch.testing.assert_close(objective.true_grad(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mu, sigma, omega", [(1.0, 1.0, 1.0), (0.3, 0.5, 2.0)])
def test_gaussian_cosine_gradient(mu, sigma, omega):
    objective = GaussianCosine(mu=mu, sigma=sigma, omega=omega, **F64)
    damp = math.exp(-0.5 * omega**2 * sigma**2)
    expected = torch.tensor(
        [-omega * math.sin(omega * mu) * damp, -(omega**2) * sigma * math.cos(omega * mu) * damp],
        **F64,
    )
    torch.testing.assert_close(objective.true_grad(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "target, logit, expected",
    # REBAR's toy (Tucker et al. 2017): dL/d(eta) = theta(1 - theta)(1 - 2t), theta = sigmoid(eta).
    [(0.45, 0.0, 0.025), (0.45, -1.0, 0.019661), (0.499, 0.0, 5.0e-4), (0.499, -1.0, 3.932e-4)],
)
def test_bernoulli_threshold_gradient_matches_reference(target, logit, expected):
    objective = BernoulliThreshold(logit=logit, target=target, **F64)
    assert objective.true_grad().item() == pytest.approx(expected, rel=1e-4)


def test_categorical_linear_gradient():
    logits, rewards = [0.5, -0.3, 0.1], [1.0, 2.0, -1.0]
    objective = CategoricalLinear(logits=logits, rewards=rewards, **F64)
    p = torch.softmax(torch.tensor(logits, **F64), 0)
    r = torch.tensor(rewards, **F64)
    torch.testing.assert_close(objective.true_grad(), p * (r - (p * r).sum()))
    assert objective.param_names == ["logits[0]", "logits[1]", "logits[2]"]


@pytest.mark.parametrize(
    "objective",
    [
        GaussianQuadratic(mu=0.7, sigma=1.3, target=0.5, **F64),
        GaussianCosine(mu=0.4, sigma=0.8, omega=1.5, **F64),
        BernoulliThreshold(logit=-0.5, target=0.45, **F64),
        CategoricalLinear(logits=[0.5, -0.3, 0.1], rewards=[1.0, 2.0, -1.0], **F64),
    ],
    ids=lambda o: o.name,
)
def test_closed_form_value_is_the_expectation_of_the_cost(objective):
    # Monte Carlo mean of f under p_theta against the closed form L(theta), Bonferroni over
    # the four objectives at the family's rate (tests/stats.py).
    torch.manual_seed(0)
    x = objective.distribution(objective.theta).sample((400_000,))
    z = mean_z(objective.cost(x).unsqueeze(-1), objective.exact_value(objective.theta))
    assert z.abs().item() < z_threshold(rate("toys: closed-form value is the mean cost"), 4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GaussianQuadratic(sigma=0.0), "objective.sigma must be > 0"),
        (lambda: GaussianCosine(sigma=-1.0), "objective.sigma must be > 0"),
        (lambda: GaussianQuadratic(mu="abc"), "objective.mu must be a number"),
        (lambda: CategoricalLinear(logits=[0.0, 1.0]), "objective.logits has 2 entries"),
        (lambda: CategoricalLinear(logits=[1.0], rewards=[1.0]), "at least 2 entries"),
        (lambda: CategoricalLinear(logits=3), "must be a list of numbers"),
    ],
)
def test_bad_parameters_are_refused_with_the_key_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- the training interface ---------------------------------------------------------------

# Each toy at a point where L is within 1e-6 of its infimum, and the infimum itself.
NEAR_INFIMUM = [
    (GaussianQuadratic(mu=0.3, sigma=1e-4, target=0.3, **F64), 0.0),
    (GaussianCosine(mu=math.pi / 2, sigma=1e-4, omega=2.0, **F64), -1.0),
    (GaussianCosine(mu=0.5, sigma=1e-4, omega=0.0, **F64), 1.0),
    (BernoulliThreshold(logit=-30.0, target=0.45, **F64), 0.45**2),
    (BernoulliThreshold(logit=30.0, target=0.7, **F64), 0.3**2),
    (CategoricalLinear(logits=[-30.0, 30.0, -30.0], rewards=[1.0, -2.0, 0.5], **F64), -2.0),
    (BernoulliShared(phi=30.0, targets=[0.6, 0.51, 0.48], **F64), 0.4**2 + 0.49**2 + 0.52**2),
]


@pytest.mark.parametrize("objective, infimum", NEAR_INFIMUM, ids=lambda o: getattr(o, "name", ""))
def test_each_toy_knows_its_infimum_and_no_parameter_goes_below_it(objective, infimum):
    assert objective.infimum == pytest.approx(infimum, abs=1e-12)
    assert float(objective.exact_value(objective.theta)) == pytest.approx(infimum, abs=1e-6)
    # Anywhere else L is at least the infimum (a random cloud of parameters).
    torch.manual_seed(0)
    d = objective.theta.shape[-1]
    thetas = objective.theta + 3 * torch.randn(2000, d, **F64)
    if objective.param_names[-1] == "sigma":
        thetas[:, 1] = thetas[:, 1].abs() + 1e-3
    assert (objective.exact_value(thetas) >= infimum - 1e-12).all()


def test_a_training_step_keeps_sigma_positive_and_moves_theta():
    objective = GaussianQuadratic(mu=1.0, sigma=0.01, target=0.0, **F64)
    (leaf,) = objective.parameters()
    with torch.no_grad():
        leaf -= torch.tensor([0.5, 1.0], **F64)  # a step that would make sigma negative
    objective.constrain()
    torch.testing.assert_close(objective.theta, torch.tensor([0.5, 1e-3], **F64))
    # A toy without a constraint takes the step as it is.
    bits = BernoulliThreshold(logit=0.0, **F64)
    (leaf,) = bits.parameters()
    with torch.no_grad():
        leaf -= 5.0
    bits.constrain()
    assert bits.theta.item() == -5.0


def test_a_toys_training_loss_differentiates_to_one_estimate():
    objective = GaussianQuadratic(mu=1.0, sigma=0.7, target=0.2, **F64)
    (leaf,) = objective.parameters()
    torch.manual_seed(3)
    objective.loss(Reparameterization(), 10).backward()
    torch.manual_seed(3)
    expected = estimate_gradient(Reparameterization(), objective, objective.theta, 10)
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-12, atol=1e-12)


def test_toys_and_models_share_the_training_interface():
    from benchmarks.objectives.base import Objective
    from benchmarks.objectives.model import ModelObjective
    from benchmarks.objectives.vae import BernoulliVAE, GaussianVAE

    for toy in TOYS.values():
        assert issubclass(toy, Objective) and not issubclass(toy, ModelObjective)
        assert toy.optimizer_class is torch.optim.SGD
    for model in (BernoulliVAE, GaussianVAE):
        assert issubclass(model, ModelObjective) and issubclass(model, Objective)
        assert model.optimizer_class is torch.optim.Adam and math.isnan(model.infimum)
