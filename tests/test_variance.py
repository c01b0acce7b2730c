"""Statistical tests: unbiasedness, variance against closed forms, and negative controls.

False-fail rates are stated per test family and split over its coordinates (Bonferroni;
see tests/stats.py). Seeds are fixed, so every run is repeatable; float64 throughout.
Each family has a negative control: a deliberately wrong estimator or formula that the
same test must reject, which shows the test has the power to see the error it guards.
"""

import pytest
import torch

from benchmarks.measure import measure_variance, variance_standard_error
from benchmarks.objectives import (
    BernoulliThreshold,
    CategoricalLinear,
    GaussianCosine,
    GaussianQuadratic,
)
from estimators import (
    Baseline,
    LeaveOneOut,
    MovingAverage,
    NotApplicable,
    OptimalConstant,
    Reinforce,
    Reparameterization,
    estimate_gradient,
    replicate_gradients,
)
from tests.stats import Scaled, mean_z, power_margin, rate, variance_z, z_threshold

F64 = {"dtype": torch.float64}
N_SAMPLES, REPLICATES = 10, 100_000
UNBIASED_FAMILY_RATE = rate("toys: unbiasedness of every estimator")


def objectives():
    # Non-symmetric settings, so that no gradient coordinate is zero by symmetry.
    return [
        GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64),
        GaussianCosine(mu=1.0, sigma=0.7, omega=1.0, **F64),
        BernoulliThreshold(logit=-0.5, target=0.45, **F64),
        CategoricalLinear(logits=[0.5, -0.3, 0.1], rewards=[1.0, 2.0, -1.0], **F64),
    ]


def estimators():
    return {
        "reinforce": Reinforce(),
        "reinforce_loo": Reinforce(LeaveOneOut()),
        "reinforce_ema": Reinforce(MovingAverage()),
        "reinforce_optimal": Reinforce(OptimalConstant()),
        "reparam": Reparameterization(),
    }


def applicable_pairs():
    for objective in objectives():
        for name, estimator in estimators().items():
            try:
                estimator.check(objective, objective.theta, N_SAMPLES)
            except NotApplicable:
                continue
            yield pytest.param(estimator, objective, id=f"{name}-{objective.name}")


PAIRS = list(applicable_pairs())
N_COORDINATES = sum(p.values[1].theta.numel() for p in PAIRS)
Z_UNBIASED = z_threshold(UNBIASED_FAMILY_RATE, N_COORDINATES)


def replicate_z(estimator, objective, seed=0):
    torch.manual_seed(seed)
    for _ in range(5):  # warm stateful baselines, as the measurement task does
        estimate_gradient(estimator, objective, objective.theta, N_SAMPLES)
    grads = replicate_gradients(estimator, objective, objective.theta, N_SAMPLES, REPLICATES)
    return mean_z(grads, objective.true_grad()), grads


def test_every_toy_estimator_pair_is_covered():
    # 4 objectives x 4 score-function estimators, plus reparam on the 2 Gaussians.
    assert len(PAIRS) == 18
    assert N_COORDINATES == 36


@pytest.mark.parametrize("estimator, objective", PAIRS)
def test_estimator_is_unbiased(estimator, objective):
    # Family-wise false-fail rate (tests/stats.py) over all coordinates of all pairs.
    z, _ = replicate_z(estimator, objective)
    assert z.abs().max().item() < Z_UNBIASED, f"z = {z.tolist()}"


class MeanIncludingSelf(Baseline):
    """Negative control: the classic bug of baselining each sample with the mean of all
    samples, itself included; the estimate shrinks by (N-1)/N."""

    def __call__(self, objective, theta, x, f):
        return f.mean(0, keepdim=True)


@pytest.mark.parametrize("objective", objectives(), ids=lambda o: o.name)
@pytest.mark.parametrize(
    "wrong", [Scaled(Reinforce()), Reinforce(MeanIncludingSelf())], ids=["scaled", "self_mean"]
)
def test_unbiasedness_test_rejects_a_biased_estimator(wrong, objective):
    # Power check: the design sees a 10% bias on every coordinate, missing it at most at
    # the family's rate shared over its 2 x 4 controls.
    z, grads = replicate_z(wrong, objective)
    se = (grads.var(0) / REPLICATES).sqrt()
    margin = power_margin(rate("miss: toys: scaled and self-mean estimators rejected") / 8)
    assert (0.1 * objective.true_grad().abs() / se).min().item() > Z_UNBIASED + margin
    assert z.abs().max().item() > Z_UNBIASED, f"bias went unseen: z = {z.tolist()}"


# Single-sample variances for f = (x - k)², x ~ N(mu, sigma²), a = mu - k
# (Mohamed et al. 2020, Fig. 2, derived symbolically and checked by quadrature).
def reinforce_variance(a, s):
    return [(a**4 + 14 * a**2 * s**2 + 15 * s**4) / s**2,
            2 * (a**4 + 30 * a**2 * s**2 + 37 * s**4) / s**2]  # fmt: skip


def reparam_variance(a, s):
    return [4 * s**2, 4 * a**2 + 8 * s**2]


def optimal_baseline_variance(a, s):
    return [8 * a**2 + 6 * s**2, 40 * a**2 + 24 * s**2]


class ExactOptimal(Baseline):
    """The optimal constant baseline in closed form: b_mu = a² + 3σ², b_sigma = a² + 5σ²."""

    per_coordinate = True

    def __call__(self, objective, theta, x, f):
        a2 = (theta[..., 0] - objective.target) ** 2
        s2 = theta[..., 1] ** 2
        return torch.stack([a2 + 3 * s2, a2 + 5 * s2], -1).detach()


