"""The harness's own cost: a sweep, its resume and its report, each next to its limit.

    harness sweep        ``gradbench run +sweep=toy_variance`` in a fresh folder, twice, each
                         after one process start. Its limit is that start plus what the
                         cells themselves spent measuring: Σ ``measure_time_s`` and the
                         timing budget (``task.timing_min_run_time`` × cells measured),
                         read from the records the last sweep wrote
    harness resume       the same command again, every cell complete; limit: one process
                         start
    harness report       ``gradbench report`` of that sweep; limit: importing what a report
                         may need (torch, pandas, matplotlib, seaborn and benchmarks)
    harness report many  the report of ``MANY_CELLS`` cells copied from the sweep's own
                         (``many_cells``); the same limit
    harness joblib       ``gradbench run sweep=toy_scale`` (100 cells) under
                         ``hydra/launcher=joblib`` and under ``hydra/launcher=basic``, in
                         turns, each in a fresh folder; its limit is the basic launcher's
                         time, and the target is joblib faster
    harness start        the limits' parts: ``python -c "import torch, benchmarks"`` (one
                         process start) and ``python -c "import torch, pandas, matplotlib,
                         seaborn, benchmarks"``

Every command is a subprocess of the installed ``gradbench`` (next to ``sys.executable``),
so the benchmarks time whatever the harness's code is. The section *gradbench harness* at
the end of the run prints each time against its limit, both measured in the same run (the
minimum over rounds; pytest-benchmark's tables show the rest).

Under ``--benchmark-disable`` (``make bench-quick``) every command runs once, on a 4-cell
part of the sweep and a ``QUICK_MANY_CELLS``-cell copy, and the section still prints what
that one run took.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.collect import scan_runs
from benchmarks.storage import RECORDS

BIN = Path(sys.executable).parent
SWEEP = ["+sweep=toy_variance"]
SCALE = ["sweep=toy_scale"]
# bench-quick: a preset cut to 4 cells (command-line values replace the preset's lists).
QUICK_CELLS = ["objective=gaussian_quadratic", "estimator=reinforce,reparam", "n_samples=1,10"]
MANY_CELLS = 5000
QUICK_MANY_CELLS = 120
START = ["-c", "import torch, benchmarks"]
IMPORTS = ["-c", "import torch, pandas, matplotlib, seaborn, benchmarks"]


@dataclass
class Timings:
    """Wall-clock seconds of every round of each command, kept across the module's tests."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    sweep: Path | None = None
    limit_parts: dict[str, float] = field(default_factory=dict)
    cells: int = 0
    many: int = 0
    quick: bool = False

    def best(self, name: str) -> float:
        return min(self.seconds.get(name, [math.nan]))

    def rows(self) -> list[tuple[str, float, float, str, str]]:
        """(what, seconds, limit seconds, target, how the limit is made up)."""
        start, imports = self.best("start"), self.best("imports")
        beside = self.best("sweep_start")  # timed in turns with the sweep
        measure = self.limit_parts.get("measure", math.nan)
        budget = self.limit_parts.get("timing", math.nan)
        cells = f"{self.cells} cells" + (" (quick)" if self.quick else "")
        return [
            (f"sweep, {cells}", self.best("sweep"), beside + measure + budget, "<= 1.5",
             f"start {beside:.2f} + measure {measure:.2f} + timing {budget:.2f}"),
            (f"resume, {cells}", self.best("resume"), start, "(none)", f"start {start:.2f}"),
            (f"report, {cells}", self.best("report"), imports, "<= limit + 2 s",
             f"imports {imports:.2f}"),
            (f"report, {self.many} cells", self.best("report_many"), imports, "< 30 s",
             f"imports {imports:.2f}"),
            (f"joblib, {4 if self.quick else 100} cells" + (" (quick)" if self.quick else ""),
             self.best("joblib"), self.best("basic"), "< 1", "the basic launcher's time"),
        ]  # fmt: skip


