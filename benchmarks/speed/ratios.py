"""The target ratios over several saved runs of the speed suite: median and range.

One run's ratio of two minimum times moves by tens of percent on a shared machine, and
more for the ~10 ms batched cases, whose time depends on how fast the kernel hands out
fresh pages. The median over a few runs is what the README reports:

    .venv/bin/pytest benchmarks/speed --benchmark-json=run1.json   # (repeat: run2, run3)
    python -m benchmarks.speed.ratios run1.json run2.json run3.json

Each file is pytest-benchmark's ``--benchmark-json`` output (or a saved baseline from
``.benchmarks/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from types import SimpleNamespace

from benchmarks.speed.conftest import TARGETS, ratio_rows


def load(path: str) -> list[SimpleNamespace]:
    """The benchmarks of one JSON file, shaped like pytest-benchmark's objects for
    ``ratio_rows``: ``extra_info`` and ``stats.min``."""
    with open(path) as handle:
        data = json.load(handle)
    return [
        SimpleNamespace(extra_info=b["extra_info"], stats=SimpleNamespace(min=b["stats"]["min"]))
        for b in data["benchmarks"]
    ]


def summarise(runs: list[list[SimpleNamespace]]) -> list[tuple]:
    """(comparison, objective, estimator, size, median, low, high, runs, target, met)."""
    ratios = defaultdict(list)
    for benchmarks in runs:
        for comparison, toy, estimator, size, ratio, _ in ratio_rows(benchmarks):
            ratios[(comparison, toy, estimator, size)].append(ratio)
    rows = []
    for (comparison, toy, estimator, size), values in sorted(ratios.items()):
        target = TARGETS[comparison][2]
        median = statistics.median(values)
        sign, bound = target.split()
        met = {">=": median >= float(bound), ">": median > float(bound)}.get(
            sign, median <= float(bound)
        )
        rows.append(
            (comparison, toy, estimator, size, median, min(values), max(values), len(values),
             target, met)
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="--benchmark-json files of the speed suite")
    args = parser.parse_args(argv)
    try:
        runs = [load(path) for path in args.files]
    except (OSError, ValueError, KeyError) as exc:
        print(f"ratios: cannot read {exc}", file=sys.stderr)
        return 2
    rows = summarise(runs)
    if not rows:
        print("ratios: no library/reference pairs in these files", file=sys.stderr)
        return 1
    print(f"{'ratio':<20} {'objective':<20} {'estimator':<18} {'size':<14} "
          f"{'median':>7} {'range':>13} runs  target")  # fmt: skip
    for comparison, toy, estimator, size, median, low, high, n, target, met in rows:
        print(
            f"{comparison:<20} {toy:<20} {estimator:<18} {size:<14} {median:>7.2f} "
            f"{low:>6.2f}–{high:<6.2f} {n:>4}  {target}{'' if met else '  (missed)'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