VARIANCE_POINTS = [(1.0, 1.0, 0.0), (1.0, 1.0, -1.0), (0.5, 2.0, 1.0)]  # (mu, sigma, k)
VARIANCE_CASES = [
    ("reinforce", Reinforce, reinforce_variance),
    ("reparam", Reparameterization, reparam_variance),
    ("exact_optimal", lambda: Reinforce(ExactOptimal()), optimal_baseline_variance),
]
# Family: 3 estimators x 3 points x 2 coordinates x 2 sample sizes.
Z_VARIANCE = z_threshold(rate("toys: variance matches the closed forms"), 3 * 3 * 2 * 2)


@pytest.mark.parametrize("n_samples", [1, 4])
@pytest.mark.parametrize("mu, sigma, k", VARIANCE_POINTS)
@pytest.mark.parametrize("name, make, formula", VARIANCE_CASES, ids=[c[0] for c in VARIANCE_CASES])
def test_variance_matches_closed_form(name, make, formula, mu, sigma, k, n_samples):
    objective = GaussianQuadratic(mu=mu, sigma=sigma, target=k, **F64)
    torch.manual_seed(1)
    grads = replicate_gradients(make(), objective, objective.theta, n_samples, 200_000)
    # An average of n_samples independent terms has 1/n_samples of the variance.
    expected = torch.tensor(formula(mu - k, sigma), **F64) / n_samples
    z = variance_z(grads, expected)
    assert z.abs().max().item() < Z_VARIANCE, f"var {grads.var(0).tolist()} vs {expected.tolist()}"


def test_variance_test_rejects_a_wrong_formula():
    # Negative controls: the same test must reject (a) the mean-baseline variance
    # 8a² + 10σ² (close to the optimal one's 8a² + 6σ²) for the optimal-baseline
    # estimator, and (b) REINFORCE measured against its formula at a different sigma.
    objective = GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64)
    torch.manual_seed(2)
    # Power: each true variance lies far enough from the wrong one, in standard errors,
    # that the test misses it at most at the family's rate shared over the two controls.
    margin = power_margin(rate("miss: toys: variance test rejects the wrong closed form") / 2)
    grads = replicate_gradients(Reinforce(ExactOptimal()), objective, objective.theta, 1, 200_000)
    se = variance_standard_error(grads[:, :1]).item()
    assert abs(optimal_baseline_variance(1.0, 1.0)[0] - 18.0) / se > Z_VARIANCE + margin
    z = variance_z(grads[:, :1], torch.tensor([8.0 + 10.0], **F64))
    assert z.abs().item() > Z_VARIANCE
    # REINFORCE's heavy tails need more replicates for the same power.
    grads = replicate_gradients(Reinforce(), objective, objective.theta, 1, 500_000)
    gap = torch.tensor(reinforce_variance(1.0, 1.0)) - torch.tensor(reinforce_variance(1.0, 1.1))
    assert (gap.abs() / variance_standard_error(grads)).max().item() > Z_VARIANCE + margin
    z = variance_z(grads, torch.tensor(reinforce_variance(1.0, 1.1), **F64))
    assert z.abs().max().item() > Z_VARIANCE


def test_variance_ordering_on_gaussian_quadratic():
    # Theory fixes the order at mu = sigma = 1, k = 0, N = 10 (single-sample variances
    # reparam 4 and 12, optimal baseline 14 and 64, REINFORCE 30 and 136, for mu and
    # sigma): reparam < optimal baseline <= leave-one-out < plain REINFORCE.
    objective = GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64)
    variances = {}
    for name in ("reinforce", "reinforce_loo", "reinforce_optimal", "reparam"):
        records = measure_variance(
            estimators()[name], objective, estimator_name=name, objective_name=objective.name,
            n_samples=10, replicates=50_000, seed=3, timing_min_run_time=0.0,
        )  # fmt: skip
        variances[name] = torch.tensor(records["var_grad"].to_numpy())
    assert (variances["reparam"] < variances["reinforce_optimal"]).all()
    assert (variances["reinforce_optimal"] < variances["reinforce_loo"] * 1.05).all()
    assert (variances["reinforce_loo"] < variances["reinforce"]).all()
    # The gaps are large, as theory says: REINFORCE / reparam = 30/4 (mu), 136/12 (sigma).
    ratio = variances["reinforce"] / variances["reparam"]
    assert ratio[0] == pytest.approx(7.5, rel=0.1) and ratio[1] == pytest.approx(136 / 12, rel=0.1)


@pytest.mark.parametrize("cost", [1e-3, 0.02, 0.2])
def test_timing_spends_its_budget_and_reports_the_per_call_time(monkeypatch, cost):
    """``time_call`` on a fake clock that each call advances by ``cost``: the per-call time
    is exact, the warm-up counts towards the budget, and the calls made overshoot it by at
    most one block (a tenth of it, or one call where a call is longer), with at least one
    block after the warm-up."""
    from benchmarks import measure

    now, calls = [0.0], [0]

    def fn():
        calls[0] += 1
        now[0] += cost

    monkeypatch.setattr(measure, "benchmark_clock", lambda: now[0])
    budget = 0.05
    assert measure.time_call(fn, budget) == pytest.approx(cost)
    block = max(0.1 * budget, cost)
    assert budget <= calls[0] * cost <= max(budget + block, 2 * cost) + 1e-12
