"""``gradbench report``: collecting runs, the summary table, the figures and the HTML page.

One small real sweep (module fixture, a few seconds) checks the whole path from
``gradbench run -m`` to ``index.html``; hand-made frames with known numbers check the
ranking, the bias flag, pooling over seeds, and skipped, failed and unreadable runs.
"""

from __future__ import annotations

import ast
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from benchmarks import cli, report
from benchmarks.collect import collect_records, scan_runs
from benchmarks.storage import write_parquet_atomic

SUMMARY_COLUMNS = [
    "objective", "param", "n_samples", "rank", "estimator", "var_grad", "bias", "bias_se",
    "bias_z", "bias_significant", "bias_chi2", "time_per_estimate_s", "work_normalized_var",
    "rank_work", "true_grad", "replicates", "seeds",
]  # fmt: skip


# --------------------------------------------------------------------------- hand-made runs


def cell(estimator, n_samples, var, bias=0.0, *, params=("mu", "sigma"), seed=0,
         replicates=1000, time=1e-3, status="ok", **config):  # fmt: skip
    """Records of one cell as ``benchmarks.measure`` writes them, with chosen statistics."""
    rows = []
    for param in params if status == "ok" or status.startswith("skipped") else ("all",):
        ok = status == "ok"
        se = math.sqrt(var / replicates)
        rows.append({
            "objective": "gaussian_quadratic", "estimator": estimator, "task": "variance",
            "param": param,
            "n_samples": n_samples, "replicates": replicates, "seed": seed, "true_grad": 2.0,
            "mean_grad": 2.0 + bias if ok else math.nan, "var_grad": var if ok else math.nan,
            "bias": bias if ok else math.nan, "bias_se": se if ok else math.nan,
            "time_per_estimate_s": time if ok else math.nan, "measure_time_s": 0.01,
            "status": status, "unbiased": estimator != "relaxed", **config,
        })  # fmt: skip
    return pd.DataFrame(rows)


def toy_records() -> pd.DataFrame:
    """Two estimators × two n_samples × two sigmas, one skipped and one failed cell."""
    frames = []
    for sigma in (0.5, 2.0):
        for n in (1, 10):
            setting = {"objective.sigma": sigma, "params": ("mu",)}
            frames.append(cell("reinforce", n, 10.0 * sigma / n, **setting))
            frames.append(cell("reparam", n, 1.0 * sigma / n, **setting))
    frames.append(cell("reinforce_loo", 1, 0.0, status="skipped: needs n_samples >= 2"))
    frames.append(cell("reinforce_loo", 10, 0.0, status="failed: RuntimeError: boom"))
    return pd.concat(
        [frame.assign(run_dir=f"run{i}") for i, frame in enumerate(frames)], ignore_index=True
    )


def train_log(estimator: str, seed: int = 0) -> pd.DataFrame:
    steps = np.arange(0, 50, 10)
    return pd.DataFrame({
        "step": steps, "wall_time_s": steps * 0.01, "loss": 2.0 / (1 + steps),
        "optimality_gap": 2.0 / (1 + steps), "log10_var": 1.0 - steps / 50,
        "objective": "gaussian_quadratic", "estimator": estimator, "seed": seed,
        "run_dir": f"{estimator}-{seed}",
    })  # fmt: skip


def write_run(folder: Path, records: pd.DataFrame, overrides=("estimator=reinforce",)) -> Path:
    """A run folder as Hydra leaves it: records.parquet and .hydra/{config,overrides}.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(
        "n_samples: 10\nobjective:\n  _target_: x.Y\n  sigma: 0.5\n  logits: [0.0, 1.0]\n"
    )
    write_parquet_atomic(records, folder / "records.parquet")
    return folder


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for key, value in attrs if key in ("src", "href")]


def html_links(path: Path) -> list[str]:
    parser = Links()
    parser.feed(path.read_text())
    return parser.links


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 estimators × 2 n_samples on gaussian_quadratic (reinforce_loo skips n=1).

    Kept to 4 cells: every cell composes a Hydra config, the slow part of a sweep. Sweeps
    over objective settings are covered by hand-made runs below.
    """
    folder = tmp_path_factory.mktemp("sweep")
    code = cli.main([
        "run", "-m", "objective=gaussian_quadratic", "estimator=reinforce_loo,reparam",
        "n_samples=1,8", "objective.sigma=2", "replicates=64", "task.warmup_steps=1",
        "task.timing_min_run_time=0.001", "threads=1", f"hydra.sweep.dir={folder}",
    ])  # fmt: skip
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def reported(sweep) -> Path:
    assert cli.main(["report", str(sweep), "--dpi", "40"]) == 0
    return sweep / "report"


