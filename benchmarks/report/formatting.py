"""Numbers and seconds as the report's tables and figure titles print them."""

from __future__ import annotations

import math

import numpy as np


def fmt(value, digits: int = 3) -> str:
    """``digits`` significant digits for floats, ``–`` for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}"
    return str(value)


def format_number(value) -> str:
    """A setting's value: whole floats without a decimal point (``sigma = 2``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return fmt(value, 4)


def format_z(z: float) -> str:
    if not math.isfinite(z):
        return "–"
    return f"{z:.2g}" if abs(z) < 10 else f"{z:.0f}"


def format_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"
