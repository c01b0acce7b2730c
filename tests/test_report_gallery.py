"""The report's VAE pictures: copied from each training run, shown one column per run."""

from __future__ import annotations

import pandas as pd
import torch

from benchmarks.pictures import image_grid, save_figure
from benchmarks.report import write_report


def training_run(folder, estimator, kinds):
    folder.mkdir()
    pd.DataFrame({
        "objective": ["vae_gaussian"] * 2, "estimator": [estimator] * 2, "step": [0, 1],
        "wall_time_s": [0.0, 1.0], "loss": [2.0, 1.0],
    }).to_parquet(folder / "train.parquet")  # fmt: skip
    for i, kind in enumerate(kinds):
        images = torch.full((4, 16), 0.25 * (i + 1))
        save_figure(image_grid(images, (4, 4)), folder / kind, dpi=20)


def test_pictures_of_each_run_sit_side_by_side(tmp_path):
    training_run(tmp_path / "estimator=reinforce", "reinforce", ["samples.png"])
    training_run(
        tmp_path / "estimator=reparam", "reparam",
        ["samples.png", "reconstructions.png", "manifold.png"],
    )  # fmt: skip
    report = write_report(tmp_path)
    out = tmp_path / "report"
    copies = sorted(p.name for p in out.glob("picture_*"))
    assert copies == [
        "picture_000_samples.png", "picture_001_manifold.png",
        "picture_001_reconstructions.png", "picture_001_samples.png",
    ]  # fmt: skip
    source = tmp_path / "estimator=reparam" / "manifold.png"
    assert (out / "picture_001_manifold.png").read_bytes() == source.read_bytes()
    page = (out / "index.html").read_text()
    section = page[page.index("<h2>VAE pictures</h2>") :]
    assert section.index("<th>reinforce</th>") < section.index("<th>reparam</th>")
    assert 'src="picture_001_reconstructions.png"' in section
    # reinforce has no reconstructions: its cell says so.
    row = section[section.index("test images above") :].split("</tr>")[0]
    assert row.count("<td>–</td>") == 1
    assert "picture_000_samples.png" in report.files


def test_a_picture_that_is_gone_leaves_the_next_report(tmp_path):
    training_run(tmp_path / "run", "reparam", ["samples.png", "manifold.png"])
    write_report(tmp_path)
    (tmp_path / "run" / "manifold.png").unlink()
    write_report(tmp_path)
    assert sorted(p.name for p in (tmp_path / "report").glob("picture_*")) == [
        "picture_000_samples.png"
    ]
    assert (
        "manifold" not in (tmp_path / "report" / "index.html").read_text().split("VAE pictures")[1]
    )


def test_no_section_without_pictures(tmp_path):
    training_run(tmp_path / "run", "reparam", [])
    write_report(tmp_path)
    assert "VAE pictures" not in (tmp_path / "report" / "index.html").read_text()