def test_report_collects_every_run_with_its_config(sweep, reported):
    records = pd.read_parquet(reported / "records.parquet")
    assert records["run_dir"].nunique() == 4
    assert len(records) == 8  # two parameters (mu, sigma) per cell
    assert (records["objective.sigma"] == 2.0).all()  # from each run's .hydra/config.yaml
    assert (records["objective.mu"] == 1.0).all()
    assert records["overrides"].str.contains("n_samples=").all()
    assert (records["status"].str.startswith("skipped")).sum() == 2  # LOO at n=1
    assert not (sweep / "report" / "report").exists()


def test_report_writes_tables_and_the_figures_that_have_data(reported):
    summary = pd.read_csv(reported / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    # 2 params × (2 estimators at n=8 + 1 at n=1): the skipped cell is not ranked.
    assert len(summary) == 2 * (2 + 1)
    for name in ["variance_vs_n_samples", "bias", "time_per_estimate",
                 "work_normalized_variance"]:  # fmt: skip
        assert (reported / f"{name}.png").stat().st_size > 1000
    assert not (reported / "train_variance.png").exists()  # no training runs
    markdown = (reported / "summary.md").read_text()
    assert "## gaussian_quadratic" in markdown
    assert "## Cells without results" in markdown and "skipped:" in markdown


def test_reparam_ranks_first_on_the_quadratic(reported):
    # Theory fixes this ordering: Var[2(x - t)] = 4 sigma^2 / n against the score function.
    summary = pd.read_csv(reported / "summary.csv")
    assert (summary.loc[summary["rank"] == 1, "estimator"] == "reparam").all()


def test_html_references_only_files_that_exist(reported):
    links = html_links(reported / "index.html")
    assert links, "the page links its figures and tables"
    for link in links:
        assert (reported / link).is_file(), link
    pngs = {p.name for p in reported.glob("*.png")}
    assert pngs <= set(links)  # and every figure written is on the page


def test_report_twice_is_idempotent(tmp_path):
    write_run(tmp_path / "a", cell("reinforce", 10, 1.0, params=("mu",), time=math.nan))
    write_run(tmp_path / "b", cell("reparam", 10, 0.1, params=("mu",), time=math.nan))
    out = tmp_path / "report"
    assert report.main([str(tmp_path), "--dpi", "30"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert report.main([str(tmp_path), "--dpi", "30"]) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before.keys() == after.keys()
    for name in ["summary.csv", "summary.md", "index.html", "bias.png"]:
        assert before[name] == after[name], name
    # The report's own records.parquet is not collected the second time.
    assert len(pd.read_parquet(out / "records.parquet")) == 2


def test_extra_formats_are_written_and_linked(tmp_path):
    one_figure = {"params": ("mu",), "time": math.nan}  # no cost figures: only the bias one
    write_run(tmp_path / "a", cell("reinforce", 10, 1.0, **one_figure))
    write_run(tmp_path / "b", cell("reparam", 10, 0.1, **one_figure))
    assert report.main([str(tmp_path), "--format", "svg,pdf", "--dpi", "30"]) == 0
    out = tmp_path / "report"
    assert sorted(p.name for p in out.glob("*.*") if p.suffix in (".png", ".svg", ".pdf")) == [
        "bias.pdf",
        "bias.png",
        "bias.svg",
    ]
    assert (out / "bias.svg").is_file() and (out / "bias.pdf").is_file()
    assert "bias.svg" in html_links(out / "index.html")
    # A figure that lost its data on the next run is removed, not left stale.
    assert report.main([str(tmp_path), "--dpi", "30"]) == 0
    assert not (out / "bias.svg").exists() and (out / "bias.png").exists()


def test_png_format_is_accepted_and_written_once(tmp_path):
    one_figure = {"params": ("mu",), "time": math.nan}
    write_run(tmp_path / "a", cell("reinforce", 10, 1.0, **one_figure))
    write_run(tmp_path / "b", cell("reparam", 10, 0.1, **one_figure))
    assert report.main([str(tmp_path), "--format", "png", "--format", "PNG,svg"]) == 0
    out = tmp_path / "report"
    written = (out / ".gradbench-report").read_text().split()
    assert written.count("bias.png") == 1 and written.count("bias.svg") == 1
    assert "bias.png" in html_links(out / "index.html")


def test_unknown_figure_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path), "--format", "svg,gif"])
    assert exit_info.value.code == 2
    assert "unknown format 'gif'" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad folders


