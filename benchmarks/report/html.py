"""``index.html``: one page with every table and figure, opened without a server."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from benchmarks.collect import Problem, Runs
from benchmarks.report.frames import not_measured, ordered_objectives
from benchmarks.report.gallery import gallery_html
from benchmarks.report.tables import (
    display_table,
    problems_frame,
    threshold_sentence,
    training_table,
)
from benchmarks.storage import status_kind

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
.problem { color: #a40000; }
table.gallery td, table.gallery th { text-align: center; vertical-align: top; }
"""


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="–", escape=True)


def index_html(
    folder: Path,
    runs: Runs,
    *,
    files: Sequence[str],
    figures: dict[str, str],
    problems: Sequence[Problem],
    summary: pd.DataFrame | None,
    formats: Sequence[str],
    pictures: list[tuple[str, dict]] = (),
) -> str:
    """The page for the report of ``folder``; links are relative, to files that exist.

    Args:
        files: the report's files, linked at the top.
        figures: caption per figure name (``NAME.png`` and ``NAME.<format>`` exist).
        problems: runs and files that could not be used.
        summary: ``summary_table`` of the runs.
        formats: figure formats written besides PNG.
        pictures: the VAE pictures copied into the report, per run (``gallery``).
    """
    e = html.escape
    records = runs.records
    n_runs = records["run_dir"].nunique() if "run_dir" in records else 0
    status = (
        status_kind(records.drop_duplicates("run_dir")["status"]).value_counts()
        if len(records)
        else pd.Series(dtype=int)
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
    body = [
        f"<h1>gradbench report: {e(folder.resolve().name)}</h1>",
        f"<p>{n_runs} runs ({e(counts) or 'none with records'}), {len(records)} rows, "
        f"{runs.train['run_dir'].nunique() if len(runs.train) else 0} training runs. "
        f"Unreadable: {len(problems)}.</p>",
        "<p>Files: " + ", ".join(f'<a href="{e(f)}">{e(f)}</a>' for f in files) + "</p>",
    ]
    if problems:
        body += ['<h2 class="problem">Unreadable runs</h2>',
                 _html_table(problems_frame(problems))]  # fmt: skip
    if figures:
        body.append("<h2>Figures</h2>")
    for name, caption in figures.items():
        extra = " ".join(f'<a href="{e(name)}.{ext}">{ext}</a>' for ext in formats)
        body.append(
            f'<figure id="{e(name)}"><img src="{e(name)}.png" alt="{e(name)}">'
            f"<figcaption>{e(caption)} {extra}</figcaption></figure>"
        )
    body += gallery_html(list(pictures))
    if summary is not None and len(summary):
        body += ["<h2>Summary</h2>", f"<p>{e(threshold_sentence(summary))}</p>"]
        table = display_table(summary)
        for objective in ordered_objectives(summary):
            body += [f"<h3>{e(str(objective))}</h3>",
                     _html_table(table[summary["objective"] == objective])]  # fmt: skip
    trained = training_table(runs.train)
    if len(trained):
        body += ["<h2>Training runs</h2>", _html_table(trained)]
    missing = not_measured(records)
    if len(missing):
        body += ["<h2>Cells without results</h2>", _html_table(missing)]
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>gradbench report: {e(folder.resolve().name)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
