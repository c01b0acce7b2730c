"""Measurement: (estimator, objective, sizes, seed) -> tidy DataFrame, one row per parameter.

Pure: no Hydra, no files. ``benchmarks.run`` calls it (through a toy's ``measure``) and
writes what it returns. ``RECORD_COLUMNS`` are the columns of every records file: the
results contract first, then the columns beyond it.
"""

from __future__ import annotations

import math
import statistics
import time
import timeit
from collections.abc import Callable

import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from benchmarks.settings import check_sizes
from estimators import (
    Estimator,
    NotApplicable,
    bound_k,
    estimate_gradient,
    replicate_gradients,
)
from estimators.base import is_importance_weighted

RECORD_COLUMNS = [
    "objective", "estimator", "task", "param", "n_samples", "replicates", "seed",
    "true_grad", "mean_grad", "var_grad", "bias", "bias_se",
    "time_per_estimate_s", "measure_time_s", "status",
    # Beyond the contract.
    "param_value", "true_value", "unbiased", "snr", "log10_var", "work_normalized_var",
    "z_bias", "n_finite", "var_grad_se", "device", "dtype", "torch_version", "k", "bound",
]  # fmt: skip


def bound_name(k: int) -> str:
    """The ``bound`` column: which loss the gradient is of, ``elbo`` or ``L_K`` (K > 1)."""
    return "elbo" if k == 1 else f"L_{k}"


def environment_columns(device, dtype) -> dict[str, str]:
    """The ``device``, ``dtype`` and ``torch_version`` columns of a records row."""
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
    }


def nonfinite_status(n_finite: int, replicates: int, nonfinite: str) -> tuple[str, bool]:
    """A measurement's ``status`` for ``n_finite`` finite replicates out of ``replicates``,
    and whether its statistics are computed (all finite, or ``drop`` with at least two)."""
    if n_finite == replicates:
        return "ok", True
    status = f"nonfinite: {replicates - n_finite} of {replicates} replicates"
    if nonfinite == "drop" and n_finite >= 2:
        return f"{status}; statistics over the {n_finite} finite ones", True
    return status, False


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock readings mean something on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_clock() -> float:
    """``time.perf_counter`` once the accelerator's queued work is done, as
    ``torch.utils.benchmark``'s clock reads it (that module is not imported: it imports
    setuptools)."""
    if torch.accelerator.is_available():
        torch.accelerator.synchronize()
    return time.perf_counter()


