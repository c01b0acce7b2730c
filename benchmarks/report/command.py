"""``gradbench report FOLDER [--format svg,pdf] [--dpi N]``: argument handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import matplotlib

from benchmarks.report.write import write_report

FORMATS = ("png", "svg", "pdf")


def _formats(value: str) -> list[str]:
    formats = [v.strip().lower() for v in value.split(",") if v.strip()]
    for fmt in formats:
        if fmt not in FORMATS:
            raise argparse.ArgumentTypeError(
                f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}"
            )
    return formats


def main(args: Sequence[str]) -> int:
    """Write the report of a folder of runs; 0 on success (bad input raises ``UsageError``)."""
    parser = argparse.ArgumentParser(
        prog="gradbench report",
        description="Tables, figures and an HTML page from a folder of runs, in FOLDER/report/.",
    )
    parser.add_argument("folder", help="a sweep folder, or any folder holding runs")
    parser.add_argument(
        "--format",
        type=_formats,
        action="append",
        default=[],
        help="figure formats besides PNG, which is always written (e.g. --format svg,pdf)",
    )
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    ns = parser.parse_args(list(args))
    matplotlib.use("Agg")  # no display needed; the figures are drawn on Figure objects anyway
    formats = [f for group in ns.format for f in group]
    report = write_report(ns.folder, formats=formats, dpi=ns.dpi)
    for problem in report.problems:
        print(f"gradbench: could not use {problem}", file=sys.stderr)
    print(
        f"report: {report.folder / 'index.html'} ({len(report.figures)} figures, "
        f"{len(report.summary) if report.summary is not None else 0} summary rows, "
        f"{len(report.problems)} unreadable)"
    )
    return 0
