"""``gradbench report DIR``: tables and figures from a folder of runs (issue 4, in progress)."""

from __future__ import annotations

from collections.abc import Sequence


def main(args: Sequence[str]) -> int:
    raise NotImplementedError("gradbench report is not implemented yet")
