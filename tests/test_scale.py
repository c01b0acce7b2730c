"""Sweeps at scale: launchers, resuming after a kill, failed cells, non-finite gradients.

Sweeps here are tiny (a few cells, a few hundred replicates) and run in a temporary
folder; the subprocess tests use the installed ``gradbench`` command as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from benchmarks import run
from benchmarks.cli import main
from benchmarks.config import launcher_threads
from benchmarks.precheck import sweep_folder
from benchmarks.schema import cell_dirname
from benchmarks.storage import RECORDS, records_complete, write_parquet_atomic

GRADBENCH = Path(sys.executable).with_name("gradbench")
FAST = ["task.warmup_steps=2", "task.timing_min_run_time=0.001"]
# Columns that depend on the clock or on how the job was run, not on what it measured.
TIMING = ["time_per_estimate_s", "measure_time_s", "work_normalized_var", "threads"]


def cell_records(sweep: Path) -> dict[str, pd.DataFrame]:
    """Every cell folder of a sweep and its records (raises if one is unreadable)."""
    return {p.parent.name: pd.read_parquet(p) for p in sorted(sweep.glob(f"*/{RECORDS}"))}


def mtimes(sweep: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob(f"*/{RECORDS}")}


# --- naming: the same sweep command finds the same folders ---------------------------


def test_cell_folder_is_named_by_its_overrides_and_kept_safe():
    assert cell_dirname("estimator=reinforce,n_samples=10") == "estimator=reinforce,n_samples=10"
    assert cell_dirname("") == "defaults"
    with_path = cell_dirname("data.path=/data/mnist.npz,estimator=reinforce")
    assert "/" not in with_path and with_path.startswith("data.path=_data_mnist.npz")
    assert with_path != cell_dirname("data.path=_data_mnist.npz,estimator=reinforce")
    long = cell_dirname("objective.logits=[" + ",".join(["0.5"] * 100) + "]")
    assert len(long) <= 160
    assert long != cell_dirname("objective.logits=[" + ",".join(["0.5"] * 101) + "]")


def folder(*overrides: str) -> Path:
    return sweep_folder(OverridesParser.create().parse_overrides(list(overrides)), "config", None)


def test_sweep_folder_depends_on_what_is_measured_not_on_how_it_runs():
    base = ["estimator=reinforce,reparam", "n_samples=1,10"]
    assert folder("sweep=toy_scale") == Path("results/sweeps/toy_scale")
    assert folder(*base) == folder(*reversed(base))
    assert folder(*base) == folder(*base, "hydra/launcher=joblib", "threads=1", "resume=false")
    assert folder(*base) == folder(*base, "hydra.launcher.n_jobs=2")
    assert folder(*base) != folder(*base, "replicates=100")
    assert folder("sweep=toy_scale", "seed=1").name.startswith("toy_scale-")
    assert folder(*base).parent == Path("results/sweeps")


def test_thread_default_shares_the_cpus_between_parallel_jobs(monkeypatch):
    monkeypatch.setattr("benchmarks.config.available_cpus", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    submitit = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
    threads = lambda **launcher: launcher_threads(OmegaConf.create(launcher))  # noqa: E731
    assert threads(_target_=joblib, n_jobs=-1) == 1
    assert threads(_target_=joblib, n_jobs=2) == 4
    assert threads(_target_=joblib, n_jobs=-3) == 1  # 6 workers on 8 CPUs
    assert threads(_target_=joblib, n_jobs=16) == 1
    assert threads(_target_=submitit + "LocalLauncher", cpus_per_task=None) == 1
    assert threads(_target_=submitit + "SlurmLauncher", cpus_per_task=4) == 4
    assert threads(_target_="hydra._internal.core_plugins.basic_launcher.BasicLauncher") is None
    assert launcher_threads(None) is None


# --- nothing lost ---------------------------------------------------------------------


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / RECORDS
    write_parquet_atomic(pd.DataFrame({"status": ["ok"], "config_hash": ["a"]}), path)
    assert path.stat().st_mode & 0o044  # readable by others, as a plain open() would make it
    assert records_complete(path, "a") and not records_complete(path, "b")

    class Unwritable(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(Unwritable({"status": ["new"]}), path)
    assert pd.read_parquet(path)["status"].tolist() == ["ok"]
    assert [p.name for p in tmp_path.iterdir()] == [RECORDS]  # no temporary file left


def test_incomplete_records_are_not_kept(tmp_path):
    path = tmp_path / RECORDS
    assert not records_complete(path, "a")  # missing
    path.write_bytes(b"PAR1 truncated")
    assert not records_complete(path, "a")
    write_parquet_atomic(pd.DataFrame({"status": ["ok"]}), path)  # no fingerprint
    assert not records_complete(path, "a")
    write_parquet_atomic(pd.DataFrame({"status": ["failed: x"], "config_hash": ["a"]}), path)
    assert not records_complete(path, "a")  # failed cells are retried


def sweep(tmp_path, *overrides, replicates=200) -> int:
    return main([
        "run", "-m", *FAST, f"replicates={replicates}", f"hydra.sweep.dir={tmp_path}", *overrides
    ])  # fmt: skip


def test_failed_cell_is_recorded_and_the_sweep_goes_on_then_resume_retries_it(
    tmp_path, monkeypatch, capsys
):
    real = run.run_cell

    def flaky(cfg, estimator_name, objective_name):
        if estimator_name == "reinforce_loo":
            raise RuntimeError("simulated crash\nsecond line")
        return real(cfg, estimator_name, objective_name)

    monkeypatch.setattr(run, "run_cell", flaky)
    grid = ["estimator=reinforce,reinforce_loo,reparam", "n_samples=3"]
    assert sweep(tmp_path, *grid) == 1
    out = capsys.readouterr().out
    assert "3 cells: 1 failed, 2 ok" in out and "1 failed; tracebacks in error.log of" in out
    cells = cell_records(tmp_path)
    assert sorted(cells) == ["estimator=reinforce", "estimator=reinforce_loo", "estimator=reparam"]
    failed = tmp_path / "estimator=reinforce_loo"
    assert cells[failed.name]["status"].tolist() == ["failed: RuntimeError: simulated crash"]
    log = (failed / "error.log").read_text()
    assert "Traceback" in log and "simulated crash" in log
    assert [log.parent for log in tmp_path.glob("*/error.log")] == [failed]

    # The same command again: the complete cells are kept, the failed one is retried.
    monkeypatch.setattr(run, "run_cell", real)
    before = mtimes(tmp_path)
    assert sweep(tmp_path, *grid) == 0
    assert "3 cells: 3 ok (1 run now, 2 kept from an earlier run)" in capsys.readouterr().out
    after = mtimes(tmp_path)
    assert [c for c in after if after[c] != before[c]] == [failed.name]
    assert not (failed / "error.log").exists()


def test_changed_settings_run_again_and_resume_false_reruns_everything(tmp_path):
    cell = tmp_path / "defaults" / RECORDS  # a one-cell sweep: nothing varies to name it by
    assert sweep(tmp_path, "n_samples=3") == 0
    first = cell.stat().st_mtime_ns
    # Same folder, other settings (say, an edited preset): the stale cell runs again.
    assert sweep(tmp_path, "n_samples=3", replicates=300) == 0
    assert pd.read_parquet(cell)["replicates"].tolist() == [300, 300]
    second = cell.stat().st_mtime_ns
    assert second > first
    assert sweep(tmp_path, "n_samples=3", "resume=false", replicates=300) == 0
    assert cell.stat().st_mtime_ns > second


@pytest.mark.parametrize("mode", ["record", "drop"])
def test_nonfinite_gradients_are_counted_and_dropped_only_if_asked(tmp_path, mode):
    # sigma = 1.5e19 in float32: (x - target)^2 overflows to inf for |x| > ~1.8e19, so
    # about a quarter of the single-sample REINFORCE estimates are infinite.
    code = main([
        "run", "estimator=reinforce", "objective.mu=0", "objective.sigma=1.5e19", "n_samples=1",
        "replicates=200", *FAST, f"task.nonfinite={mode}", f"hydra.run.dir={tmp_path}",
    ])  # fmt: skip
    assert code == 0
    records = pd.read_parquet(tmp_path / RECORDS)
    bad = 200 - int(records["n_finite"].iloc[0])
    assert 10 < bad < 100
    status = records["status"].iloc[0]
    assert status.startswith(f"nonfinite: {bad} of 200 replicates")
    if mode == "record":
        assert records["var_grad"].isna().all() and records["mean_grad"].isna().all()
    else:
        assert status.endswith(f"statistics over the {200 - bad} finite ones")
        assert records["var_grad"].notna().all() and records["mean_grad"].notna().all()
        se = (records["var_grad"] / (200 - bad)) ** 0.5
        assert records["bias_se"].tolist() == pytest.approx(se.tolist())


# --- launchers, and a sweep killed part-way -------------------------------------------

GRID = ["estimator=reinforce,reinforce_loo,reparam", "n_samples=1,10"]
SLOW_CELLS = ["replicates=1000", "task.timing_min_run_time=0.02"]  # long enough to kill


def test_sweep_killed_with_sigkill_resumes_with_every_cell_once(tmp_path, capsys, monkeypatch):
    """SIGKILL part-way through a sweep, then the same sweep again, in parallel this time
    (the launcher is not part of a sweep's identity): every cell once, every file whole,
    and the numbers of a serial run of the same grid."""
    args = ["run", "-m", *GRID, *SLOW_CELLS]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [str(GRADBENCH), *args], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed with all it started
    )  # fmt: skip
    sweeps = tmp_path / "results" / "sweeps"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(sweeps.glob(f"*/*/{RECORDS}"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    (folder,) = sweeps.iterdir()
    done_before = mtimes(folder)
    assert 2 <= len(done_before) < 6, done_before
    for cell in done_before:  # whatever was on disk at the kill is whole
        pd.read_parquet(folder / cell / RECORDS)

    monkeypatch.chdir(tmp_path)  # the same command, from the same folder
    assert main([*args, "hydra/launcher=joblib"]) == 0
    out = capsys.readouterr().out
    assert list(sweeps.iterdir()) == [folder]
    cells = cell_records(folder)
    assert len(cells) == 6
    expected = {(e, n) for e in ["reinforce", "reinforce_loo", "reparam"] for n in [1, 10]}
    assert {(r["estimator"][0], int(r["n_samples"][0])) for r in cells.values()} == expected
    assert all(len(r) == 2 for r in cells.values())  # one row per parameter (mu, sigma)
    after = mtimes(folder)
    assert all(after[c] == m for c, m in done_before.items())  # kept, not run again
    assert f"6 cells: 5 ok, 1 skipped ({6 - len(done_before)} run now" in out
    # A file being written at the kill may be left as .records.parquet.*.tmp: never read.
    assert all(p.name.startswith(f".{RECORDS}.") for p in folder.rglob("*.tmp"))
    # joblib (n_jobs=-1: a worker per CPU) gives each job an equal share: one thread.
    resumed = [c for c in cells if c not in done_before]
    assert all((cells[c]["threads"] == 1).all() for c in resumed)

    # The same grid, one cell after another in this process: the same numbers.
    assert main([*args, f"hydra.sweep.dir={tmp_path / 'serial'}"]) == 0
    serial = pd.concat(cell_records(tmp_path / "serial"), names=["cell"]).drop(columns=TIMING)
    pd.testing.assert_frame_equal(serial, pd.concat(cells, names=["cell"]).drop(columns=TIMING))


def test_submitit_local_gives_the_same_results(tmp_path, capsys):
    """submitit's local executor runs the code path of hydra/launcher=submitit_slurm."""
    cell = ["objective=categorical_linear", "estimator=reinforce_loo"]  # one process to start
    frames = {}
    for launcher in ["basic", "submitit_local"]:
        assert sweep(tmp_path / launcher, *cell, f"hydra/launcher={launcher}") == 0
        cells = cell_records(tmp_path / launcher)
        assert list(cells) == ["defaults"]
        frames[launcher] = pd.concat(cells, names=["cell"]).drop(columns=TIMING)
        assert "1 cells: 1 ok" in capsys.readouterr().out
    pd.testing.assert_frame_equal(frames["basic"], frames["submitit_local"])
    assert list((tmp_path / "submitit_local" / ".submitit").iterdir())  # submitit's job logs


def test_cells_that_run_on_a_cluster_look_for_cuda_there_not_on_the_login_node():
    from hydra import compose

    from benchmarks.precheck import check_cell, hydra_context, runs_elsewhere

    with hydra_context():
        slurm = compose("config", ["hydra/launcher=slurm_example", "device=cuda"], True)
        local = compose("config", ["hydra/launcher=joblib", "device=cuda"], True)
    assert runs_elsewhere(slurm.hydra, multirun=True)
    assert not runs_elsewhere(slurm.hydra, multirun=False)  # a single run runs here
    assert not runs_elsewhere(local.hydra, multirun=True)
    check_cell(slurm, remote=True)  # no error, even without CUDA here


def test_a_setting_refused_on_the_node_that_runs_the_cell_is_a_failed_cell(
    tmp_path, monkeypatch, capsys
):
    from benchmarks.config import ConfigError

    def no_cuda_here(cfg, estimator_name, objective_name):
        raise ConfigError("device=cuda but CUDA is not available to this torch")

    monkeypatch.setattr(run, "run_cell", no_cuda_here)
    assert sweep(tmp_path, "n_samples=3") == 1
    (records,) = cell_records(tmp_path).values()
    reason = "ConfigError: device=cuda but CUDA is not available to this torch"
    assert records["status"][0] == f"failed: {reason}"
    assert "1 cells: 1 failed" in capsys.readouterr().out


def test_a_value_given_on_the_command_line_replaces_the_presets_axis(tmp_path, monkeypatch):
    from benchmarks.precheck import check_run

    monkeypatch.chdir(tmp_path)
    one = ["sweep=toy_scale", "objective=gaussian_quadratic", "estimator=reinforce"]
    assert check_run([*one, "n_samples=10"], {}).cells == 1  # as Hydra's sweeper runs it
    plan = check_run([*one, "n_samples=1,2"], {})
    assert plan.cells == 2 and plan.output_dir.name.startswith("toy_scale-")
