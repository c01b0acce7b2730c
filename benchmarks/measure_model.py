"""Measurement on models: (estimator, model, sizes, seed) -> tidy DataFrame, one row per
parameter group (``encoder``, ``decoder``, ``all`` for the VAEs; ``mean``, ``log_scale``,
``all`` for Bayesian logistic regression).

Pure, like ``benchmarks.measure``: no Hydra, no files; a model's ``measure`` calls it.
For a group of P coordinates:

- ``var_grad``: the mean over coordinates of the per-coordinate variance across
  replicates (the "log-variance" of the REBAR/RELAX/DisARM plots is its log10);
- ``true_grad``, ``mean_grad``: root-mean-square over coordinates of the true (or
  reference) gradient and of the replicates' mean gradient;
- ``bias``: root-mean-square over coordinates of mean − true; ``bias_se``:
  sqrt(var_grad / replicates), the root-mean-square of the per-coordinate standard errors,
  so an unbiased estimator gives bias ≈ bias_se (plus ``true_grad_se`` in quadrature when
  the truth is itself a Monte Carlo reference);
- ``bias_chi2``: mean over coordinates of z², z = (mean − true) / its standard error:
  about 1 for an unbiased estimator, far above for a biased one;
- ``snr``: rms(mean_grad) / sqrt(var_grad).

Replicates are computed by ``objective.replicate_gradients`` (one forward and backward
pass per chunk of replicates) and reduced chunk by chunk into per-coordinate means and
sums of squares (Chan et al.'s pairwise update), so memory stays bounded whatever the
number of replicates.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import torch
from torch import Tensor

from benchmarks.measure import (
    RECORD_COLUMNS,
    bound_name,
    environment_columns,
    nonfinite_status,
    synchronize,
    time_call,
)
from benchmarks.settings import check_sizes
from estimators import IWAE, Estimator, NotApplicable, Reparameterization, bound_k

MODEL_COLUMNS = [
    *RECORD_COLUMNS,
    *[c for c in ("true_grad_se", "true_grad_method", "bias_chi2", "n_coords", "step")
      if c not in RECORD_COLUMNS],
]  # fmt: skip

# Draws per replicate of the reparam reference gradient (replicates = samples / this).
REFERENCE_CHUNK = 100


class Moments:
    """Running per-coordinate mean and sum of squared deviations over replicates."""

    def __init__(self):
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, batch: Tensor) -> None:
        """Merge a chunk of replicates [r, P]."""
        batch = batch.detach().to(torch.float64)
        n_b = batch.shape[0]
        if n_b == 0:
            return
        mean_b = batch.mean(0)
        m2_b = (batch - mean_b).square().sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.count * n_b / n)
        self.count = n

    @property
    def var(self) -> Tensor:
        return self.m2 / (self.count - 1)


def n_points(objective) -> int:
    """Data points one sample of the latents is evaluated on (sizes the chunks)."""
    theta = objective.theta
    return int(theta.shape[0]) if theta.dim() > 1 else int(getattr(objective, "batch_size", 1))


def replicate_moments(
    estimator: Estimator,
    objective,
    n_samples: int,
    replicates: int,
    *,
    max_rows: int = 2**16,
    drop_nonfinite: bool = False,
) -> tuple[dict[str, Moments], int]:
    """Per-group moments of ``replicates`` gradient estimates, and how many were finite.

    Replicates run in chunks of at most ``max_rows`` (sample, data point) rows each. A
    replicate with any non-finite coordinate is counted; with ``drop_nonfinite`` it is left
    out of the moments, otherwise it enters them (and makes them non-finite).
    """
    rows = n_samples * bound_k(estimator) * n_points(objective)  # K draws per estimate
    per_chunk = max(1, max_rows // rows)
    moments = {group: Moments() for group in objective.param_groups}
    n_finite = 0
    for start in range(0, replicates, per_chunk):
        size = min(per_chunk, replicates - start)
        grads = objective.replicate_gradients(estimator, n_samples, size)
        finite = torch.stack([torch.isfinite(g).all(-1) for g in grads.values()]).all(0)
        n_finite += int(finite.sum())
        for group, g in grads.items():
            moments[group].add(g[finite] if drop_nonfinite else g)
    return moments, n_finite


def true_gradient(
    objective, k: int = 1
) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
    """(gradient, its standard error) per group of the loss −L_K (−ELBO at K = 1), as
    ``objective.true_grad_method`` says.

    ``exact``: the objective's own (enumeration, quadrature), standard error 0.
    ``reference``: reparam (IWAE's reparameterised gradient of L_K for K > 1) from
    ``objective.reference_samples`` draws per data point, that is reference_samples / K
    estimates, in replicates of up to ``REFERENCE_CHUNK`` estimates; standard error from
    their spread.
    ``none``: (None, None).
    """
    method = objective.true_grad_method
    if method == "exact":
        grads = objective.exact_gradient() if k == 1 else objective.exact_gradient(k)
        exact = {g: v.detach().to(torch.float64) for g, v in grads.items()}
        return exact, {g: torch.zeros_like(v) for g, v in exact.items()}
    if method == "reference":
        reference = Reparameterization() if k == 1 else IWAE(k=k)
        estimates = max(2, objective.reference_samples // k)
        n = min(REFERENCE_CHUNK, estimates)
        replicates = max(2, estimates // n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            moments, _ = replicate_moments(reference, objective, n, replicates)
        return (
            {g: m.mean for g, m in moments.items()},
            {g: (m.var / m.count).sqrt() for g, m in moments.items()},
        )
    return None, None


def _with_all(groups: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**groups, "all": torch.cat(list(groups.values()))}


def _rms(x: Tensor) -> float:
    return float(x.square().mean().sqrt())


def measure_model_variance(
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
    max_rows: int = 2**16,
    nonfinite: str = "record",
    truth: tuple | None = None,
    step: int | None = None,
    reset: bool = True,
) -> pd.DataFrame:
    """Bias, variance and cost of ``estimator`` on a model at its current parameters.

    Args:
        truth: a precomputed ``true_gradient(objective)``, to share it between estimators
            measured at the same parameters; it is the ELBO's, so a multi-sample estimator
            with K > 1 computes the truth of its own L_K instead.
        step: the training step the parameters come from (None at initialisation or for
            a loaded checkpoint), recorded in the ``step`` column.
        reset: forget the estimator's state first (moving averages, learned baselines);
            False measures it as it is, e.g. as a training run left it.

    Returns:
        Rows for each of ``objective.param_groups`` and ``all``, columns ``MODEL_COLUMNS``.
    """
    check_sizes(n_samples, replicates, nonfinite)
    theta = objective.theta
    device = theta.device
    params = [p for p in objective.parameters() if p.requires_grad]
    groups = [*objective.param_groups, "all"]
    k = bound_k(estimator)

    def one_estimate():
        return torch.autograd.grad(objective.loss(estimator, n_samples), params)

    torch.manual_seed(seed)
    if reset:
        estimator.reset()
    stats = {"measure": math.nan, "time": math.nan, "n_finite": 0}
    mean = var = None
    try:
        estimator.check(objective, theta, n_samples)
    except NotApplicable as reason:
        status = f"skipped: {reason}"
        true, true_se = None, None
    else:
        if truth is None or k > 1:
            truth = true_gradient(objective, k)
        true, true_se = truth
        for _ in range(warmup_steps):
            one_estimate()
        synchronize(device)
        start = time.perf_counter()
        moments, n_finite = replicate_moments(
            estimator,
            objective,
            n_samples,
            replicates,
            max_rows=max_rows,
            drop_nonfinite=nonfinite == "drop",
        )
        synchronize(device)
        stats["measure"] = time.perf_counter() - start
        stats["n_finite"] = n_finite
        status, computed = nonfinite_status(n_finite, replicates, nonfinite)
        if computed:
            mean = _with_all({k: m.mean.cpu() for k, m in moments.items()})
            var = _with_all({k: m.var.cpu() for k, m in moments.items()})
        stats["time"] = time_call(one_estimate, timing_min_run_time)

    if true is not None:
        true = _with_all({k: v.cpu() for k, v in true.items()})
        true_se = _with_all({k: v.cpu() for k, v in true_se.items()})
    used = stats["n_finite"] if nonfinite == "drop" else replicates
    rows = []
    for group in groups:
        row = {
            "objective": objective_name, "estimator": estimator_name, "task": "variance",
            "param": group, "n_samples": n_samples, "replicates": replicates, "seed": seed,
            "time_per_estimate_s": stats["time"], "measure_time_s": stats["measure"],
            "status": status, "unbiased": estimator.unbiased, "n_finite": stats["n_finite"],
            **environment_columns(device, theta.dtype),
            "true_grad_method": objective.true_grad_method, "step": step,
            "k": k, "bound": bound_name(k),
        }  # fmt: skip
        row.update(dict.fromkeys(
            ("true_grad", "mean_grad", "var_grad", "bias", "bias_se", "true_grad_se", "snr",
             "log10_var", "work_normalized_var", "z_bias", "bias_chi2", "param_value",
             "true_value"), math.nan))  # fmt: skip
        if true is not None:
            row["true_grad"], row["true_grad_se"] = _rms(true[group]), _rms(true_se[group])
        if mean is not None:
            m, v = mean[group], var[group]
            row["n_coords"] = m.numel()
            v_mean = float(v.mean())
            row.update(
                mean_grad=_rms(m),
                var_grad=v_mean,
                bias_se=math.sqrt(v_mean / used),
                log10_var=math.log10(v_mean) if v_mean > 0 else math.nan,
                snr=_rms(m) / math.sqrt(v_mean) if v_mean > 0 else math.nan,
                work_normalized_var=v_mean * stats["time"],
            )
            if true is not None:
                diff = m - true[group]
                row["bias"] = _rms(diff)
                se2 = v / used + true_se[group].square()
                total_se = math.sqrt(float(se2.mean()))
                row["z_bias"] = row["bias"] / total_se if total_se > 0 else math.nan
                informative = se2 > 0
                row["bias_chi2"] = float((diff[informative].square() / se2[informative]).mean())
        rows.append(row)
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)
