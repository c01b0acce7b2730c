"""``gradbench compare``: two sweeps matched cell by cell, variance growth and new bias flagged.

The sweeps are built with ``measure_variance`` (the path a variance cell takes) into cell
folders, as a sweep lays them out. Seeds are fixed; the false-alarm rate each comparison
runs at is read from the suite's budget (tests/stats.py), and each negative control checks
its power before it asserts the alarm.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks.compare import compare_records, format_comparison
from benchmarks.compare import main as compare_main
from benchmarks.errors import UsageError
from benchmarks.measure import measure_variance
from benchmarks.objectives import BernoulliThreshold, GaussianQuadratic
from estimators import Estimator, Reinforce, Reparameterization
from tests.stats import Scaled, power_margin, rate

F64 = {"dtype": torch.float64}
REPLICATES = 4000
# Five comparisons below assert that no false alarm is raised: each runs at a fifth of the
# family's rate.
ALARM = rate("compare: a re-run with a new seed raises no alarm") / 5


class Offset(Estimator):
    """Negative control: a correct estimator plus a constant on every coordinate (a bias
    that leaves the variance alone)."""

    def __init__(self, inner, offset):
        self.inner, self.offset = inner, offset

    def check(self, objective, theta, n_samples):
        self.inner.check(objective, theta, n_samples)

    def surrogate(self, objective, theta, n_samples):
        return self.inner.surrogate(objective, theta, n_samples) + self.offset * theta.sum(-1)


CELLS = {
    "estimator=reinforce,objective=gaussian_quadratic": (
        Reinforce, lambda: GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64)),
    "estimator=reparam,objective=gaussian_quadratic": (
        Reparameterization, lambda: GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64)),
    "estimator=reinforce,objective=bernoulli_threshold": (
        Reinforce, lambda: BernoulliThreshold(logit=-0.5, target=0.45, **F64)),
}  # fmt: skip


def sweep(folder, seed, replace=None):
    """Write one records.parquet per cell under ``folder``; ``replace`` swaps estimators."""
    frames = []
    for cell, (make, objective) in CELLS.items():
        estimator = (replace or {}).get(cell, make)()
        obj = objective()
        frame = measure_variance(
            estimator, obj, estimator_name=cell.split(",")[0].split("=")[1],
            objective_name=obj.name, n_samples=4, replicates=REPLICATES, seed=seed,
            warmup_steps=0, timing_min_run_time=0.0,
        )  # fmt: skip
        (folder / cell).mkdir(parents=True)
        frame.to_parquet(folder / cell / "records.parquet")
        frames.append(frame.assign(run_dir=cell))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    return folder, sweep(folder, seed=0)


def test_a_rerun_with_a_new_seed_raises_no_alarm(base, tmp_path):
    _, base_records = base
    new = sweep(tmp_path, seed=1)
    comparison = compare_records(base_records, new, false_alarm=ALARM)
    assert len(comparison.table) == 5 and not comparison.only_base and not comparison.only_new
    assert comparison.regressions == [], comparison.regressions
    t = comparison.table
    assert ((t["ci_low"] < t["var_ratio"]) & (t["var_ratio"] < t["ci_high"])).all()
    assert (t["method"] == "log-variance").all()


def test_a_variance_increase_is_flagged_with_the_cell_named(base, tmp_path):
    _, base_records = base
    cell = "estimator=reinforce,objective=gaussian_quadratic"
    new = sweep(tmp_path, seed=1, replace={cell: lambda: Scaled(Reinforce(), 1.5)})
    alarm = ALARM
    comparison = compare_records(base_records, new, false_alarm=alarm)
    grew = comparison.table[comparison.table["variance_grew"]]
    assert set(grew["run_dir"]) == {cell}
    # Power: 1.5² = 2.25 against the 1.1 threshold, many standard errors of log variance.
    rows = comparison.table[comparison.table["run_dir"] == cell]
    se_log = (math.log(2.25 / 1.1) / (rows["var_ratio"] / 1.1).map(math.log)).abs()
    assert (rows["p_growth"] < alarm / 5).all() and (se_log > 0).all()
    assert any(line.startswith(f"{cell} [mu]: variance") for line in comparison.regressions)


def test_a_new_bias_is_flagged_and_an_unchanged_one_is_not(base, tmp_path):
    _, base_records = base
    cell = "estimator=reparam,objective=gaussian_quadratic"
    new = sweep(tmp_path, seed=1, replace={cell: lambda: Offset(Reparameterization(), 0.2)})
    alarm = ALARM
    comparison = compare_records(base_records, new, false_alarm=alarm)
    t = comparison.table.set_index(["run_dir", "param"])
    row = t.loc[(cell, "mu")]
    # Power: the offset is this many standard errors, above the threshold by the margin.
    margin = power_margin(rate("miss: compare: an offset estimator's bias is flagged"))
    se = new.set_index(["run_dir", "param"]).loc[(cell, "mu"), "bias_se"]
    assert 0.2 / se > 4.6 + margin
    assert row["bias_appeared"] and not row["variance_grew"]
    assert abs(row["bias_shift_se"]) > 10
    assert not t.drop(index=cell, level=0)["bias_appeared"].any()


def test_without_variance_errors_the_f_test_is_used(base, tmp_path):
    # The F-test assumes Gaussian estimates: reparam's on the quadratic are (linear in x).
    _, base_records = base
    new = sweep(tmp_path, seed=1)
    reparam = lambda r: r[r["estimator"] == "reparam"].drop(columns="var_grad_se")  # noqa: E731
    comparison = compare_records(
        reparam(base_records), reparam(new),
        false_alarm=ALARM,
    )  # fmt: skip
    assert (comparison.table["method"] == "F").all()
    assert not comparison.table["variance_grew"].any()


def test_unmatched_cells_are_listed(base, tmp_path):
    _, base_records = base
    new = sweep(tmp_path, seed=1)
    new = new[~new["run_dir"].str.contains("bernoulli")]
    comparison = compare_records(base_records, new)
    assert comparison.only_base == ["estimator=reinforce,objective=bernoulli_threshold [logit]"]
    assert "only in BASE: estimator=reinforce,objective=bernoulli_threshold" in (
        format_comparison(comparison)
    )


def test_command_writes_its_files_and_sets_the_exit_code(base, tmp_path, capsys):
    base_folder, _ = base
    same = tmp_path / "same"
    sweep(same, seed=1)
    assert compare_main([str(base_folder), str(same), "--false-alarm", str(ALARM)]) == 0
    assert (same / "compare.md").is_file() and (same / "compare.csv").is_file()
    assert len(pd.read_csv(same / "compare.csv")) == 5
    worse = tmp_path / "worse"
    cell = "estimator=reinforce,objective=bernoulli_threshold"
    sweep(worse, seed=1, replace={cell: lambda: Scaled(Reinforce(), 2.0)})
    assert compare_main([str(base_folder), str(worse), "--false-alarm", str(ALARM)]) == 1
    assert f"regression: {cell} [logit]: variance" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing", "."], "BASE is not a folder"),
        ([".", "."], "--max-variance-ratio must be > 0"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message, base):
    base_folder, _ = base
    args = [str(tmp_path / a) if a == "missing" else str(base_folder) for a in args]
    extra = ["--max-variance-ratio", "0"] if "ratio" in message else []
    with pytest.raises(UsageError, match=message):
        compare_main([*args, *extra])