def test_unreadable_runs_are_listed_not_fatal(tmp_path, capsys):
    write_run(tmp_path / "good", cell("reinforce", 10, 1.0, params=("mu",), time=math.nan))
    bad = write_run(tmp_path / "truncated", cell("reparam", 10, 0.1))
    data = (bad / "records.parquet").read_bytes()
    (bad / "records.parquet").write_bytes(data[: len(data) // 2])
    crashed = tmp_path / "crashed"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "error.log").write_text("Traceback ...\nMemoryError: out of memory\n")
    write_run(tmp_path / "foreign", pd.DataFrame({"x": [1.0]}))
    broken_config = write_run(
        tmp_path / "badconfig", cell("reparam", 10, 0.1, params=("mu",), time=math.nan)
    )
    (broken_config / ".hydra" / "config.yaml").write_text("objective: [unclosed\n")

    assert cli.main(["report", str(tmp_path), "--dpi", "30"]) == 0
    reasons = {p.run_dir: p.reason for p in scan_runs(tmp_path).problems}
    assert reasons["truncated"].startswith("unreadable")
    assert "did not finish" in reasons["crashed"] and "MemoryError" in reasons["crashed"]
    assert "missing columns" in reasons["foreign"]
    assert "config not readable" in reasons["badconfig"]
    page = (tmp_path / "report" / "index.html").read_text()
    for run in ["truncated", "crashed", "foreign", "badconfig"]:
        assert run in page
    assert "Unreadable runs" in (tmp_path / "report" / "summary.md").read_text()
    records = pd.read_parquet(tmp_path / "report" / "records.parquet")
    assert sorted(records["run_dir"].unique()) == ["badconfig", "good"]
    assert "could not use truncated/records.parquet" in capsys.readouterr().err


def test_collect_records_skips_unreadable_files_with_a_warning(tmp_path, capsys):
    write_run(tmp_path / "good", cell("reinforce", 10, 1.0))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "records.parquet").write_bytes(b"PAR1 not really")
    records = collect_records(tmp_path)
    assert list(records["run_dir"].unique()) == ["good"]
    assert records["objective.sigma"].eq(0.5).all()  # config joined
    assert records["objective.logits"].eq("[0.0, 1.0]").all()
    assert "bad/records.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["empty", "missing", "only-corrupt", "report-folder"])
def test_no_records_is_a_one_line_error(tmp_path, capsys, what):
    folder = tmp_path / "runs"
    if what != "missing":
        folder.mkdir()
    if what == "only-corrupt":
        (folder / "records.parquet").write_bytes(b"garbage")
    if what == "report-folder":
        write_run(folder / "a", cell("reinforce", 10, 1.0))
        (folder / "report").mkdir()
        (folder / "report" / ".gradbench-report").write_text("")
        shutil.copy(folder / "a" / "records.parquet", folder / "report")
        assert scan_runs(folder).records["run_dir"].tolist() == ["a", "a"]
        folder = folder / "report"
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradbench: error: ") and err.count("\n") == 1, err


# --------------------------------------------------------------------------- tables


def test_summary_ranks_by_variance_and_flags_significant_bias():
    records = pd.concat([
        cell("reinforce", 10, 4.0, bias=0.01),          # z = 0.01 / sqrt(4/1000) = 0.16
        cell("reinforce_loo", 10, 2.0, bias=0.0),
        cell("reparam", 10, 1.0, bias=0.5, time=1.0),   # z = 0.5 / 0.0316 = 15.8
    ], ignore_index=True)  # fmt: skip
    summary = report.summary_table(records)
    assert list(summary.columns) == SUMMARY_COLUMNS
    mu = summary[summary["param"] == "mu"]
    assert list(mu["estimator"]) == ["reparam", "reinforce_loo", "reinforce"]
    assert list(mu["rank"]) == [1, 2, 3]
    # reparam is 1000× slower here: last by work-normalised variance (4e-3, 2e-3, 1).
    assert list(mu["rank_work"]) == [3, 1, 2]
    threshold = NormalDist().inv_cdf(1 - 0.05 / (2 * 6))  # 6 rows with an exact gradient
    assert summary.attrs["bias_threshold"] == pytest.approx(threshold)
    flagged = summary.set_index(["estimator", "param"])["bias_significant"]
    assert flagged[("reparam", "mu")] and not flagged[("reinforce", "mu")]
    assert not flagged[("reinforce_loo", "sigma")]


