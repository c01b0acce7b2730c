"""``gradbench report DIR``: tables and figures from a folder of runs.

Reads results, never runs estimators. ``benchmarks.collect.scan_runs`` gathers every
``records.parquet`` (and ``train.parquet``) below DIR into tidy frames, one row per (cell,
parameter), with each run's config joined as dotted columns (``objective.sigma``). The
modules, in the order the data flows through them:

- ``frames``: completed cells, pooling over seeds, settings held fixed, display orders;
- ``tables``: ``summary_table`` (``summary.csv``) and ``summary.md``;
- ``style`` and ``panels``: the one figure style, colours per estimator, panel layout;
- ``figures``: pure functions ``frame -> matplotlib Figure`` (``None`` without data);
- ``html``: ``index.html``, which opens without a server;
- ``write``: ``write_report``, the whole ``DIR/report/`` folder;
- ``command``: ``main(args)``, the ``gradbench report`` command line.
"""

from benchmarks.report.command import main
from benchmarks.report.figures import (
    fig_bias,
    fig_time_per_estimate,
    fig_train_objective_vs_time,
    fig_train_variance,
    fig_variance_vs_n_samples,
    fig_variance_vs_parameter,
    fig_work_normalized_variance,
)
from benchmarks.report.frames import (
    completed,
    hold_fixed,
    not_measured,
    objective_parameters,
    ordered_estimators,
    ordered_objectives,
    pool,
    training_records,
    variance_band,
    variance_records,
)
from benchmarks.report.html import index_html
from benchmarks.report.style import STYLE, estimator_styles, styled
from benchmarks.report.tables import (
    FAMILY_WISE_RATE,
    bias_threshold,
    display_table,
    summary_markdown,
    summary_table,
    threshold_sentence,
    training_table,
)
from benchmarks.report.write import REPORT_DIR, FigureSpec, Report, figure_specs, write_report

__all__ = [
    "FAMILY_WISE_RATE",
    "REPORT_DIR",
    "STYLE",
    "FigureSpec",
    "Report",
    "bias_threshold",
    "completed",
    "display_table",
    "estimator_styles",
    "fig_bias",
    "fig_time_per_estimate",
    "fig_train_objective_vs_time",
    "fig_train_variance",
    "fig_variance_vs_n_samples",
    "fig_variance_vs_parameter",
    "fig_work_normalized_variance",
    "figure_specs",
    "hold_fixed",
    "index_html",
    "main",
    "not_measured",
    "objective_parameters",
    "ordered_estimators",
    "ordered_objectives",
    "pool",
    "styled",
    "summary_markdown",
    "summary_table",
    "threshold_sentence",
    "training_records",
    "training_table",
    "variance_band",
    "variance_records",
    "write_report",
]