def time_call(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per call of ``fn`` over blocks of calls filling ``min_run_time``.

    ``timeit.Timer`` runs the blocks on ``benchmark_clock``, which waits for accelerators,
    at the current thread count. The block size comes from one warm-up call (a block is
    about a tenth of ``min_run_time``), and the warm-up counts towards the budget:
    ``torch.utils.benchmark.Timer`` runs at least two more warm-up calls before every block,
    and its ``blocked_autorange`` searches for a block size for about as long again as it
    measures, either of which would make timing a toy sweep cost far more than its budget.
    """
    timer = timeit.Timer(stmt=fn, timer=benchmark_clock)
    spent = timer.timeit(1)
    number = max(1, int(min_run_time / 10 / max(spent, 1e-9)))
    per_call = []
    while not per_call or spent < min_run_time:
        block = timer.timeit(number)
        per_call.append(block / number)
        spent += block
    return statistics.median(per_call)


def replicate_gradients_chunked(
    estimator: Estimator,
    objective,
    theta: Tensor,
    n_samples: int,
    replicates: int,
    max_batch_samples: int,
) -> Tensor:
    """``replicate_gradients`` in chunks of at most ``max_batch_samples`` draws at a time.

    Bounded memory for large replicates × n_samples; each chunk is still one batched pass.
    A measurement of several chunks shows a progress bar on a terminal (stderr).
    """
    per_chunk = max(1, max_batch_samples // n_samples)
    sizes = [min(per_chunk, replicates - start) for start in range(0, replicates, per_chunk)]
    bar = tqdm(sizes, desc="replicates", unit="chunk", disable=None if len(sizes) > 1 else True)
    chunks = [replicate_gradients(estimator, objective, theta, n_samples, r) for r in bar]
    return torch.cat(chunks)


def variance_standard_error(grads: Tensor) -> Tensor:
    """Standard error of the sample variance of each column of ``grads`` [R, D]:
    sqrt((m4 − s⁴) / R), m4 the fourth central moment. Unlike the Gaussian formula
    s² sqrt(2 / (R − 1)) it holds for the heavy-tailed estimates score functions give."""
    centred = grads - grads.mean(0)
    s2 = centred.square().mean(0)
    return ((centred.pow(4).mean(0) - s2.square()).clamp_min(0) / grads.shape[0]).sqrt()


def measure_variance(
    estimator: Estimator,
    objective,
    *,
    estimator_name: str,
    objective_name: str,
    n_samples: int,
    replicates: int,
    seed: int,
    warmup_steps: int = 10,
    timing_min_run_time: float = 0.05,
    max_batch_samples: int = 2**22,
    nonfinite: str = "record",
    reset: bool = True,
) -> pd.DataFrame:
    """Bias, variance and cost of ``estimator`` on ``objective`` at its parameters.

    Steps: seed torch; ``warmup_steps`` single estimates (they warm stateful baselines and
    caches); ``replicates`` independent estimates from ``n_samples`` draws each, batched
    (timed as ``measure_time_s``); then the time of one estimate on its own
    (``time_per_estimate_s``). An estimator that does not apply gives rows with status
    ``skipped: <reason>``; non-finite estimates give ``nonfinite: k of R replicates`` and
    NaN statistics, or, with ``nonfinite="drop"``, statistics over the finite replicates
    only (``n_finite`` of them; ``bias_se`` uses that count). ``reset=False`` keeps the
    estimator's state (a baseline as training left it) instead of forgetting it first.

    Returns:
        One row per parameter coordinate, columns ``RECORD_COLUMNS``.
    """
    check_sizes(n_samples, replicates, nonfinite)
    theta = objective.theta
    device = theta.device
    # K: importance samples per estimate (1 for single-sample estimators). The truth of an
    # importance-weighted objective is that of the bound L_K the estimator targets.
    k_bound = bound_k(estimator)
    iw = is_importance_weighted(objective)
    at_k = {"k": k_bound} if iw else {}
    true_grad = objective.true_grad(**at_k).cpu()
    true_value = float(objective.exact_value(theta, **at_k))
    d = theta.shape[-1]
    nan = torch.full((d,), math.nan, dtype=torch.float64)
    stats = {"mean": nan, "var": nan, "var_se": nan, "n_finite": 0, "measure": math.nan,
             "time": math.nan}  # fmt: skip

    torch.manual_seed(seed)
    if reset:
        estimator.reset()
    try:
        estimator.check(objective, theta, n_samples)
    except NotApplicable as reason:
        status = f"skipped: {reason}"
    else:
        for _ in range(warmup_steps):
            estimate_gradient(estimator, objective, theta, n_samples)

        synchronize(device)
        start = time.perf_counter()
        grads = replicate_gradients_chunked(
            estimator, objective, theta, n_samples, replicates, max_batch_samples
        )
        synchronize(device)
        stats["measure"] = time.perf_counter() - start

        grads = grads.detach().to("cpu", torch.float64)  # [replicates, D]
        finite = torch.isfinite(grads).all(-1)
        stats["n_finite"] = int(finite.sum())
        status, computed = nonfinite_status(stats["n_finite"], replicates, nonfinite)
        if computed:
            kept = grads[finite]
            stats["mean"], stats["var"] = kept.mean(0), kept.var(0, correction=1)
            stats["var_se"] = variance_standard_error(kept)

        stats["time"] = time_call(
            lambda: estimate_gradient(estimator, objective, theta, n_samples),
            timing_min_run_time,
        )

    mean, var = stats["mean"], stats["var"]
    bias = mean - true_grad.double()
    # The standard error of the mean over the replicates that entered it.
    bias_se = (var / (stats["n_finite"] if status != "ok" else replicates)).sqrt()
    rows = []
    for k, name in enumerate(objective.param_names):
        v = float(var[k])
        rows.append({
            "objective": objective_name,
            "estimator": estimator_name,
            "task": "variance",
            "param": name,
            "n_samples": n_samples,
            "replicates": replicates,
            "seed": seed,
            "true_grad": float(true_grad[k]),
            "mean_grad": float(mean[k]),
            "var_grad": v,
            "bias": float(bias[k]),
            "bias_se": float(bias_se[k]),
            "time_per_estimate_s": stats["time"],
            "measure_time_s": stats["measure"],
            "status": status,
            "param_value": float(theta[k]),
            "true_value": true_value,
            "unbiased": estimator.unbiased,
            "snr": abs(float(mean[k])) / math.sqrt(v) if v > 0 else math.nan,
            "log10_var": math.log10(v) if v > 0 else math.nan,
            "work_normalized_var": v * stats["time"],
            "z_bias": float(bias[k] / bias_se[k]) if bias_se[k] > 0 else math.nan,
            "n_finite": stats["n_finite"],
            "var_grad_se": float(stats["var_se"][k]),
            **environment_columns(device, theta.dtype),
            "k": k_bound,
            "bound": bound_name(k_bound) if iw else None,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)