def test_group_rows_of_models_show_chi2_and_are_not_flagged():
    # Model records: one row per group, bias = rms over its coordinates, bias_chi2 = mean z².
    records = pd.concat([
        cell("reinforce", 10, 1e-3, bias=0.03, params=("encoder", "all")),
        cell("gumbel_softmax", 10, 1e-4, bias=0.02, params=("encoder", "all")),
    ], ignore_index=True)  # fmt: skip
    records = records.assign(bias_chi2=[1.1, 1.0, 7.0, 6.0], n_coords=[900, 2000] * 2)
    summary = report.summary_table(records)
    assert summary["bias_significant"].isna().all() and summary["bias_z"].isna().all()
    assert sorted(summary["bias_chi2"]) == [1.0, 1.1, 6.0, 7.0]
    shown = report.display_table(summary)
    assert shown["z"].str.startswith("χ²/k").all() and (shown["biased?"] == "").all()
    assert "not tested" in report.threshold_sentence(summary)


def test_group_rows_are_known_by_their_coordinate_count_not_their_names():
    # A model whose groups have names of its own (bayes_logreg: mean, log_scale).
    records = cell("reinforce", 10, 1e-3, bias=0.5, params=("mean", "log_scale", "all"))
    records = records.assign(bias_chi2=[1.0, 2.0, 1.5], n_coords=[3, 3, 6])
    summary = report.summary_table(records)
    assert summary["bias_significant"].isna().all() and summary["bias_z"].isna().all()
    assert "(all, log_scale, mean)" in report.threshold_sentence(summary)  # the rows' order


def test_orders_come_from_the_runs_not_from_lists_of_names():
    # Natural order of the run folders: run2 before run10, whatever the estimators are called.
    records = pd.concat([
        cell("reinforce", 10, 1.0, params=("mu",)).assign(run_dir="run10"),
        cell("a_new_estimator", 10, 1.0, params=("mu",)).assign(run_dir="run2"),
        cell("reinforce", 10, 1.0, params=("mu",)).assign(run_dir="run3", objective="toy_b"),
    ], ignore_index=True)  # fmt: skip
    assert report.ordered_estimators(records) == ["a_new_estimator", "reinforce"]
    assert report.ordered_objectives(records) == ["gaussian_quadratic", "toy_b"]
    summary = report.summary_table(records)
    assert list(summary["objective"]) == ["gaussian_quadratic", "gaussian_quadratic", "toy_b"]
    assert list(summary["estimator"]) == ["a_new_estimator", "reinforce", "reinforce"]
    assert list(summary["rank"]) == [1, 1, 1]  # a tie: the runs' order decides
    names = [f"estimator_{i}" for i in range(12)]
    styles = report.estimator_styles(names)
    assert list(styles) == names and len(set(styles.values())) == len(names)
    assert report.estimator_styles(names) == styles


def test_summary_pools_seeds_of_one_cell():
    records = pd.concat([
        cell("reinforce", 10, 4.0, bias=0.2, seed=0, params=("mu",)),
        cell("reinforce", 10, 2.0, bias=0.0, seed=1, params=("mu",)),
    ], ignore_index=True)  # fmt: skip
    row = report.summary_table(records).iloc[0]
    assert row["seeds"] == 2 and row["replicates"] == 2000
    assert row["var_grad"] == pytest.approx(3.0)
    assert row["bias"] == pytest.approx(0.1)
    assert row["bias_se"] == pytest.approx(math.sqrt(4.0 / 1000 + 2.0 / 1000) / 2)


def test_summary_keeps_swept_settings_apart_and_skips_unmeasured_cells():
    summary = report.summary_table(toy_records())
    assert "objective.sigma" in summary.columns
    assert len(summary) == 2 * 2 * 2  # sigma × n × estimator
    assert "reinforce_loo" not in set(summary["estimator"])
    missing = report.not_measured(toy_records())
    assert sorted(missing["status"].str.split(":").str[0]) == ["failed", "skipped"]


def test_hold_fixed_keeps_one_value_of_the_other_swept_settings():
    records = toy_records()
    records = records[records["status"] == "ok"]
    kept, notes = report.hold_fixed(records, free=["n_samples"])
    assert kept["objective.sigma"].nunique() == 1 and notes == ["objective.sigma = 2"]
    assert kept["n_samples"].nunique() == 2


# --------------------------------------------------------------------------- figures

