"""The speed regression suite (pytest-benchmark). Run: ``make bench`` (README, "Speed").

Each group pairs the library with the reference it is judged against, so the group's
table shows the ratio in its relative column; the summary at the end lists the ratios the
issue sets targets for. The last id field says which side a benchmark is, and the two
sides of a pair run one right after the other, so that a change in the machine's load
between them biases the ratio as little as possible.

    estimate TOY N=n              ``library``: one ``estimate_gradient``; ``plain``: the same
                                  estimator written inline (distribution + surrogate +
                                  ``torch.autograd.grad``), ``reference.PlainEstimate``
    replicates TOY R=1000 N=10    ``batched``: ``replicate_gradients``; ``loop``: a Python
                                  loop of single estimates, what batching replaces (on
                                  ``LOOP_TOYS``, one continuous and one discrete toy)
    replicates TOY R=1000 N=1000  ``batched`` vs ``floor``: the same replicate estimates as
                                  one fused expression with analytic scores (N=100 for
                                  the multi-sample estimators, K=10: the same 10⁶ draws)
    model estimate MODEL N=10     one gradient of a VAE's minibatch loss w.r.t. all weights
    model replicates vae_gaussian R=100 N=10  ``batched``: the model's
                                  ``replicate_gradients``; ``loop``: single estimates
"""

from __future__ import annotations

import os

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
    samples_for,
    synchronized,
)
from benchmarks.speed.conftest import DEVICE
from estimators import estimate_gradient, replicate_gradients

SIZES = (10, 1000)
REPLICATES = 1000
WARMUP_STEPS = 10  # as measure_variance: warms moving-average baselines
LOOP_TOYS = ("gaussian_quadratic", "bernoulli_threshold")


def _with_sides(cases, reference_side, has_reference):
    """Each case as ``(*case, side)``, its reference (if any) right after the library."""
    out = []
    for case in cases:
        out.append((*case, "library" if reference_side == "plain" else "batched"))
        if has_reference(case):
            out.append((*case, reference_side))
    return out


def _ids(cases):
    return ["-".join(str(part) for part in case) for case in cases]


ESTIMATE_CASES = _with_sides(
    [(t, e, f"N{n}") for n in SIZES for t, e in pairs(n)],
    "plain",
    lambda c: reference.has_reference(c[0], c[1]),
)
REPLICATE_CASES = _with_sides(pairs(10), "loop", lambda c: c[0] in LOOP_TOYS)
LARGE_CASES = _with_sides(pairs(1000), "floor", lambda c: reference.has_reference(*c))


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


# --- one estimate: library vs plain torch ---------------------------------------------------


@pytest.mark.parametrize(
    ("toy", "estimator", "size", "side"), ESTIMATE_CASES, ids=_ids(ESTIMATE_CASES)
)
def test_estimate(benchmark, toy, estimator, size, side):
    n = int(size.removeprefix("N"))
    est, obj = _setup(
        benchmark, toy, estimator, f"estimate {toy} N={n}",
        comparison="library / plain", role=side, size=f"N={n}",
    )  # fmt: skip
    if side == "library":
        fn = lambda: estimate_gradient(est, obj, obj.theta, n)  # noqa: E731
    else:
        plain = reference.PlainEstimate(toy, estimator)
        for _ in range(WARMUP_STEPS):
            plain(obj.theta, 10)
        fn = lambda: plain(obj.theta, n)  # noqa: E731
    grad = _run(benchmark, fn)
    assert grad.shape == obj.theta.shape


# --- R replicates at N=10: batched vs the Python loop ----------------------------------------


@pytest.mark.parametrize(("toy", "estimator", "side"), REPLICATE_CASES, ids=_ids(REPLICATE_CASES))
def test_replicates(benchmark, toy, estimator, side):
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=10",
        comparison="loop / batched", role=side, size=f"R={REPLICATES} N=10",
    )  # fmt: skip
    replicates = REPLICATES
    if side == "batched":
        fn = lambda: replicate_gradients(est, obj, obj.theta, 10, replicates)  # noqa: E731
    else:
        # Untimed (--benchmark-disable, the CI smoke run) a short loop shows it still works.
        replicates = 10 if benchmark.disabled else REPLICATES

        def fn():
            return torch.stack(
                [estimate_gradient(est, obj, obj.theta, 10) for _ in range(replicates)]
            )

    grads = _run(benchmark, fn)
    assert grads.shape == (replicates, *obj.theta.shape)


# --- R replicates at N=1000: batched vs the fused floor --------------------------------------


@pytest.mark.parametrize(("toy", "estimator", "side"), LARGE_CASES, ids=_ids(LARGE_CASES))
def test_replicates_large(benchmark, toy, estimator, side):
    n = samples_for(estimator, 1000)
    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N={n}",
        comparison="batched / floor", role=side, size=f"R={REPLICATES} N={n}",
    )  # fmt: skip
    if side == "batched":
        fn = lambda: replicate_gradients(est, obj, obj.theta, n, REPLICATES)  # noqa: E731
    else:
        # The moving average or learned baseline the library subtracts after its warm-up.
        baseline = reference.baseline_value(est, obj.theta)
        fn = lambda: reference.fused_replicates(  # noqa: E731
            toy, estimator, obj.theta, n, REPLICATES, baseline
        )
    grads = _run(benchmark, fn)
    assert grads.shape == (REPLICATES, *obj.theta.shape)


