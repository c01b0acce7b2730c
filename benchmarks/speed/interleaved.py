"""Batched path vs floor, timed in alternation: the steadiest measure of that ratio here.

pytest-benchmark times one benchmark after another. On this shared machine the time of
the 10⁶-sample cases depends on how fast the kernel hands out fresh pages, which drifts
over minutes, so one run's batched/floor ratio moves between 0.4 and 2 (README, *Speed*).
Here the library's ``replicate_gradients`` and the fused floor of
``benchmarks/speed/reference.py`` run alternately, round after round, on the same
machine state, and each side's minimum over the rounds is compared:

    python -m benchmarks.speed.interleaved                       # every pair, R=N=1000
    python -m benchmarks.speed.interleaved --estimators reinforce_optimal --rounds 50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the suite (conftest.py)

import torch  # noqa: E402

from benchmarks.speed import reference  # noqa: E402
from benchmarks.speed.cases import (  # noqa: E402
    ESTIMATORS,
    TOY_NAMES,
    make_estimator,
    make_toy,
    samples_for,
)
from estimators import estimate_gradient, replicate_gradients  # noqa: E402

TARGET = 1.5


def interleaved_ratio(toy, estimator, *, samples, replicates, rounds, device) -> tuple:
    """(library min s, floor min s, ratio) over ``rounds`` alternating calls of each;
    ``samples`` draws per replicate (``samples / K`` estimates of a multi-sample one)."""
    samples = samples_for(estimator, samples)
    objective = make_toy(toy, device)
    est = make_estimator(estimator)
    for _ in range(10):  # warm-up, as the suite: warms moving averages
        estimate_gradient(est, objective, objective.theta, 10)
    baseline = reference.baseline_value(est, objective.theta)
    sides = (
        lambda: replicate_gradients(est, objective, objective.theta, samples, replicates),
        lambda: reference.fused_replicates(
            toy, estimator, objective.theta, samples, replicates, baseline
        ),
    )
    best = [float("inf"), float("inf")]
    for _ in range(rounds + 1):  # the first round is an untimed warm-up
        for i, side in enumerate(sides):
            start = time.perf_counter()
            side()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            best[i] = min(best[i], elapsed) if _ else best[i]
    return best[0], best[1], best[0] / best[1]


def measure_pairs(
    toys, estimators, *, samples, replicates, rounds, device
) -> list[tuple[str, str, float, float, float]]:
    """(toy, estimator, library min s, floor min s, ratio) for every pair with a floor."""
    rows = []
    for toy in toys:
        for estimator in estimators:
            if not reference.has_reference(toy, estimator):
                continue
            torch.manual_seed(0)
            measured = interleaved_ratio(
                toy, estimator, samples=samples, replicates=replicates, rounds=rounds,
                device=device,
            )  # fmt: skip
            rows.append((toy, estimator, *measured))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", nargs="*", default=TOY_NAMES)
    parser.add_argument("--estimators", nargs="*", default=ESTIMATORS)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not any(reference.has_reference(t, e) for t in args.toys for e in args.estimators):
        print("interleaved: no toy/estimator pair here has a floor", file=sys.stderr)
        return 2
    print(f"threads={args.threads} device={device} torch={torch.__version__} "
          f"R={args.replicates} N={args.samples} rounds={args.rounds}")  # fmt: skip
    print(f"{'objective':<20} {'estimator':<18} {'batched ms':>10} {'floor ms':>9} {'ratio':>6}")
    rows = measure_pairs(
        args.toys, args.estimators, samples=args.samples, replicates=args.replicates,
        rounds=args.rounds, device=device,
    )  # fmt: skip
    for toy, estimator, lib, floor, ratio in rows:
        missed = "" if ratio <= TARGET else f"  (missed: target <= {TARGET})"
        times = f"{lib * 1e3:>10.3f} {floor * 1e3:>9.3f}"
        print(f"{toy:<20} {estimator:<18} {times} {ratio:>6.2f}{missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
