"""The Bonferroni z threshold that every significance call of the harness uses."""

from __future__ import annotations

from statistics import NormalDist


def bonferroni_z(rate: float, n_tests: int) -> float:
    """|z| above which a two-sided z-test rejects, at family-wise ``rate`` over ``n_tests``
    tests (Bonferroni); at least one test is assumed."""
    return NormalDist().inv_cdf(1 - rate / (2 * max(n_tests, 1)))
