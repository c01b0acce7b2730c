"""The one look of every figure: seaborn's paper context on a white grid, and a colour and
marker per estimator that every figure of a report shares (seaborn's values, written out
in ``palettes``: the report does not import seaborn to draw its records)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import matplotlib
from matplotlib.figure import Figure

from benchmarks.report.palettes import COLORBLIND, DARK, SEABORN_STYLE

STYLE = {
    **SEABORN_STYLE,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8.5,
    "figure.titlesize": 10,
}
PANEL = (3.0, 2.4)  # inches per panel
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*", "<", ">"]


def styled(fn: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """Draw ``fn``'s figure inside ``STYLE`` without touching global matplotlib state."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


@functools.cache
def _slots() -> list[tuple]:
    """(colour, marker) pairs in the order estimators take them.

    The ten colour-blind-safe colours, then ten dark ones in an order that puts new hues
    first. The colour-blind palette's fourth colour (vermillion) sits after its fifth
    (purple): the second and fourth are both orange, and the first estimators of a sweep,
    often a method and its close variants, should not look alike.
    """
    colors = COLORBLIND + [DARK[i] for i in (4, 8, 2, 6, 0, 1, 3, 5, 7, 9)]
    pairs = [(color, MARKERS[k % len(MARKERS)]) for k, color in enumerate(colors)]
    return [pairs[k] for k in (0, 1, 2, 4, 3, *range(5, len(pairs)))]


def estimator_styles(names: Iterable[str]) -> dict[str, tuple]:
    """Colour and marker per estimator, in the order of ``names`` (which the dict keeps).

    Figures that get the same ``names`` (a report passes every estimator of its runs)
    draw each estimator alike; beyond twenty estimators the slots repeat.
    """
    slots = _slots()
    return {name: slots[i % len(slots)] for i, name in enumerate(dict.fromkeys(names))}
