"""``write_report``: collect the runs under a folder and write ``FOLDER/report/``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.collect import REPORT_MARKER, Problem, scan_runs
from benchmarks.errors import UsageError
from benchmarks.report import bounds, figures
from benchmarks.report.frames import (
    objective_parameters,
    ordered_estimators,
    training_records,
    variance_records,
)
from benchmarks.report.gallery import copy_pictures
from benchmarks.report.html import index_html
from benchmarks.report.style import estimator_styles
from benchmarks.report.tables import summary_markdown, summary_table
from benchmarks.storage import write_parquet_atomic

REPORT_DIR = "report"
# Metadata that would change on every save (dates) is left out, so reports are reproducible.
SAVE_METADATA = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


@dataclass
class FigureSpec:
    name: str
    caption: str
    draw: Callable[[], Figure | None]


def figure_specs(records: pd.DataFrame, train: pd.DataFrame) -> list[FigureSpec]:
    """Every figure the report knows, in page order; each may turn out to have no data.

    All of them share one colour and marker per estimator, over the records and the
    training logs together.
    """
    styles = estimator_styles([*ordered_estimators(records), *ordered_estimators(train)])
    during = training_records(records)
    records = variance_records(records)

    def spec(name: str, caption: str, figure, frame: pd.DataFrame, *args) -> FigureSpec:
        return FigureSpec(name, caption, functools.partial(figure, frame, *args, styles=styles))

    specs = [
        spec(
            "variance_vs_n_samples",
            "Variance of one gradient estimate against the number of draws it uses (log-log). "
            "Bands: ≈95% normal-theory interval of each variance; dotted: a 1/n slope.",
            figures.fig_variance_vs_n_samples,
            records,
        )
    ]
    for parameter in objective_parameters(records):
        specs.append(
            spec(
                f"variance_vs_{parameter.replace('.', '_')}",
                f"Variance of one gradient estimate against {parameter} (the shape of "
                "Mohamed et al. 2020, Fig. 2). Other swept settings are held at their most "
                "frequent value, named in the title.",
                figures.fig_variance_vs_parameter,
                records,
                parameter,
            )
        )
    specs += [
        spec(
            "variance_vs_k",
            "Variance of one gradient estimate against K, the importance samples per "
            "estimate (log-log).",
            bounds.variance_vs_k,
            records,
        ),
        FigureSpec(
            "bound_vs_k",
            "The bound L_K (= −true_value) against K.",
            functools.partial(bounds.bound_vs_k, records),
        ),
        spec(
            "bias",
            "Bias (mean estimate − exact gradient) with ±2 standard errors: an unbiased "
            "estimator's bars cross zero about 95% of the time. For a group of coordinates "
            "(a model's parameter groups and all) the bias is their root-mean-square, about "
            "se even when unbiased.",
            figures.fig_bias,
            records,
        ),
        spec(
            "time_per_estimate",
            "Median wall-clock time of one gradient estimate computed on its own, as a "
            "training step would pay it.",
            figures.fig_time_per_estimate,
            records,
        ),
        spec(
            "work_normalized_variance",
            "Variance × time per estimate: lower is better for a fixed compute budget.",
            figures.fig_work_normalized_variance,
            records,
        ),
        spec(
            "train_variance",
            "Variance of one gradient estimate at the parameters of a training run, every "
            "estimator measured at the same points (mean over runs, 95% bootstrap band).",
            figures.fig_train_variance,
            during if len(during) else train,
        ),
        spec(
            "train_objective_vs_time",
            "Training objective against the wall-clock time spent in training steps, one "
            "line per run: progress per second of compute.",
            figures.fig_train_objective_vs_time,
            train,
        ),
    ]
    return specs


@dataclass
class Report:
    """What ``write_report`` wrote: the report folder, file names and what went wrong."""

    folder: Path
    files: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    summary: pd.DataFrame | None = None


def write_report(folder: str | Path, formats: Sequence[str] = (), dpi: int = 150) -> Report:
    """Collect the runs under ``folder`` and write ``folder/report/``.

    Args:
        formats: figure formats to write besides PNG, which is always written
            (``"svg"``, ``"pdf"``; ``"png"`` is accepted and changes nothing).

    Raises:
        UsageError: ``folder`` is missing, is itself a report, or holds no readable results.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"no such folder: {folder}")
    if (folder / REPORT_MARKER).is_file():
        raise UsageError(f"{folder} is a report folder; give the folder of runs above it")
    runs = scan_runs(folder)
    if runs.records.empty and runs.train.empty:
        unreadable = (
            f" ({len(runs.problems)} unreadable: {runs.problems[0]})" if runs.problems else ""
        )
        raise UsageError(f"no records.parquet or train.parquet under {folder}{unreadable}")
    formats = [f for f in dict.fromkeys(formats) if f != "png"]

    out = folder / REPORT_DIR
    out.mkdir(exist_ok=True)
    _remove_previous(out)
    report = Report(out, problems=list(runs.problems))
    if not runs.records.empty:
        write_parquet_atomic(runs.records, out / "records.parquet")
        report.files.append("records.parquet")
    if not runs.train.empty:
        write_parquet_atomic(runs.train, out / "train.parquet")
        report.files.append("train.parquet")

    summary = summary_table(variance_records(runs.records))
    report.summary = summary
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(summary, runs))
    report.files += ["summary.csv", "summary.md"]

    captions = {}
    for spec in figure_specs(runs.records, runs.train):
        try:
            fig = spec.draw()
        except Exception as exc:  # one broken figure must not cost the rest of the report
            report.problems.append(
                Problem(REPORT_DIR, f"{spec.name}.png", f"figure failed: {exc!r}")
            )
            continue
        if fig is None:
            continue
        for ext in ["png", *formats]:
            save(fig, out / f"{spec.name}.{ext}", dpi=dpi)
            report.files.append(f"{spec.name}.{ext}")
        report.figures.append(spec.name)
        captions[spec.name] = spec.caption

    pictures = copy_pictures(folder, runs.train, out)
    report.files += [name for _, found in pictures for name in found.values()]
    page = index_html(
        folder, runs, files=report.files, figures=captions, problems=report.problems,
        summary=summary, formats=formats, pictures=pictures,
    )  # fmt: skip
    (out / "index.html").write_text(page)
    report.files.append("index.html")
    (out / REPORT_MARKER).write_text("\n".join(report.files) + "\n")
    return report


