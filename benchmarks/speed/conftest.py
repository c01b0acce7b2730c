"""Settings of the speed suite: threads, device, seeds, and the table of target ratios.

Environment variables (the suite has no Hydra config; these play its role):
    GRADBENCH_BENCH_THREADS  torch intra-op threads (default 2, the CI machine's cores)
    GRADBENCH_BENCH_DEVICE   cpu (default) or cuda; on cuda every timed call ends with
                             torch.cuda.synchronize(), so kernels are timed, not queued
    OMP_WAIT_POLICY          PASSIVE unless set: OpenMP worker threads sleep between
                             parallel regions instead of spinning. On a machine whose cores
                             are busy with other work, spinning workers steal the time
                             slices the main thread needs: a 2-thread vae_gaussian gradient
                             took 280 ms spinning and 3.5 ms with PASSIVE here. On an idle
                             machine spinning may save microseconds per parallel region;
                             set OMP_WAIT_POLICY=ACTIVE to time it that way.
"""

from __future__ import annotations

import os
import platform
from collections import defaultdict

# Read by the OpenMP runtime when torch loads it, so it must be set before importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

THREADS = int(os.environ.get("GRADBENCH_BENCH_THREADS", "2"))
DEVICE = torch.device(os.environ.get("GRADBENCH_BENCH_DEVICE", "cpu"))

# (numerator, denominator, target): ratios of times that issue 5 sets targets for. The
# times are each benchmark's minimum over rounds: the round least disturbed by whatever
# else the machine runs (the median mixes that load in).
TARGETS = {
    "loop / batched": ("loop", "batched", ">= 20"),
    "batched / floor": ("batched", "floor", "<= 1.5"),
    "library / plain": ("library", "plain", "<= 1"),
    "model loop / batched": ("loop", "batched", ">= 3"),
    # A task=train step of the 784-400-20 Gaussian VAE against plain torch (test_vae_speed).
    "train / plain": ("library", "plain", "<= 1.3"),
    # Not a target: whether task.compile=true pays per step (opt-in benchmarks).
    "eager / compiled": ("eager", "compiled", "> 1"),
}


# pytest-benchmark's default of up to 1 s per benchmark, over ~250 benchmarks, is too long
# for a routine run; a quarter of a second (still at least 5 rounds) keeps the suite to a
# few minutes. A value given on the command line or in PYTEST_ADDOPTS wins.
DEFAULT_MAX_TIME = "0.25"


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    if hasattr(config.option, "benchmark_max_time") and not any(
        a.startswith("--benchmark-max-time") for a in given
    ):
        config.option.benchmark_max_time = DEFAULT_MAX_TIME


@pytest.fixture(autouse=True)
def _fixed_threads_and_seed():
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    yield


def pytest_benchmark_update_machine_info(config, machine_info):
    cpu = machine_info.setdefault("cpu", {})
    cpu.setdefault("brand_raw", platform.processor())
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = THREADS
    machine_info["device"] = str(DEVICE)
    machine_info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")


def ratio_rows(benchmarks) -> list[tuple[str, str, str, str, float, str]]:
    """Pair each library benchmark with its reference: (what, toy, estimator, size, ratio,
    target), from the ``extra_info`` every benchmark in ``test_speed.py`` carries."""
    times = defaultdict(dict)  # (comparison, toy, estimator, size) -> role -> min time
    for bench in benchmarks:
        info = bench.extra_info
        if "role" not in info or not bench.stats:
            continue
        key = (info["comparison"], info["toy"], info["estimator"], info["size"])
        times[key][info["role"]] = bench.stats.min
    rows = []
    for (comparison, toy, estimator, size), by_role in sorted(times.items()):
        top, bottom, target = TARGETS[comparison]
        if top in by_role and bottom in by_role:
            ratio = by_role[top] / by_role[bottom]
            rows.append((comparison, toy, estimator, size, ratio, target))
    return rows


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    rows = ratio_rows(getattr(session, "benchmarks", []) or [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("gradbench speed targets (ratios of minimum times)", sep="-")
    tr.write_line(f"threads={THREADS} device={DEVICE} torch={torch.__version__}")
    tr.write_line(
        f"{'ratio':<20} {'objective':<20} {'estimator':<18} {'size':<14} {'value':>8}  target"
    )
    for comparison, toy, estimator, size, ratio, target in rows:
        sign, bound = target.split()
        met = {">=": ratio >= float(bound), ">": ratio > float(bound)}.get(
            sign, ratio <= float(bound)
        )
        tr.write_line(
            f"{comparison:<20} {toy:<20} {estimator:<18} {size:<14} {ratio:>8.2f}  "
            f"{target}{'' if met else '  (missed)'}"
        )
