"""``gradbench compare``: two sweeps matched cell by cell, variance growth and new bias flagged.

The sweeps are built with ``measure_variance`` (the path a variance cell takes) into cell
folders, as a sweep lays them out. Seeds are fixed; the false-alarm rate each comparison
runs at is read from the suite's budget (tests/stats.py), and each negative control checks
its power before it asserts the alarm.
"""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest
import torch

from benchmarks.compare import compare_records, format_comparison
from benchmarks.compare import main as compare_main
from benchmarks.errors import UsageError
from benchmarks.measure import measure_variance
from benchmarks.objectives import BernoulliThreshold, GaussianQuadratic
from benchmarks.significance import bonferroni_z
from estimators import Estimator, Reinforce, Reparameterization
from tests.stats import Scaled, power_margin, rate

F64 = {"dtype": torch.float64}
REPLICATES = 4000
# Eight comparisons below assert that no false alarm is raised (on the rows they leave
# unchanged), and each tests two things at the rate it is given, variance growth and a new
# bias: each runs at a sixteenth of the family's rate.
ALARM = rate("compare: a re-run with a new seed raises no alarm") / 16


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
    assert 0.2 / se > bonferroni_z(alarm, len(comparison.table)) + margin
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


# -- end to end: two versions of a user's estimator, swept and compared by the CLI -------

VERSION_1 = '''
from estimators import LeaveOneOut, Reinforce


class Mine(Reinforce):
    """Version 1: REINFORCE with a leave-one-out baseline."""

    def __init__(self):
        super().__init__(LeaveOneOut())
'''
VERSION_2 = '''
from estimators import Reinforce


class Mine(Reinforce):
    """Version 2: the baseline is gone, and the variance grows."""
'''


def test_two_versions_swept_and_compared_through_the_command_line(
    tmp_path, monkeypatch, capsys, request
):
    """The researcher's loop: sweep version 1 of an estimator of one's own against a
    shipped one, sweep it again with a new seed (no alarm), edit the estimator, sweep
    version 2 with one more toy, and compare: exit 1, the grown variance named, the new
    toy's cells listed as unmatched."""
    from benchmarks.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the module changes in between
    # The module stays imported in this process: its own name, forgotten afterwards.
    request.addfinalizer(lambda: sys.modules.pop("my_compared", None))
    (tmp_path / "my_compared.py").write_text(VERSION_1)
    (tmp_path / "conf" / "estimator").mkdir(parents=True)
    (tmp_path / "conf" / "estimator" / "mine.yaml").write_text("_target_: my_compared.Mine\n")
    toys = "gaussian_quadratic,bernoulli_threshold"

    def sweep(folder, *extra, objectives=toys):
        code = main(["run", "-m", "--config-dir", "conf", "estimator=mine,reinforce",
                     f"objective={objectives}", "n_samples=4", "replicates=2000",
                     "dtype=float64", "task.timing_min_run_time=0.001",
                     f"hydra.sweep.dir={folder}", *extra])  # fmt: skip
        assert code == 0

    sweep("v1")
    sweep("v1_seed1", "seed=1")
    capsys.readouterr()
    # Both tests (variance, bias) run at the rate given: each at half of ALARM.
    alarm = str(ALARM / 2)
    assert main(["compare", "v1", "v1_seed1", "--false-alarm", alarm]) == 0
    out = capsys.readouterr().out
    assert "6 rows compared, 0 regressions" in out and "only in" not in out
    same = pd.read_csv(tmp_path / "v1_seed1" / "compare.csv")
    assert len(same) == 6 and not same["variance_grew"].any() and not same["bias_appeared"].any()
    assert set(same["estimator"]) == {"mine", "reinforce"}
    assert "var ratio [CI]" in (tmp_path / "v1_seed1" / "compare.md").read_text()

    (tmp_path / "my_compared.py").write_text(VERSION_2)
    del sys.modules["my_compared"]  # as a new process would, import version 2
    sweep("v2", "seed=1", objectives=f"{toys},categorical_linear")
    capsys.readouterr()
    assert main(["compare", "v1", "v2", "--false-alarm", alarm, "--out", "cmp"]) == 1
    captured = capsys.readouterr()
    cell = "estimator=mine,objective=bernoulli_threshold"
    assert f"regression: {cell} [logit]: variance ×" in captured.err
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert len(table) == 6 and not table["bias_appeared"].any()
    grew = table[table["variance_grew"]]
    assert set(grew["estimator"]) == {"mine"} and cell in set(grew["run_dir"])
    # Power, judged from this draw: the growth's z against the 1.1 threshold (its standard
    # error read off the 95% interval) lies above the one-sided cut by the margin and one
    # more for its own noise.
    row = table.set_index("run_dir").loc[cell]
    se = math.log(row["ci_high"] / row["ci_low"]) / (2 * 1.959964)
    cut = power_margin(float(alarm) / len(table))
    # Two tests share the family: tests/test_compare.py and tests/test_plugins.py.
    margin = power_margin(rate("miss: compare: a variance increase through the CLI is flagged") / 2)
    assert (math.log(row["var_ratio"]) - math.log(1.1)) / se > cut + margin + 1
    unmatched = "only in NEW: estimator=mine,objective=categorical_linear [logits[0]]"
    assert unmatched in captured.out
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert unmatched in markdown and "variance grew" in markdown
    assert not (tmp_path / "v2" / "compare.csv").exists()  # --out chose the folder
