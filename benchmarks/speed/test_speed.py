"""The speed regression suite (pytest-benchmark). Run: ``make bench`` (README, "Speed").

Groups pair the library with the reference it is judged against, so each group's table
shows the ratio in its relative column, and the summary at the end lists the target ratios:

    estimate TOY N=n            one ``estimate_gradient`` (library) vs ``test_plain``, the
                                same estimator written inline (distribution + surrogate +
                                ``torch.autograd.grad``)
    replicates TOY R=1000 N=10  ``replicate_gradients`` (batched) vs ``test_loop``, a Python
                                loop of single estimates (what batching replaces; on
                                ``LOOP_TOYS`` only, one continuous and one discrete toy)
    replicates TOY R=1000 N=1000  batched vs ``test_floor``, the same replicate estimates as
                                one fused expression with analytic scores
    model estimate MODEL N=10   one gradient of a VAE's minibatch loss w.r.t. all weights
    model replicates vae_gaussian R=100 N=10  ``objective.replicate_gradients`` (batched)
                                vs ``test_model_loop``, a loop of single estimates
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.objectives.model import flat
from benchmarks.speed import reference
from benchmarks.speed.cases import (
    MODEL_NAMES,
    make_estimator,
    make_model,
    make_toy,
    pairs,
    synchronized,
)
from benchmarks.speed.conftest import DEVICE
from estimators import estimate_gradient, replicate_gradients

SIZES = (10, 1000)
REPLICATES = 1000
WARMUP_STEPS = 10  # as measure_variance: warms moving-average baselines


def _ids(cases):
    return [f"{toy}-{estimator}" for toy, estimator, *_ in cases]


ESTIMATE_CASES = [(t, e, n) for n in SIZES for t, e in pairs(n)]
ESTIMATE_IDS = [f"{t}-{e}-N{n}" for t, e, n in ESTIMATE_CASES]
PLAIN_CASES = [c for c in ESTIMATE_CASES if reference.has_reference(c[0], c[1])]
PLAIN_IDS = [f"{t}-{e}-N{n}" for t, e, n in PLAIN_CASES]
LOOP_TOYS = ("gaussian_quadratic", "bernoulli_threshold")
BATCHED_CASES = pairs(10)
LOOP_CASES = [c for c in BATCHED_CASES if c[0] in LOOP_TOYS]
LARGE_CASES = pairs(1000)
FLOOR_CASES = [c for c in LARGE_CASES if reference.has_reference(*c)]


def _setup(benchmark, toy, estimator, group, **info):
    benchmark.group = group
    benchmark.extra_info.update(toy=toy, estimator=estimator, **info)
    objective = make_toy(toy, DEVICE)
    est = make_estimator(estimator)
    for _ in range(WARMUP_STEPS):
        estimate_gradient(est, objective, objective.theta, 10)
    return est, objective


def _run(benchmark, fn):
    return benchmark(synchronized(fn, DEVICE))


# --- one estimate -------------------------------------------------------------------------


@pytest.mark.parametrize(("toy", "estimator", "n"), ESTIMATE_CASES, ids=ESTIMATE_IDS)
def test_estimate(benchmark, toy, estimator, n):
    est, obj = _setup(
        benchmark, toy, estimator, f"estimate {toy} N={n}",
        comparison="library / plain", role="library", size=f"N={n}",
    )  # fmt: skip
    grad = _run(benchmark, lambda: estimate_gradient(est, obj, obj.theta, n))
    assert grad.shape == obj.theta.shape


@pytest.mark.parametrize(("toy", "estimator", "n"), PLAIN_CASES, ids=PLAIN_IDS)
def test_plain(benchmark, toy, estimator, n):
    _, obj = _setup(
        benchmark, toy, estimator, f"estimate {toy} N={n}",
        comparison="library / plain", role="plain", size=f"N={n}",
    )  # fmt: skip
    plain = reference.PlainEstimate(toy, estimator)
    for _ in range(WARMUP_STEPS):
        plain(obj.theta, 10)
    grad = _run(benchmark, lambda: plain(obj.theta, n))
    assert grad.shape == obj.theta.shape


# --- R replicates at N=10: batched vs the Python loop ----------------------------------------


@pytest.mark.parametrize(("toy", "estimator"), BATCHED_CASES, ids=_ids(BATCHED_CASES))
def test_batched(benchmark, toy, estimator):
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=10",
        comparison="loop / batched", role="batched", size=f"R={REPLICATES} N=10",
    )  # fmt: skip
    grads = _run(benchmark, lambda: replicate_gradients(est, obj, obj.theta, 10, REPLICATES))
    assert grads.shape == (REPLICATES, *obj.theta.shape)


@pytest.mark.parametrize(("toy", "estimator"), LOOP_CASES, ids=_ids(LOOP_CASES))
def test_loop(benchmark, toy, estimator):
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=10",
        comparison="loop / batched", role="loop", size=f"R={REPLICATES} N=10",
    )  # fmt: skip

    # Untimed (--benchmark-disable, the CI smoke run) a short loop shows it still works.
    replicates = 10 if benchmark.disabled else REPLICATES

    def loop():
        return torch.stack([estimate_gradient(est, obj, obj.theta, 10) for _ in range(replicates)])

    grads = _run(benchmark, loop)
    assert grads.shape == (replicates, *obj.theta.shape)


# --- R replicates at N=1000: batched vs the fused floor --------------------------------------


@pytest.mark.parametrize(("toy", "estimator"), LARGE_CASES, ids=_ids(LARGE_CASES))
def test_batched_large(benchmark, toy, estimator):
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=1000",
        comparison="batched / floor", role="batched", size=f"R={REPLICATES} N=1000",
    )  # fmt: skip
    grads = _run(benchmark, lambda: replicate_gradients(est, obj, obj.theta, 1000, REPLICATES))
    assert grads.shape == (REPLICATES, *obj.theta.shape)


@pytest.mark.parametrize(("toy", "estimator"), FLOOR_CASES, ids=_ids(FLOOR_CASES))
def test_floor(benchmark, toy, estimator):
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=1000",
        comparison="batched / floor", role="floor", size=f"R={REPLICATES} N=1000",
    )  # fmt: skip
    # The moving average the library would subtract after its warm-up.
    ema = getattr(getattr(est, "baseline", None), "value", None)
    ema = 0.0 if ema is None else float(ema)

    def floor():
        return reference.fused_replicates(toy, estimator, obj.theta, 1000, REPLICATES, ema)

    grads = _run(benchmark, floor)
    assert grads.shape == (REPLICATES, *obj.theta.shape)


# --- models ----------------------------------------------------------------------------------

MODEL_N = 10
MODEL_REPLICATES = 100
MODEL_ESTIMATE_CASES = pairs(MODEL_N, MODEL_NAMES)
# The variance path on vae_gaussian for the representative estimators; the loop of
# measure_valued (2 decoder passes per coordinate) would take minutes by itself.
MODEL_REPLICATE_CASES = [
    c for c in pairs(MODEL_N, MODEL_NAMES[:1]) if c[1] in ("reinforce", "reinforce_loo", "reparam")
]


def _model_setup(benchmark, model, estimator, group, **info):
    benchmark.group = group
    benchmark.extra_info.update(toy=model, estimator=estimator, **info)
    objective = make_model(model, DEVICE)
    est = make_estimator(estimator)
    params = [p for p in objective.parameters() if p.requires_grad]

    def one_estimate():
        return flat(torch.autograd.grad(objective.loss(est, MODEL_N), params))

    for _ in range(WARMUP_STEPS):
        one_estimate()
    return est, objective, one_estimate


@pytest.mark.parametrize(
    ("model", "estimator"), MODEL_ESTIMATE_CASES, ids=_ids(MODEL_ESTIMATE_CASES)
)
def test_model_estimate(benchmark, model, estimator):
    _, obj, one_estimate = _model_setup(
        benchmark, model, estimator, f"model estimate {model} N={MODEL_N}"
    )
    grad = _run(benchmark, one_estimate)
    assert grad.shape == (sum(p.numel() for p in obj.parameters()),)


@pytest.mark.parametrize(
    ("model", "estimator"), MODEL_REPLICATE_CASES, ids=_ids(MODEL_REPLICATE_CASES)
)
def test_model_batched(benchmark, model, estimator):
    est, obj, _ = _model_setup(
        benchmark, model, estimator, f"model replicates {model} R={MODEL_REPLICATES} N={MODEL_N}",
        comparison="loop / batched", role="batched", size=f"R={MODEL_REPLICATES} N={MODEL_N}",
    )  # fmt: skip
    grads = _run(benchmark, lambda: obj.replicate_gradients(est, MODEL_N, MODEL_REPLICATES))
    assert grads["encoder"].shape[0] == MODEL_REPLICATES


@pytest.mark.parametrize(
    ("model", "estimator"), MODEL_REPLICATE_CASES, ids=_ids(MODEL_REPLICATE_CASES)
)
def test_model_loop(benchmark, model, estimator):
    _, obj, one_estimate = _model_setup(
        benchmark, model, estimator, f"model replicates {model} R={MODEL_REPLICATES} N={MODEL_N}",
        comparison="loop / batched", role="loop", size=f"R={MODEL_REPLICATES} N={MODEL_N}",
    )  # fmt: skip
    replicates = 2 if benchmark.disabled else MODEL_REPLICATES

    def loop():
        return torch.stack([one_estimate() for _ in range(replicates)])

    grads = _run(benchmark, loop)
    assert grads.shape[0] == replicates
