"""The VAE pictures of training runs, side by side: one column per run, one row per kind.

Every VAE ``task=train`` run leaves ``samples.png``, ``reconstructions.png`` and, with two
Gaussian latents, ``manifold.png`` in its folder. The report copies them into its own
folder (so that it stays whole when moved) and shows them next to each other, which is
where the estimators' VAEs are compared at a glance.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pandas as pd

from benchmarks.report.frames import first_appearance

KINDS = {
    "samples.png": "decoder means for draws from the prior",
    "reconstructions.png": "test images above their reconstructions",
    "manifold.png": "the decoder over a grid of latent quantiles",
}


def run_label(rows: pd.DataFrame, several_objectives: bool) -> str:
    """A column's heading: the run's estimator, and its objective where they differ."""
    first = rows.iloc[0]
    label = str(first["estimator"])
    if several_objectives and "objective" in rows:
        label = f"{first['objective']}: {label}"
    return label


def copy_pictures(folder: Path, train: pd.DataFrame, out: Path) -> list[tuple[str, dict]]:
    """Copy each training run's pictures into ``out``; ``[(label, {kind: file name})]`` in
    the order of the runs, for runs that have at least one picture."""
    if train.empty or "run_dir" not in train:
        return []
    several = "objective" in train and train["objective"].nunique() > 1
    columns = []
    for i, run_dir in enumerate(first_appearance(train, "run_dir")):
        found = {}
        for kind in KINDS:
            source = folder / run_dir / kind
            if source.is_file():
                name = f"picture_{i:03d}_{kind}"
                shutil.copyfile(source, out / name)
                found[kind] = name
        if found:
            columns.append((run_label(train[train["run_dir"] == run_dir], several), found))
    return columns


def gallery_html(columns: list[tuple[str, dict]]) -> list[str]:
    """The page section: a table with a column per run and a row per kind of picture."""
    if not columns:
        return []
    e = html.escape
    head = "".join(f"<th>{e(label)}</th>" for label, _ in columns)
    rows = []
    for kind, caption in KINDS.items():
        if not any(kind in found for _, found in columns):
            continue
        cells = "".join(
            f'<td><img src="{e(found[kind])}" alt="{e(label)}: {e(kind)}" width="240"></td>'
            if kind in found else "<td>–</td>"
            for label, found in columns
        )  # fmt: skip
        rows.append(f"<tr><th>{e(caption)}</th>{cells}</tr>")
    return [
        "<h2>VAE pictures</h2>",
        '<table class="gallery"><tr><th></th>' + head + "</tr>" + "".join(rows) + "</table>",
    ]