RECORD_FIGURES = [
    report.fig_variance_vs_n_samples,
    report.fig_variance_vs_parameter,
    report.fig_bias,
    report.fig_time_per_estimate,
    report.fig_work_normalized_variance,
]
TRAIN_FIGURES = [report.fig_train_variance, report.fig_train_objective_vs_time]


@pytest.mark.parametrize("figure", RECORD_FIGURES, ids=lambda f: f.__name__)
def test_record_figures_draw_valid_data_and_skip_absent_data(figure):
    records = toy_records()
    assert isinstance(figure(records), Figure)
    assert figure(records.iloc[0:0]) is None
    assert figure(records[records["status"] != "ok"]) is None  # only skipped / failed


def test_bias_figure_with_panels_that_lack_some_n_samples():
    # A second objective measured at one n_samples only: its panel has no n = 1 points.
    other = cell("reinforce", 10, 1.0, params=("logit",)).assign(objective="bernoulli_threshold")
    records = pd.concat([toy_records(), other], ignore_index=True)
    fig = report.fig_bias(records)
    assert isinstance(fig, Figure)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == [
        "gaussian_quadratic", "bernoulli_threshold"
    ]  # fmt: skip


def test_variance_vs_parameter_needs_two_values_after_holding_the_rest():
    # sigma varies only among the n = 1 runs; n = 10, the most frequent, is the one kept.
    records = pd.concat([
        cell("reinforce", 10, 1.0, seed=0, **{"objective.sigma": 1.0}),
        cell("reinforce", 10, 1.0, seed=1, **{"objective.sigma": 1.0}),
        cell("reparam", 10, 0.1, **{"objective.sigma": 1.0}),
        cell("reinforce", 1, 5.0, **{"objective.sigma": 0.5}),
        cell("reinforce", 1, 9.0, **{"objective.sigma": 2.0}),
    ], ignore_index=True)  # fmt: skip
    assert report.objective_parameters(records) == ["objective.sigma"]
    assert report.fig_variance_vs_parameter(records) is None


def test_figures_that_need_a_sweep_axis_skip_a_single_setting():
    one = toy_records()
    one = one[(one["n_samples"] == 10) & (one["objective.sigma"] == 0.5)]
    assert report.fig_variance_vs_n_samples(one) is None
    assert report.fig_variance_vs_parameter(one) is None
    assert isinstance(report.fig_time_per_estimate(one), Figure)  # one point per estimator


@pytest.mark.parametrize("figure", TRAIN_FIGURES, ids=lambda f: f.__name__)
def test_training_figures_draw_a_training_log_and_skip_without(figure):
    train = pd.concat([train_log("reinforce"), train_log("reparam"), train_log("reparam", 1)])
    assert isinstance(figure(train), Figure)
    assert figure(pd.DataFrame()) is None
    assert figure(train.drop(columns=["log10_var", "optimality_gap", "loss"])) is None


def test_training_variance_from_tracked_records():
    # benchmarks.train records every tracked estimator at each evaluation step.
    rows = [
        cell(name, 10, var * (1 - step / 100)).assign(task="train", step=step,
                                                       train_estimator="reinforce")  # fmt: skip
        for step in (0, 50) for name, var in (("reinforce", 4.0), ("reparam", 1.0))
    ]  # fmt: skip
    records = pd.concat(rows, ignore_index=True)
    assert len(report.training_records(records)) == 8
    assert report.variance_records(records).empty
    fig = report.fig_train_variance(report.training_records(records))
    assert isinstance(fig, Figure)
    assert "trained with reinforce" in fig.axes[0].get_title()


