"""A sweep through a real Slurm cluster: ``hydra/launcher=submitit_slurm`` and ``sbatch``.

Needs a Slurm controller that answers and an idle node in partition ``cpu``, such as the
one-node cluster of ``scripts/slurm-local.sh start`` (``make test-slurm`` starts it, runs
this file and stops it; docs/cluster.md). Without one the test is skipped, or fails where
``GRADBENCH_SLURM_REQUIRED=1`` says a cluster must be there (CI).

The kill is driven by what Slurm reports, not by timing: the first run submits its job
array held (``sbatch --hold``), the test releases one task, waits until Slurm has finished
it, releases a second, waits until Slurm runs it, and cancels the array (``scancel``): the
running task dies part-way and the held ones never start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.storage import RECORDS
from tests.test_scale import FAST, GRADBENCH, GRID, TIMING, cell_records, mtimes, sweep

pytestmark = pytest.mark.slurm

PARTITION = "cpu"
SLURM = ["hydra/launcher=submitit_slurm", f"hydra.launcher.partition={PARTITION}"]
HOLD = "+hydra.launcher.additional_parameters.hold=true"  # sbatch --hold
WAIT_S = 300  # for any one thing Slurm is asked to do; a toy task takes seconds


def slurm_missing() -> str | None:
    """Why no sweep can go through Slurm here, or None if one can."""
    if shutil.which("sinfo") is None:
        return "no Slurm here (no sinfo); scripts/slurm-local.sh start sets one up"
    try:
        # An unreachable controller makes sinfo retry for about 10 s: 5 s is enough.
        out = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-t", "idle,mixed", "-o", "%n"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "the Slurm controller does not answer (scripts/slurm-local.sh start)"
    if out.returncode or not out.stdout.strip():
        return f"no idle Slurm node in partition {PARTITION} (scripts/slurm-local.sh start)"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = slurm_missing()
    if reason and os.environ.get("GRADBENCH_SLURM_REQUIRED") == "1":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def our_tasks(workdir: Path) -> dict[tuple[str, int], str]:
    """The array tasks Slurm still lists for jobs submitted from ``workdir``: state by
    (array job id, task index)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%F|%K|%T|%Z"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines()]
    return {
        (job, int(task)): state
        for job, task, state, cwd in rows
        if task.isdigit() and Path(cwd).resolve() == workdir.resolve()
    }


def wait_for(what: str, found, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``found()`` until it returns something true (while ``proc``, the sweep, runs)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"the sweep ended (exit {proc.returncode}) before {what}:\n" + log.read_text()
            )
        time.sleep(0.2)
    pytest.fail(f"no {what} after {WAIT_S} s" + (f":\n{log.read_text()}" if log else ""))


def slurm_command(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=60)


def test_a_sweep_through_slurm_killed_with_scancel_resumes_with_the_basic_launchers_records(
    slurm, tmp_path
):
    folder = tmp_path / "sweep"
    args = ["run", "-m", *GRID, *FAST, "replicates=200", f"hydra.sweep.dir={folder}", *SLURM]
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(GRADBENCH), *args, HOLD], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        held = wait_for("held job array in squeue", lambda: our_tasks(tmp_path), proc, log)
        # One array of two or more tasks (cells may be batched, but not all into one task).
        assert len({j for j, _ in held}) == 1 and len(held) >= 2, f"tasks in squeue: {held}"
        assert set(held.values()) == {"PENDING"}, held
        ((job, first), (_, second), *_) = sorted(held)

        slurm_command("scontrol", "release", f"{job}_{first}")
        # Records on disk and the task out of the queue: Slurm is done with it.
        wait_for(f"records of task {job}_{first}",
                 lambda: mtimes(folder) and (job, first) not in our_tasks(tmp_path),
                 proc, log)  # fmt: skip
        slurm_command("scontrol", "release", f"{job}_{second}")
        # Running now, or already finished: either way the held rest never starts.
        wait_for(f"start of task {job}_{second}",
                 lambda: our_tasks(tmp_path).get((job, second)) in ("RUNNING", None),
                 proc, log)  # fmt: skip
        slurm_command("scancel", job)
        # submitit learns from sacct that a task was cancelled and the command fails, in one
        # line and the summary of what is complete, not a traceback.
        assert proc.wait(timeout=WAIT_S) != 0, log.read_text()
        said = log.read_text()
        assert "a launcher task ended without finishing" in said, said
        assert "Traceback" not in said and "records under:" in said, said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        jobs = {j for j, _ in our_tasks(tmp_path)}
        if jobs:
            subprocess.run(["scancel", *jobs], check=False, timeout=60)
    queue_empty = lambda: not our_tasks(tmp_path)  # noqa: E731
    wait_for("empty queue after scancel", queue_empty)  # a cancelled task may be completing
    done_before = mtimes(folder)
    assert 1 <= len(done_before) < 6, done_before
    for cell in done_before:  # whatever was on disk at the kill is whole
        pd.read_parquet(folder / cell / RECORDS)

    # The same command again, not held: the cells that are complete are kept.
    resumed = subprocess.run(
        [str(GRADBENCH), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    kept = len(done_before)
    assert f"6 cells: 5 ok, 1 skipped ({6 - kept} run now, {kept} kept" in resumed.stdout
    after = mtimes(folder)
    assert all(after[c] == m for c, m in done_before.items())  # not run again
    wait_for("empty queue after the resumed sweep", queue_empty)
    assert list((folder / ".submitit").iterdir())  # the job logs, where slurm_example.yaml says

    # The same grid through the basic launcher, in this process: the same records.
    cells = cell_records(folder)
    assert len(cells) == 6
    assert sweep(tmp_path / "basic", *GRID, "hydra/launcher=basic") == 0
    basic = pd.concat(cell_records(tmp_path / "basic"), names=["cell"]).drop(columns=TIMING)
    pd.testing.assert_frame_equal(basic, pd.concat(cells, names=["cell"]).drop(columns=TIMING))