# --- opt-in: the batched path under torch.compile -------------------------------------------

COMPILE_CASES = [
    ("gaussian_quadratic", "reinforce"),
    ("gaussian_quadratic", "reparam"),
    ("bernoulli_threshold", "reinforce"),
]


@pytest.mark.skipif(
    os.environ.get("GRADBENCH_BENCH_COMPILE") != "1",
    reason="torch.compile benchmarks are opt-in: GRADBENCH_BENCH_COMPILE=1 (~10-20 s compile each)",
)
# torch 2.13's compile stack calls its own deprecated torch.jit.script_method on import.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
# ... and dynamo instantiates custom autograd Functions (estimators.scores), which torch
# itself deprecates.
@pytest.mark.filterwarnings(
    "ignore:<class 'torch.autograd.function.Function'> should not:DeprecationWarning"
)
@pytest.mark.parametrize(("toy", "estimator"), COMPILE_CASES, ids=_ids(COMPILE_CASES))
def test_replicates_compiled(benchmark, toy, estimator):
    """``replicate_gradients``' surrogate under ``torch.compile``, next to batched and floor.

    ``fallback_random`` keeps eager torch's random numbers, so the estimates are the
    library's own (inductor's faster generator would draw different ones).
    """
    import torch._inductor.config as inductor_config

    est, obj = _setup(
        benchmark, toy, estimator, f"replicates {toy} R={REPLICATES} N=1000",
        comparison="batched / floor", role="compiled", size=f"R={REPLICATES} N=1000",
    )  # fmt: skip
    loss = torch.compile(lambda copies: est.surrogate(obj, copies, 1000).mean(0).sum())

    def fn():
        copies = obj.theta.detach().expand(REPLICATES, *obj.theta.shape).clone()
        copies.requires_grad_(True)
        with inductor_config.patch(fallback_random=True):
            return torch.autograd.grad(loss(copies), copies)[0]

    torch.manual_seed(1)
    expected = replicate_gradients(est, obj, obj.theta, 1000, REPLICATES)
    torch.manual_seed(1)
    torch.testing.assert_close(fn(), expected, rtol=1e-4, atol=1e-4)  # compiles, too
    grads = _run(benchmark, fn)
    assert grads.shape == (REPLICATES, *obj.theta.shape)


# --- models ----------------------------------------------------------------------------------

MODEL_N = 10
MODEL_REPLICATES = 100
MODEL_ESTIMATE_CASES = pairs(MODEL_N, MODEL_NAMES)
# The variance path on vae_gaussian for representative estimators; the loop of
# measure_valued (two decoder passes per latent coordinate) would take minutes by itself.
MODEL_REPLICATE_CASES = _with_sides(
    [
        c
        for c in pairs(MODEL_N, MODEL_NAMES[:1])
        if c[1] in ("reinforce", "reinforce_loo", "reparam")
    ],
    "loop",
    lambda c: True,
)


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
    ("model", "estimator", "side"), MODEL_REPLICATE_CASES, ids=_ids(MODEL_REPLICATE_CASES)
)
def test_model_replicates(benchmark, model, estimator, side):
    est, obj, one_estimate = _model_setup(
        benchmark, model, estimator, f"model replicates {model} R={MODEL_REPLICATES} N={MODEL_N}",
        comparison="model loop / batched", role=side, size=f"R={MODEL_REPLICATES} N={MODEL_N}",
    )  # fmt: skip
    if side == "batched":
        grads = _run(benchmark, lambda: obj.replicate_gradients(est, MODEL_N, MODEL_REPLICATES))
        assert grads["encoder"].shape[0] == MODEL_REPLICATES
        return
    replicates = 2 if benchmark.disabled else MODEL_REPLICATES
    grads = _run(benchmark, lambda: torch.stack([one_estimate() for _ in range(replicates)]))
    assert grads.shape[0] == replicates


# --- opt-in: a training step under torch.compile (task.compile=true) ----------------------

TRAIN_COMPILE_CASES = [(m, e, side) for m in MODEL_NAMES[:1] for e in ("reinforce", "reparam")
                       for side in ("eager", "compiled")]  # fmt: skip


@pytest.mark.skipif(
    os.environ.get("GRADBENCH_BENCH_COMPILE") != "1",
    reason="torch.compile benchmarks are opt-in: GRADBENCH_BENCH_COMPILE=1 (~10-20 s compile each)",
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's compile stack, as above
@pytest.mark.parametrize(
    ("model", "estimator", "side"), TRAIN_COMPILE_CASES, ids=_ids(TRAIN_COMPILE_CASES)
)
def test_train_step_compiled(benchmark, model, estimator, side):
    """One ``task=train`` step (fresh minibatch, loss, backward, Adam) eager or compiled."""
    benchmark.group = f"train step {model} N={MODEL_N}"
    benchmark.extra_info.update(
        toy=model, estimator=estimator, role=side, comparison="eager / compiled",
        size=f"N={MODEL_N}",
    )  # fmt: skip
    objective = make_model.__wrapped__(model, DEVICE)  # a fresh copy: training changes it
    est = make_estimator(estimator)
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    loss_fn = lambda: objective.loss(est, MODEL_N)  # noqa: E731
    if side == "compiled":
        loss_fn = torch.compile(loss_fn)

    def step():
        objective.next_batch(generator)
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(WARMUP_STEPS):  # compiles, too
        step()
    loss = _run(benchmark, step)
    assert torch.isfinite(loss)
