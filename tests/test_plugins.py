"""A researcher's own estimator, from outside the package: a config folder with an
importable module, and an installed package's entry point. Each path is run end to end
(``gradbench list``, ``run`` and ``verify``) in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import main
from tests.test_verify import PASS_RATE

GRADBENCH = [sys.executable, "-m", "benchmarks.cli"]
MODULE = '''
from estimators import Reinforce


class Halved(Reinforce):
    """REINFORCE times 0.5: a biased estimator that says it is unbiased."""

    def surrogate(self, objective, theta, n_samples):
        return 0.5 * super().surrogate(objective, theta, n_samples)


class Plain(Reinforce):
    """REINFORCE under a user's own name."""
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A module of the user's own and a config folder naming its classes."""
    (tmp_path / "my_estimators.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "conf" / "estimator"
    conf.mkdir(parents=True)
    (conf / "halved.yaml").write_text("_target_: my_estimators.Halved\n")
    (conf / "plain.yaml").write_text("_target_: my_estimators.Plain\n")
    return tmp_path


def test_verify_certifies_a_config_dir_estimator_and_catches_a_biased_one(user_folder, capsys):
    conf = str(user_folder / "conf")
    out = user_folder / "plain_cert"
    args = ["--config-dir", conf, "--replicates", "5000", "--false-fail", str(PASS_RATE)]
    assert main(["verify", "estimator=plain", *args, "--out", str(out)]) == 0
    assert json.loads((out / "verify.json").read_text())["ok"] is True
    capsys.readouterr()
    bad = user_folder / "halved_cert"
    assert main(["verify", "estimator=halved", f"--config-dir={conf}", "--replicates", "5000",
                 "--out", str(bad)]) == 1  # fmt: skip
    captured = capsys.readouterr()
    assert "claim fails: gaussian_quadratic" in captured.err
    assert "FAIL" in (bad / "verify.md").read_text()


def test_a_run_notes_a_claimed_unbiased_estimator_far_from_the_exact_gradient(user_folder, capsys):
    conf = str(user_folder / "conf")
    code = main(["run", "--config-dir", conf, "estimator=halved", "objective=gaussian_quadratic",
                 "replicates=2000", f"hydra.run.dir={user_folder / 'run'}",
                 "task.timing_min_run_time=0.001"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "note: halved claims to be unbiased, but its mean for mu is" in out


def test_verify_bad_input_is_one_line(capsys):
    assert main(["verify", "objective=gaussian_quadratic"]) == 2
    assert main(["verify", "estimator=reinforce", "--replicates", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("gradbench: error: ") for line in err)


def installed_plugin(site: Path) -> dict[str, str]:
    """A package installed into ``site`` the way pip lays one out: its module and a
    ``.dist-info`` folder whose entry_points.txt names the estimator."""
    site.mkdir()
    (site / "my_estimators.py").write_text(MODULE)
    info = site / "my_estimators-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-estimators\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[gradbench.estimators]\nmy_plain = my_estimators:Plain\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def test_an_entry_point_makes_the_estimator_an_option(tmp_path):
    env = installed_plugin(tmp_path / "site")
    listing = subprocess.run([*GRADBENCH, "list"], env=env, capture_output=True, text=True,
                             check=True, cwd=tmp_path)  # fmt: skip
    assert "my_plain" in listing.stdout.splitlines()[0]
    ran = subprocess.run(
        [*GRADBENCH, "run", "estimator=my_plain", "objective=bernoulli_threshold",
         "replicates=200", "task.timing_min_run_time=0.001", f"hydra.run.dir={tmp_path / 'r'}"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "my_plain" in ran.stdout and " ok" in ran.stdout
    verified = subprocess.run(
        [*GRADBENCH, "verify", "estimator=my_plain", "--replicates", "2000", "--false-fail",
         str(PASS_RATE),
         "--out", str(tmp_path / "cert")],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert json.loads((tmp_path / "cert" / "verify.json").read_text())["estimator"] == "my_plain"
    # Without the package the option does not exist.
    plain = subprocess.run([*GRADBENCH, "run", "estimator=my_plain"], capture_output=True,
                           text=True, cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 2 and "unknown estimator 'my_plain'" in plain.stderr


def test_the_python_example_of_the_docs_runs(tmp_path, monkeypatch, capsys):
    page = (Path(__file__).resolve().parents[1] / "docs" / "researcher.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/researcher.md", "exec"), {})
    out = capsys.readouterr().out
    assert (tmp_path / "variance.png").stat().st_size > 0
    assert "reparam" in out and "every claim holds" in out
