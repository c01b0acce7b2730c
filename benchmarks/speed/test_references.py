"""The references compute what the library computes (no timing here).

Under one seed the plain implementations and the floors draw the same random numbers as
the library, so they must agree to rounding.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.speed import reference
from benchmarks.speed.cases import make_estimator, make_toy, pairs
from estimators import estimate_gradient, replicate_gradients

CASES = [c for c in pairs(10) if reference.has_reference(*c)]
IDS = [f"{t}-{e}" for t, e in CASES]


@pytest.mark.parametrize(("toy", "estimator"), CASES, ids=IDS)
def test_plain_matches_library(toy, estimator):
    obj = make_toy(toy, torch.device("cpu"))
    est, plain = make_estimator(estimator), reference.PlainEstimate(toy, estimator)
    for seed in range(3):  # several calls, so that moving averages are compared too
        torch.manual_seed(seed)
        expected = estimate_gradient(est, obj, obj.theta, 10)
        torch.manual_seed(seed)
        torch.testing.assert_close(plain(obj.theta, 10), expected)


@pytest.mark.parametrize(("toy", "estimator"), CASES, ids=IDS)
def test_floor_matches_library(toy, estimator):
    obj = make_toy(toy, torch.device("cpu"), torch.float64)
    est = make_estimator(estimator)
    for _ in range(5):  # so that moving averages and learned baselines have a value
        estimate_gradient(est, obj, obj.theta, 10)
    baseline = reference.baseline_value(est, obj.theta)
    n, r = 10, 4000
    torch.manual_seed(0)
    expected = replicate_gradients(est, obj, obj.theta, n, r)
    torch.manual_seed(0)
    floor = reference.fused_replicates(toy, estimator, obj.theta, n, r, baseline)
    assert floor.shape == expected.shape
    torch.testing.assert_close(floor, expected)