class HarnessSummary:
    """A plugin that prints the harness times against their limits after the run."""

    def __init__(self, timings: Timings):
        self.timings = timings

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        rows = [r for r in self.timings.rows() if math.isfinite(r[1])]
        if not rows:
            return
        tr = terminalreporter
        tr.section("gradbench harness (wall-clock s, minimum over rounds)", sep="-")
        if self.timings.quick:
            tr.write_line("--benchmark-disable: one untimed round each, on the quick sweep")
        tr.write_line(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        tr.write_line(f"{'what':<24} {'time':>7} {'limit':>7} {'ratio':>6}  {'target':<15} limit =")
        for what, seconds, limit, target, parts in rows:
            tr.write_line(
                f"{what:<24} {seconds:>7.2f} {limit:>7.2f} {seconds / limit:>6.2f}  "
                f"{target:<15} {parts}"
            )


@pytest.fixture(scope="module")
def timings(request) -> Timings:
    result = Timings(quick=bool(request.config.getoption("benchmark_disable", False)))
    request.config.pluginmanager.register(HarnessSummary(result), "gradbench-harness")
    return result


def run(args: list[str], cwd: Path) -> None:
    """Run a command to completion; its output is kept only to explain a failure."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def timed(timings: Timings, name: str, args: list[str], cwd: Path):
    """A call that runs ``args`` and keeps its wall-clock time under ``name``."""

    def call():
        begin = time.perf_counter()
        run(args, cwd)
        timings.seconds.setdefault(name, []).append(time.perf_counter() - begin)

    return call


def sweep_command(timings: Timings, folder: Path, preset: list[str] = SWEEP) -> list[str]:
    overrides = [*preset, *QUICK_CELLS] if timings.quick else preset
    return [str(BIN / "gradbench"), "run", *overrides, f"hydra.sweep.dir={folder}"]


def cell_budget(folder: Path) -> tuple[int, float, float]:
    """(cells, Σ measure_time_s, Σ timing_min_run_time over the measured cells) of a sweep."""
    cells = scan_runs(folder).records.drop_duplicates("run_dir")
    measured = cells[cells["status"] == "ok"]
    measure = float(cells["measure_time_s"].fillna(0).sum())
    return len(cells), measure, float(measured["task.timing_min_run_time"].sum())


def many_cells(source: Path, out: Path, n: int) -> Path:
    """``n`` cell folders in ``out`` made from the cells of the sweep in ``source``.

    Cell ``i`` is the source's cell ``i % k`` run again with ``seed = i // k``, written the
    way a sweep over seeds writes it: ``seed=S,<cell>/records.parquet`` with that seed, and
    ``.hydra/`` whose config and overrides say so. The measured numbers are the source's:
    this is data for timing the reader and the report, not a measurement.
    """
    cells = sorted(
        d for d in source.iterdir() if (d / RECORDS).is_file() and (d / ".hydra").is_dir()
    )
    out.mkdir(parents=True)
    shutil.copyfile(source / "multirun.yaml", out / "multirun.yaml")
    for i in range(n):
        seed, k = divmod(i, len(cells))
        cell = out / f"seed={seed},{cells[k].name}"
        shutil.copytree(cells[k] / ".hydra", cell / ".hydra")
        table = pq.read_table(cells[k] / RECORDS)
        column = pa.array([seed] * table.num_rows, pa.int64())
        table = table.set_column(table.schema.get_field_index("seed"), "seed", column)
        pq.write_table(table, cell / RECORDS)
        config = cell / ".hydra" / "config.yaml"
        config.write_text(re.sub(r"(?m)^seed: .*$", f"seed: {seed}", config.read_text()))
        with open(cell / ".hydra" / "overrides.yaml", "a") as handle:
            handle.write(f"- seed={seed}\n")
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("harness")


def demo_sweep(timings: Timings, work: Path) -> Path:
    """The sweep the resume and report benchmarks read: the timed one, or one run now."""
    if timings.sweep is None:
        folder = work / "sweep-untimed"
        run(sweep_command(timings, folder), work)
        timings.sweep = folder
    return timings.sweep


@pytest.mark.parametrize("what", ["start", "imports"])
def test_process_start(benchmark, timings, work, what):
    benchmark.group = "harness start"
    call = timed(timings, what, [sys.executable, *(START if what == "start" else IMPORTS)], work)
    benchmark.pedantic(call, rounds=5, iterations=1)


def test_sweep(benchmark, timings, work):
    benchmark.group = "harness sweep"
    folders = iter(work / f"sweep-{i}" for i in range(100))

    def fresh_folder():  # the VM's speed drifts: the limit's start is timed just before
        timed(timings, "sweep_start", [sys.executable, *START], work)()
        folder = next(folders)
        timings.sweep = folder
        return (), {"folder": folder}

    def sweep(folder):
        timed(timings, "sweep", sweep_command(timings, folder), work)()

    # Two rounds (one quick): its limit's measuring part comes from the last one's records.
    benchmark.pedantic(sweep, setup=fresh_folder, rounds=1 if timings.quick else 2, iterations=1)
    timings.cells, measure, budget = cell_budget(timings.sweep)
    timings.limit_parts.update(measure=measure, timing=budget)
    benchmark.extra_info.update(cells=timings.cells, measure_s=measure, timing_budget_s=budget)


def test_resume(benchmark, timings, work):
    benchmark.group = "harness resume"
    folder = demo_sweep(timings, work)
    benchmark.pedantic(timed(timings, "resume", sweep_command(timings, folder), work), rounds=2)


def test_report(benchmark, timings, work):
    benchmark.group = "harness report"
    folder = demo_sweep(timings, work)
    call = timed(timings, "report", [str(BIN / "gradbench"), "report", str(folder)], work)
    benchmark.pedantic(call, rounds=2, iterations=1)


def test_report_of_many_cells(benchmark, timings, work):
    benchmark.group = "harness report many"
    timings.many = QUICK_MANY_CELLS if timings.quick else MANY_CELLS
    many = many_cells(demo_sweep(timings, work), work / "many", timings.many)
    call = timed(timings, "report_many", [str(BIN / "gradbench"), "report", str(many)], work)
    benchmark.pedantic(call, rounds=1, iterations=1)
    benchmark.extra_info.update(cells=timings.many)


def test_joblib_against_basic(benchmark, timings, work):
    benchmark.group = "harness joblib"
    folders = iter(work / f"scale-{i}" for i in range(100))

    def in_turns():  # the VM's speed drifts: each launcher beside the other
        for launcher in ("joblib", "basic"):
            command = sweep_command(timings, next(folders), SCALE)
            timed(timings, launcher, [*command, f"hydra/launcher={launcher}"], work)()

    benchmark.pedantic(in_turns, rounds=1 if timings.quick else 2, iterations=1)
