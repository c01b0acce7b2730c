"""Every kind of bad input is one clear line on stderr, a non-zero exit and nothing on disk.

The table below is the list of what users get wrong; each row gives the arguments of
``gradbench`` and words the error line must contain. Rows run in-process through
``benchmarks.cli.main`` (fast), and a few through the real ``gradbench`` command to check
what a user's terminal shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main

GRADBENCH = Path(sys.executable).with_name("gradbench")
NOT_A_FOLDER = "a_file/results"  # below a regular file: no folder can be made there
VAE = ["objective=vae_bernoulli", "data=synthetic"]

# (id, arguments, words the one error line must contain)
ROWS = [
    # Names of config options.
    ("unknown-estimator", ["run", "estimator=nope"], "unknown estimator 'nope'; choose from:"),
    ("unknown-objective", ["run", "objective=nope"], "unknown objective 'nope'"),
    ("unknown-task", ["run", "task=nope"], "unknown task 'nope'"),
    ("unknown-preset", ["run", "sweep=nope"], "unknown sweep 'nope'"),
    ("unknown-launcher", ["run", "-m", "hydra/launcher=nope"], "unknown hydra/launcher 'nope'"),
    (
        "ray-not-installed",
        ["run", "-m", "hydra/launcher=ray"],
        "the ray launcher is an extra: pip install -c constraints.txt -e '.[ray]'",
    ),
    ("unknown-in-sweep", ["run", "-m", "estimator=reinforce,nope"], "unknown estimator 'nope'"),
    ("unknown-key", ["run", "nsamples=10"], "unknown setting 'nsamples'"),
    ("unknown-nested-key", ["run", "objective.muu=1"], "unknown setting 'objective.muu'"),
    (
        "key-of-swept-options",
        ["run", "-m", "objective=linear_gaussian", "estimator=iwae,dreg", "estimator.k=10"],
        "to set it on every swept estimator option, write ++estimator.k=10",
    ),
    ("missing-config-name", ["run", "--config-name", "nope"], "Cannot find primary config"),
    ("missing-config-dir", ["run", "--config-dir", "no/such/dir"], "--config-dir: no such folder"),
    ("missing-config-dir-joined", ["run", "--config-dir=no/such"], "--config-dir: no such folder"),
    ("list-no-config-dir", ["list", "--config-dir", "no/such"], "--config-dir: no such folder"),
    (
        "estimator-module-missing",
        ["run", "--config-dir", "user_conf", "estimator=missing_module"],
        "estimator: cannot import 'gradbench_no_such_module.Estimator': "
        "No module named 'gradbench_no_such_module'",
    ),
    # Values.
    ("train-steps", ["run", "task=train", "task.steps=0"], "task.steps must be a positive"),
    ("train-compile", ["run", "task=train", "task.compile=maybe"], "task.compile must be true"),
    ("n-samples-zero", ["run", "n_samples=0"], "n_samples must be at least 1, got 0"),
    ("n-samples-negative", ["run", "n_samples=-5"], "n_samples must be at least 1, got -5"),
    ("replicates-one", ["run", "replicates=1"], "replicates must be at least 2"),
    ("sigma-zero", ["run", "objective.sigma=0"], "objective.sigma must be > 0"),
    (
        "sigma-negative",
        ["run", "objective=gaussian_cosine", "objective.sigma=-1"],
        "objective.sigma must be > 0",
    ),
    (
        "logits-vs-rewards",
        ["run", "objective=categorical_linear", "objective.logits=[0,0]"],
        "objective.logits has 2 entries but objective.rewards has 3",
    ),
    (
        "logits-too-short",
        ["run", "objective=categorical_linear", "objective.logits=[0]", "objective.rewards=[1]"],
        "objective.logits needs at least 2 entries",
    ),
    ("threads-zero", ["run", "threads=0"], "threads must be at least 1"),
    ("dtype", ["run", "dtype=float16"], "dtype must be one of float32, float64"),
    ("device-unknown", ["run", "device=tpu"], "device must be one of cpu, cuda, auto"),
    ("nonfinite-option", ["run", "task.nonfinite=ignore"], "task.nonfinite must be one of"),
    ("bad-value-in-sweep", ["run", "-m", "n_samples=1,10,0"], "n_samples must be at least 1"),
    # Types.
    ("int-from-text", ["run", "n_samples=ten"], "n_samples must be an integer, got 'ten'"),
    ("int-from-float", ["run", "replicates=1.5"], "replicates must be an integer, got '1.5'"),
    ("bool-from-text", ["run", "resume=maybe"], "resume must be true or false, got 'maybe'"),
    ("number-from-text", ["run", "objective.mu=abc"], "objective.mu must be a number"),
    ("number-from-list", ["run", "objective.sigma=[1,2]"], "objective.sigma must be a number"),
    ("override-syntax", ["run", "n_samples=[1,"], "cannot parse 'n_samples=[1,'"),
    # How the command is used.
    ("sweep-without-m", ["run", "estimator=reinforce,reparam"], "is a sweep: add -m"),
    (
        "run-dir-not-a-folder",
        ["run", f"hydra.run.dir={NOT_A_FOLDER}"],
        "cannot write results to a_file/results: a_file is not a folder",
    ),
    (
        "sweep-dir-not-a-folder",
        ["run", "-m", "n_samples=1,2", f"hydra.sweep.dir={NOT_A_FOLDER}"],
        "cannot write results to a_file/results",
    ),
    ("report-empty-folder", ["report", "empty"], "no records.parquet"),
    ("report-missing-folder", ["report", "no/such/dir"], "no such folder"),
    # Estimators beyond the card, models and data sets.
    (
        "temperature-zero",
        [
            "run",
            "estimator=gumbel_softmax",
            "objective=bernoulli_threshold",
            "estimator.temperature=0",
        ],
        "estimator.temperature must be > 0",
    ),  # fmt: skip
    (
        "temperature-negative",
        [
            "run",
            "estimator=gumbel_softmax",
            "objective=categorical_linear",
            "estimator.temperature=-0.5",
        ],
        "estimator.temperature must be > 0",
    ),  # fmt: skip
    ("unknown-data-set", ["run", "objective=vae_bernoulli", "data=nope"], "unknown data 'nope'"),
    (
        "latent-dim-too-large-to-enumerate",
        ["run", *VAE, "objective.latent_dim=40", "objective.true_grad=exact"],
        "enumerating 2^40 latent states needs latent_dim <=",
    ),
    ("latent-dim-zero", ["run", *VAE, "objective.latent_dim=0"], "objective.latent_dim must be"),
    (
        "mnist-file-missing",
        ["run", "objective=vae_bernoulli", "data=mnist", "data.path=no/such/mnist.npz"],
        "data.path: no such file or folder: no/such/mnist.npz",
    ),
    (
        "mnist-file-malformed",
        ["run", "objective=vae_bernoulli", "data=mnist", "data.path=a_file"],
        "a_file is not an IDX file",
    ),
    (
        "mnist-path-not-given",
        ["run", "objective=vae_bernoulli", "data=mnist"],
        "data.path must name an MNIST .npz file",
    ),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current folder: a regular file, an empty folder, a user config folder."""
    (tmp_path / "a_file").write_text("not an MNIST file, and not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "user_conf" / "estimator").mkdir(parents=True)
    (tmp_path / "user_conf" / "estimator" / "missing_module.yaml").write_text(
        "_target_: gradbench_no_such_module.Estimator\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_clear_error(code: int, stderr: str, words: str, folder: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gradbench: error: "), stderr
    assert words in lines[0], stderr
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr
    assert not list(folder.rglob("*.parquet")), "no record may be left behind"
    assert not (folder / "results").exists()


@pytest.mark.parametrize(("args", "words"), [row[1:] for row in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_clear_line(workdir, capsys, args, words):
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2
    assert_clear_error(code, captured.err, words, workdir)


def test_the_table_covers_at_least_twenty_kinds():
    assert len(ROWS) >= 20 and len({row[0] for row in ROWS}) == len(ROWS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_an_error_and_auto_falls_back(workdir, capsys):
    code = main(["run", "device=cuda"])
    assert_clear_error(
        code, capsys.readouterr().err, "device=cuda but CUDA is not available", workdir
    )

    code = main(["run", "device=auto", "replicates=50", "task.timing_min_run_time=0.001",
                 "hydra.run.dir=auto"])  # fmt: skip
    assert code == 0
    # Said once, by the job: the pre-check builds the cell without choosing a device.
    assert capsys.readouterr().err.count("device=auto: CUDA is not available, running on CPU") == 1
    assert (workdir / "auto" / "records.parquet").is_file()


def test_slurm_launcher_without_slurm_is_an_error(workdir, capsys, monkeypatch):
    # A PATH without the folders that hold sbatch, so that the test runs where Slurm is too.
    path = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv(
        "PATH", os.pathsep.join(d for d in path if not (Path(d) / "sbatch").exists())
    )
    assert shutil.which("sbatch") is None
    code = main(["run", "-m", "n_samples=1,2", "hydra/launcher=slurm_example"])
    err = capsys.readouterr().err
    assert_clear_error(code, err, "needs Slurm, and sbatch is not on this machine's PATH", workdir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_results_folder_is_an_error(workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    code = main(["run", f"hydra.run.dir={locked}/run"])
    assert_clear_error(code, capsys.readouterr().err, "is not writable", workdir)


def test_the_real_command_prints_one_line_and_no_traceback(workdir):
    """What a terminal shows: the installed ``gradbench``, run as a separate process."""
    cases = {
        "unknown estimator 'nope'": ["run", "estimator=nope"],
        "n_samples must be at least 1, got 0": ["run", "-m", "n_samples=1,0"],
    }
    procs = {
        words: subprocess.Popen(
            [str(GRADBENCH), *args],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for words, args in cases.items()
    }  # started together: each pays torch's import time, in parallel
    for words, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert_clear_error(proc.returncode, err, words, workdir)
        assert out == ""


def test_the_ray_hint_is_the_install_line_of_the_documents():
    """The hint names the command README (or docs/) gives for Ray, with only the ray extra."""
    from benchmarks.precheck import RAY_INSTALL

    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]
    commands = {
        # ".venv/bin/pip install ... '.[dev,ray]'   # comment" -> "pip install ... '.[ray]'"
        re.sub(r"\.\[[\w,]*\]", ".[ray]", line.split("#")[0].strip().removeprefix(".venv/bin/"))
        for page in pages
        for line in page.read_text().splitlines()
        if re.search(r"pip install .*'\.\[[\w,]*\bray\b", line)
    }
    assert commands == {RAY_INSTALL}
    assert "ray = [" in (root / "pyproject.toml").read_text()
