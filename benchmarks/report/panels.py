"""Layout shared by the figures: a grid of panels, outer axis labels, one legend, a title."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from benchmarks.report.frames import ordered_objectives
from benchmarks.report.style import PANEL


def grid(n: int, max_cols: int = 4) -> tuple[Figure, list]:
    """A figure with ``n`` panels, at most ``max_cols`` a row; unused cells removed."""
    ncols = min(n, max_cols)
    nrows = math.ceil(n / ncols)
    width = max(PANEL[0] * ncols + 1.4, 5.5)
    fig = Figure(figsize=(width, PANEL[1] * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def label(axes: list, xlabel: str, ylabel: str) -> None:
    """Axis labels on the outer panels only: y on the first column, x on the lowest row."""
    n = len(axes)
    for i, ax in enumerate(axes):
        spec = ax.get_subplotspec()
        ncols = spec.get_gridspec().ncols
        ax.set_ylabel(ylabel if spec.is_first_col() else "")
        ax.set_xlabel(xlabel if i + ncols >= n else "")


def panel_title(objective: str, param: str | None = None) -> str:
    return objective if param is None else f"{objective}\n∂/∂{param}"


def panels(frame: pd.DataFrame, keys) -> list:
    """``groupby(keys)`` groups, objectives in ``ordered_objectives`` order, the rest
    (parameters) in order of appearance."""
    groups = list(frame.groupby(keys, sort=False))
    rank = {name: i for i, name in enumerate(ordered_objectives(frame))}
    first = (lambda key: key[0]) if isinstance(keys, list) else (lambda key: key)
    return sorted(groups, key=lambda group: rank[str(first(group[0]))])


def finish(
    fig: Figure,
    axes: list,
    title: str,
    notes: Sequence[str] = (),
    legend_title: str | None = None,
    order: Sequence[str] = (),
) -> Figure:
    """One legend for all panels and the title, with ``notes`` (settings held fixed).

    Legend entries named in ``order`` (the estimators) come first, in that order; the
    others (guide lines) follow in the order drawn; n_samples labels sort as numbers.
    """
    handles, labels = {}, []
    for ax in axes:
        _drop_unlabelled_minor_ticks(ax)
        _fix_title_height(ax)
        _spines_out_of_layout(ax)
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in handles:
                handles[text] = handle
                labels.append(text)
    rank = {name: i for i, name in enumerate(order)}
    labels.sort(key=lambda text: (text not in rank, rank.get(text, 0)))
    if all(text.lstrip("-").isdigit() for text in labels):  # n_samples
        labels.sort(key=int)
    if handles:
        fig.legend(
            [handles[text] for text in labels],
            labels,
            loc="outside right center",
            title=legend_title,
            frameon=False,
        )
    if notes:
        title += "\n" + ", ".join(notes)
    fig.suptitle(title)
    return fig


def line_with_band(ax, x, y, lo, hi, color, marker, name) -> None:
    ax.plot(x, y, marker=marker, color=color, label=name, lw=1.3, ms=4)
    if lo is not None:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def categorical(ax, names, values, styles) -> None:
    """A single setting: one point per estimator along the x axis."""
    for i, name in enumerate(names):
        color, marker = styles[name]
        ax.plot([i], [values[name]], marker=marker, color=color, ls="", ms=6, label=name)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(names) - 0.4)


def _drop_unlabelled_minor_ticks(ax) -> None:
    """Remove an axis's minor ticks when its formatter labels none of them.

    ``STYLE`` (seaborn's whitegrid) draws neither tick marks nor minor grid lines, so such
    ticks change no pixel, but laying out and drawing them (a log axis has eight a decade)
    is most of the time a report takes. Short log axes keep theirs: those carry labels
    such as 2×10⁻³.
    """
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling: the labels depend on the limits
    for axis in (ax.xaxis, ax.yaxis):
        locs = axis.get_minor_locator()()
        if len(locs) and not any(axis.get_minor_formatter().format_ticks(locs)):
            axis.set_minor_locator(NullLocator())


def _fix_title_height(ax) -> None:
    """Keep the title at the top of the panel where nothing could push it up.

    Matplotlib places a title automatically to clear a y offset text (``1e-5`` above the
    axis), measuring every tick label of the panel again for it, in each layout pass and
    the draw. Only a ``ScalarFormatter`` writes an offset text, and the x axis is at the
    bottom, so on any other y axis (log, named ticks) the title stays at the top anyway.
    """
    if not isinstance(ax.yaxis.get_major_formatter(), ScalarFormatter):
        ax.set_title(ax.get_title(), y=1.0)


def _spines_out_of_layout(ax) -> None:
    """Leave the spines out of the layout's measurements where no tick mark is drawn.

    A spine's extent for the layout is the panel's edge plus the length of its tick marks,
    found by computing the axis's ticks again, four spines a panel in every layout pass.
    ``STYLE`` draws no tick marks, so that extent is the panel's edge, which the layout
    counts anyway.
    """
    ticks = [*ax.xaxis.majorTicks[:1], *ax.xaxis.minorTicks[:1]]
    ticks += [*ax.yaxis.majorTicks[:1], *ax.yaxis.minorTicks[:1]]
    if any(t.tick1line.get_visible() or t.tick2line.get_visible() for t in ticks):
        return
    for spine in ax.spines.values():
        spine.set_in_layout(False)