def save(fig: Figure, path: Path, dpi: int) -> None:
    """``fig.savefig(path)``, the same file; a PNG's layout is run once, before the draw.

    ``savefig`` on a figure with a layout engine draws it twice: once without rendering,
    for the layout, then for the pixels. The layout itself needs only the extents of the
    text, so it runs on its own at the PNG's resolution (as inside ``savefig``), the engine
    is set aside for the one draw that renders, and put back for the other formats.
    """
    ext = path.suffix.removeprefix(".")
    engine = fig.get_layout_engine()
    if ext != "png" or engine is None:
        fig.savefig(path, dpi=dpi, metadata=SAVE_METADATA[ext])
        return
    FigureCanvasAgg(fig)  # the layout's renderer: the one the PNG is drawn with
    fig.set_dpi(dpi)
    engine.execute(fig)
    fig.set_layout_engine("none")
    try:
        fig.savefig(path, dpi=dpi, metadata=SAVE_METADATA[ext])
    finally:
        fig.set_layout_engine(engine)


def _remove_previous(out: Path) -> None:
    """Delete the files the last report wrote, so a figure that lost its data goes too."""
    marker = out / REPORT_MARKER
    if not marker.is_file():
        return
    for name in marker.read_text().split():
        if "/" not in name and name not in ("..", "."):
            (out / name).unlink(missing_ok=True)
