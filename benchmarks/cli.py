"""``gradbench run | report | list | verify | compare``: the command line.

``run`` hands its arguments to the pre-check (``benchmarks.precheck``), which composes and
builds every cell of the run or sweep, then to Hydra (``benchmarks.run``), and prints the
summary of a sweep from the folder the pre-check planned. Bad input is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import os

# OpenMP threads that wait for work by sleeping, not spinning: on a machine where other jobs
# share the cores (a cluster node, a laptop), spinning threads steal the time the busy
# ones need. Set before torch loads OpenMP; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.errors import UsageError  # noqa: E402

# Flags that make Hydra print something instead of running jobs: nothing to check.
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info")


def summarise(folder: Path, started: float | None = None) -> int:
    """Print a sweep's table of variances and cell counts; return the number of failed cells.

    Cells whose records are older than ``started`` (a time.time()) were kept from an
    earlier run of the same sweep.
    """
    from benchmarks.collect import collect_records
    from benchmarks.summaries import sweep_summary

    records = collect_records(folder)
    if records.empty:
        print(f"gradbench: no records under {folder}", file=sys.stderr)
        return 1
    text, failed = sweep_summary(records, folder, started)
    print(text)
    return failed


def cmd_run(args: Sequence[str]) -> int:
    from benchmarks.finished import config_dir_of, finished, split_args

    overrides, flags, multirun = split_args(args)
    info = any(flag in flags for flag in INFO_FLAGS)
    done = None if info else finished(args, config_dir_of(flags))
    if done is not None:  # every cell complete: nothing to check or launch
        folder, cells = done
        print(f"gradbench: {cells} cells into {folder}", file=sys.stderr)
        if sys.stderr.isatty():  # the sweeper's progress line, every cell kept
            line = f"cells {cells}/{cells}: {cells} kept, 0 failed"
            print(f"\r\x1b[Kgradbench: {line}", file=sys.stderr)
        return 1 if summarise(folder, time.time()) else 0

    with heavy_imports():
        from benchmarks.precheck import ComposedAhead, check_run, forget_plan, normalise_overrides

        overrides = normalise_overrides(overrides)
        # The check's compositions are made by a second process while this one imports torch.
        ahead = None if info else ComposedAhead(overrides, flags, multirun)
        from benchmarks import run

    plan = None
    if not info:
        plan = check_run(overrides, flags, multirun, workers=True, ahead=ahead)
        overrides = [*overrides, *plan.added]
        if plan.multirun:
            print(f"gradbench: {plan.cells} cells into {plan.output_dir}", file=sys.stderr)

    hydra_args = [*(["-m"] if multirun else []), *overrides]
    for flag, value in flags.items():
        hydra_args += [flag, value] if value else [flag]
    sys.argv = ["gradbench run", *hydra_args]
    started = time.time()
    try:
        run.main()
    finally:
        forget_plan()
        if plan is not None and plan.workers:  # where the sweeper did not end them
            plan.workers.stop()
    if plan is not None and plan.multirun:
        if plan.interrupted:
            print(f"gradbench: {plan.interrupted}", file=sys.stderr)
        failed = summarise(plan.output_dir, started)
        if not plan.interrupted:
            remember_sweep(args, plan)
        return 1 if failed or plan.interrupted else 0
    return 0


def remember_sweep(args: Sequence[str], plan) -> None:
    """Note a sweep whose every cell the pre-check composed (``benchmarks.finished``), so
    that running the same command again once every cell is complete is only its summary."""
    from benchmarks.finished import remember

    if not (plan.cell_folders and plan.resume and len(plan.hashes) == plan.cells):
        return
    cells = {}
    for key, fingerprint in plan.hashes.items():
        folder = plan.cell_folder(key)
        if folder is None:
            return
        cells[str(folder.relative_to(plan.output_dir))] = fingerprint
    remember(args, plan.inputs, plan.output_dir, cells)


def cmd_list(args: argparse.Namespace) -> int:
    from benchmarks.precheck import compatibility

    table = compatibility(args.config_dir)
    print("estimators:", ", ".join(table.columns))
    print("objectives:", ", ".join(table.index))
    print("\nwhich estimator applies to which objective (at n_samples=10; some estimators")
    print("also restrict n_samples, e.g. reinforce_loo needs at least 2):")
    print(table.reset_index().to_string(index=False))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from benchmarks.precheck import build_estimator_option
    from benchmarks.verify import format_certificate, verify, write_certificate

    if args.replicates < 2:
        raise UsageError(f"--replicates must be at least 2, got {args.replicates}")
    if not 0 < args.false_fail < 1:
        raise UsageError(f"--false-fail must be in (0, 1), got {args.false_fail}")
    name, estimator = build_estimator_option(args.overrides, args.config_dir)
    out = Path(
        args.out or Path("results") / "verify" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{name}"
    )
    show = sys.stderr.isatty()
    cert = verify(
        estimator, name, replicates=args.replicates, false_fail=args.false_fail,
        progress=(lambda cell: print(f"  {cell}", file=sys.stderr)) if show else None,
    )  # fmt: skip
    print(format_certificate(cert))
    md, js = write_certificate(cert, out)
    for line in cert.failures:
        print(f"gradbench verify: claim fails: {line}", file=sys.stderr)
    print(f"certificate: {md} and {js}")
    return 0 if cert.ok else 1


def cmd_compare(args: Sequence[str]) -> int:
    from benchmarks.compare import main as compare_main

    return compare_main(args)


def cmd_report(args: Sequence[str]) -> int:
    with heavy_imports():
        from benchmarks.report import main as report_main

    return report_main(args)


@contextlib.contextmanager
def heavy_imports():
    """In the console script, a command's heavy imports (torch, pandas, matplotlib, Hydra)
    with the collector paused, then frozen with what they loaded. What an import makes
    lives as long as the process: the collector's passes during the imports free next to
    nothing, and once it is frozen its full passes need not walk it again."""
    if not _whole_process:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="gradbench",
        description="Benchmark Monte Carlo gradient estimators: variance, bias and cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # run and report parse their own arguments (Hydra's, the report's).
    sub.add_parser(
        "run", help="run one cell or a sweep: gradbench run [-m] [key=value ...]", add_help=False
    )
    listing = sub.add_parser("list", help="estimators, objectives and which pairs apply")
    listing.add_argument(
        "--config-dir", "-cd", metavar="DIR", help="also list the options of a config folder"
    )
    sub.add_parser(
        "report",
        help="tables and figures from a folder of runs: gradbench report DIR",
        add_help=False,
    )
    checking = sub.add_parser(
        "verify", help="certify an estimator on the exact-answer suite: verify estimator=NAME"
    )
    checking.add_argument("overrides", nargs="+", metavar="estimator=NAME [estimator.key=value]")
    checking.add_argument("--config-dir", "-cd", metavar="DIR", help="a config folder to add")
    checking.add_argument("--replicates", type=int, default=20_000)
    checking.add_argument("--false-fail", type=float, default=1e-3, help="family-wise rate")
    checking.add_argument("--out", metavar="DIR", help="folder for verify.md and verify.json")
    sub.add_parser(
        "compare",
        help="accuracy changes between two sweeps: gradbench compare BASE NEW",
        add_help=False,
    )
    try:
        if argv and argv[0] == "run":
            return cmd_run(argv[1:])
        if argv and argv[0] == "report":
            return cmd_report(argv[1:])
        if argv and argv[0] == "compare":
            return cmd_compare(argv[1:])
        args = parser.parse_args(argv)
        if args.command == "verify":
            return cmd_verify(args)
        return cmd_list(args)
    except UsageError as exc:
        print(f"gradbench: error: {exc}", file=sys.stderr)
        return 2


# Whether this command is the whole process (the console script), not a call of ``main``
# inside a longer one (a test session), where frozen objects would never be freed.
_whole_process = False


def command() -> int:
    """The ``gradbench`` console script: ``main`` on the command line, then a quick exit.

    The collector is paused while ``run`` or ``report`` makes its heavy imports and frozen
    after them (``heavy_imports``), and frozen again on the way out: its passes, during the
    command and at the interpreter's exit, otherwise walk every object that torch, pandas,
    matplotlib and Hydra made. Nothing of gradbench's waits for the collector at exit
    (records are written, closed and renamed into place before a command returns, and
    ``atexit`` handlers still run).
    """
    global _whole_process
    _whole_process = True
    try:
        return main()
    finally:
        _whole_process = False
        gc.freeze()


def console() -> None:
    """The ``gradbench`` console script: ``command``, and the process ends (``exit_now``).
    A reader that went away (``gradbench list | head -1``) ends it quietly, exit code 1,
    as Python's documentation advises for ``BrokenPipeError``."""
    try:
        code = command()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing to flush to
        code = 1
    exit_now(code)


def exit_now(code: int) -> None:
    """End the process with ``code``, as ``sys.exit`` does less the teardown of every module
    (with torch loaded, a few tenths of a second spent freeing what is about to go anyway).

    What else an exit does is done first: the ``atexit`` handlers run (logging's flush and
    close, multiprocessing's joins of its processes) and stdout and stderr are flushed. A
    process with a thread still running (not a daemon) exits the usual way, after it.
    """
    import atexit
    import contextlib
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