def test_training_variance_of_a_model_is_that_of_all_its_coordinates():
    groups = ("encoder", "decoder", "all")
    rows = [
        cell(name, 10, 1.0, params=groups).assign(
            task="train", step=step, train_estimator="reinforce", var_grad=[4.0, 0.25, var],
            n_coords=[2, 3, 5],
        )  # fmt: skip
        for step in (0, 10) for name, var in (("reinforce", 10.0), ("reparam", 100.0))
    ]  # fmt: skip
    fig = report.fig_train_variance(report.training_records(pd.concat(rows, ignore_index=True)))
    drawn = {tuple(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert drawn == {(1.0, 1.0), (2.0, 2.0)}  # log10 of the "all" rows' variance


def test_report_with_training_runs(tmp_path):
    for estimator in ("reinforce", "reparam"):
        run = tmp_path / estimator
        write_run(run, cell(estimator, 10, 1.0, params=("mu",)).assign(task="train", step=0))
        write_parquet_atomic(train_log(estimator).drop(columns="run_dir"), run / "train.parquet")
    assert report.main([str(tmp_path), "--dpi", "30"]) == 0
    out = tmp_path / "report"
    assert (out / "train_variance.png").is_file()
    assert (out / "train_objective_vs_time.png").is_file()
    assert not (out / "bias.png").exists()  # training records are not variance cells
    assert "## Training runs" in (out / "summary.md").read_text()
    for link in html_links(out / "index.html"):
        assert (out / link).is_file(), link


def test_figures_leave_global_matplotlib_state_alone():
    import matplotlib

    before = dict(matplotlib.rcParams)
    report.fig_bias(toy_records())
    assert dict(matplotlib.rcParams) == before


def test_the_report_does_not_import_the_command_line():
    # benchmarks.cli imports the report; an import back would make a cycle.
    folder = Path(report.__file__).parent
    imported = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "benchmarks.report.frames" in imported  # the walk sees the package's imports
    assert not {name for name in imported if name.startswith("benchmarks.cli")}


def test_the_written_out_style_and_palettes_are_seaborns():
    import seaborn as sns

    from benchmarks.report import palettes

    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    assert style.pop("image.cmap") == "rocket"  # left out: it needs seaborn's colormaps
    assert style == palettes.SEABORN_STYLE
    assert [tuple(c) for c in sns.color_palette("colorblind", 10)] == palettes.COLORBLIND
    assert [tuple(c) for c in sns.color_palette("dark", 10)] == palettes.DARK
    for n in range(1, 13):
        assert palettes.flare(n) == [tuple(c) for c in sns.color_palette("flare", n)]
    assert palettes.flare(3) != palettes.flare(4)[:3]  # the control: n changes the colours


def test_drawing_records_does_not_import_seaborn():
    code = (
        "import sys; from benchmarks.report import fig_bias; from tests.test_report import "
        "toy_records; fig_bias(toy_records()); print('seaborn' in sys.modules)"
    )
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_the_report_command_imports_neither_torch_nor_hydra(tmp_path):
    # Importing torch alone is seconds: the report reads parquet and draws, nothing more.
    write_run(tmp_path / "a", cell("reinforce", 10, 1.0, params=("mu",)))
    write_run(tmp_path / "b", cell("reparam", 10, 0.1, params=("mu",)))
    heavy = ["torch", "hydra", "omegaconf", "scipy", "seaborn", "estimators", "matplotlib"]
    code = (
        f"import sys; from benchmarks.cli import main; main(['report', {str(tmp_path)!r}, "
        f"'--dpi', '30']); print('imported', *[m for m in {heavy!r} if m in sys.modules])"
    )
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report" / "bias.png").is_file()
    # matplotlib is the control: the check sees what the report imports.
    assert done.stdout.splitlines()[-1] == "imported matplotlib"


def test_layout_shortcuts_change_no_pixel(tmp_path, monkeypatch):
    # The figures fix their titles' height and leave the spines out of the layout where
    # neither can change where anything lands; matplotlib's own placement gives the same
    # pixels. The training figure's linear y axis keeps matplotlib's title placement.
    from matplotlib.image import imread

    from benchmarks.report import panels
    from benchmarks.report.write import save

    train = pd.concat([train_log("reinforce"), train_log("reparam", 1)])
    draws = {
        "bias": lambda: report.fig_bias(toy_records()),
        "variance": lambda: report.fig_variance_vs_n_samples(toy_records()),
        "cost": lambda: report.fig_time_per_estimate(toy_records()),
        "train": lambda: report.fig_train_objective_vs_time(train),
    }

    def pixels(name: str) -> np.ndarray:
        fig = draws[name]()
        spines = [spine.get_in_layout() for ax in fig.axes for spine in ax.spines.values()]
        save(fig, tmp_path / f"{name}.png", dpi=60)
        return imread(tmp_path / f"{name}.png"), spines

    shortcut = {name: pixels(name) for name in draws}
    monkeypatch.setattr(panels, "_fix_title_height", lambda ax: None)
    monkeypatch.setattr(panels, "_spines_out_of_layout", lambda ax: None)
    for name in draws:
        image, spines = pixels(name)
        assert not any(shortcut[name][1]) and all(spines), name  # the shortcut was taken
        assert image.shape == shortcut[name][0].shape, name
        assert np.array_equal(image, shortcut[name][0]), name
