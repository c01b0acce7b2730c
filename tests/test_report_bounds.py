"""Figures of ``benchmarks.report.bounds``: hand-made records with known numbers, checked
through the lines the figures draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.report import bounds

KS = (1, 2, 5, 10)


def iw_records(with_k: bool = True) -> pd.DataFrame:
    """Two estimators × four K × two sigmas × two coordinates; −L_K = 2 + sigma/K, variance
    = 1/K (iwae) and 1/K² (dreg)."""
    rows = []
    for sigma in (0.5, 0.9):
        for estimator, power in (("iwae", 1), ("dreg", 2)):
            for k in KS:
                for param in ("mu", "sigma"):
                    rows.append({
                        "objective": "linear_gaussian", "estimator": estimator,
                        "task": "variance", "param": param, "k": k, "replicates": 1000,
                        "objective.sigma": sigma, "objective.mu": 0.5, "status": "ok",
                        "true_value": 2 + sigma / k, "var_grad": 1.0 / k**power,
                        "n_samples": 1, "run_dir": f"{estimator}-{k}-{sigma}",
                    })  # fmt: skip
    frame = pd.DataFrame(rows)
    return frame if with_k else frame.drop(columns="k")


def _lines(fig):
    return {(ax.get_title(), line.get_label()): line for ax in fig.axes for line in ax.lines}


def test_bound_vs_k_draws_minus_true_value_per_setting_and_the_limit():
    fig = bounds.bound_vs_k(iw_records(), limits={"linear_gaussian": -2.0})
    lines = _lines(fig)
    line = lines[("linear_gaussian", "sigma = 0.9")]
    np.testing.assert_allclose(line.get_xdata(), KS)
    np.testing.assert_allclose(line.get_ydata(), [-(2 + 0.9 / k) for k in KS])
    assert ("linear_gaussian", "sigma = 0.5") in lines
    np.testing.assert_allclose(lines[("linear_gaussian", "log p(x)")].get_ydata(), [-2.0, -2.0])


def test_variance_vs_k_has_a_panel_per_setting_and_coordinate():
    fig = bounds.variance_vs_k(iw_records())
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and "linear_gaussian, sigma = 0.9\n∂/∂mu" in titles
    lines = _lines(fig)
    dreg = lines[("linear_gaussian, sigma = 0.5\n∂/∂sigma", "dreg")]
    np.testing.assert_allclose(dreg.get_xdata(), KS)
    np.testing.assert_allclose(dreg.get_ydata(), [1 / k**2 for k in KS])
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)


@pytest.mark.parametrize("figure", [bounds.bound_vs_k, bounds.variance_vs_k])
def test_k_figures_are_none_without_k(figure):
    assert figure(iw_records(with_k=False)) is None
    assert figure(iw_records().assign(status="skipped: no")) is None
    one_k = iw_records()
    assert figure(one_k[one_k["k"] == one_k["k"].min()]) is None  # a point, not a curve


def test_variance_vs_step_draws_each_runs_logged_variance():
    steps = [0, 200, 400]
    train = pd.DataFrame([
        {"objective": "bernoulli_threshold", "estimator": name, "step": s,
         "log10_var": value - s / 1000}
        for name, value in (("reinforce", -1.8), ("relax", -4.0)) for s in steps
    ] + [{"objective": "bernoulli_threshold", "estimator": "relax", "step": 1,
          "log10_var": np.nan}])  # fmt: skip
    lines = _lines(bounds.variance_vs_step(train))
    relax = lines[("bernoulli_threshold", "relax")]
    np.testing.assert_allclose(relax.get_xdata(), steps)
    np.testing.assert_allclose(relax.get_ydata(), [-4.0, -4.2, -4.4])
    assert ("bernoulli_threshold", "reinforce") in lines
    assert bounds.variance_vs_step(train.drop(columns="log10_var")) is None


def test_the_report_of_a_k_sweep_has_both_k_figures(tmp_path):
    import torch

    from benchmarks.measure import measure_variance
    from benchmarks.objectives import LinearGaussian
    from benchmarks.report import write_report
    from estimators import IWAE, DReG

    for name, cls in (("iwae", IWAE), ("dreg", DReG)):
        for k in (1, 4):
            frame = measure_variance(
                cls(k=k), LinearGaussian(dtype=torch.float64), estimator_name=name,
                objective_name="linear_gaussian", n_samples=1, replicates=200, seed=0,
                warmup_steps=0, timing_min_run_time=0.0,
            )  # fmt: skip
            (tmp_path / f"{name}-{k}").mkdir()
            frame.to_parquet(tmp_path / f"{name}-{k}" / "records.parquet")
    write_report(tmp_path)
    for figure in ("variance_vs_k", "bound_vs_k"):
        assert (tmp_path / "report" / f"{figure}.png").stat().st_size > 0
