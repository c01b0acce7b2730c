"""A researcher's own estimator, from outside the package: a config folder with an
importable module, and an installed package's entry point. Each path is run end to end
(``gradbench list``, ``run`` and ``verify``) in a temporary folder, and the path of
docs/researcher.md as a new user takes it: its files, its commands, the installed
``gradbench`` command."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.cli import main
from tests.stats import power_margin, rate
from tests.test_verify import PASS_RATE

DOCS = Path(__file__).resolve().parents[1] / "docs" / "researcher.md"

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


@pytest.mark.slow  # tens of seconds of process starts; CI runs it
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
    page = DOCS.read_text()
    block = page.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/researcher.md", "exec"), {})
    out = capsys.readouterr().out
    assert (tmp_path / "variance.png").stat().st_size > 0
    assert "reparam" in out and "every claim holds" in out


def docs_section(title: str) -> str:
    """The text of the docs/researcher.md section whose heading starts with ``title``."""
    return DOCS.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def docs_commands(section: str) -> list[list[str]]:
    """The ``gradbench`` command lines of a section's bash blocks, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("gradbench ")]


@pytest.mark.slow  # tens of seconds of process starts; CI runs it
def test_the_researcher_path_of_the_docs_with_the_installed_command(tmp_path):
    """A fresh folder with only what docs/researcher.md shows, and the installed
    ``gradbench`` script (not ``python -m``, which would find modules in the current
    folder): run the estimator, verify it, sweep it beside the classics, change it,
    sweep again, compare. Each command is the page's own line."""
    command = Path(sys.executable).with_name("gradbench")
    assert command.is_file(), "the package's console script is installed in the venv"
    plug_in = docs_section("Plug it in")
    files = re.findall(r"```(?:python|yaml)\n# my_work/(\S+)\n(.*?)```", plug_in, flags=re.S)
    assert {name for name, _ in files} == {
        "my_estimators.py", "conf/estimator/const.yaml", "conf/sweep/mine.yaml"
    }  # fmt: skip
    work = tmp_path / "my_work"
    for name, text in files:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    assert "export PYTHONPATH=$PWD" in plug_in
    env = {**os.environ, "PYTHONPATH": str(work)}

    def gradbench(args, environment=env):
        return subprocess.run([str(command), *args], cwd=work, env=environment,
                              capture_output=True, text=True)  # fmt: skip

    runs = {args[0] + " " + args[-1]: args for args in docs_commands(plug_in)}
    single = runs["run estimator.c=2"]
    done = gradbench([*single, "task.timing_min_run_time=0.001"])
    assert done.returncode == 0, done.stderr
    assert re.search(r"gaussian_quadratic +const .* ok", done.stdout)
    # Without the folder on PYTHONPATH: the one-line error the page quotes.
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    missing = gradbench(single, bare)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "gradbench: error: estimator: cannot import 'my_estimators.ConstBaseline': "
        "No module named 'my_estimators'"
    )

    certify = docs_commands(docs_section("Certify it"))[1]
    verified = gradbench([*certify, "--replicates", "2000", "--false-fail", str(PASS_RATE),
                          "--out", "cert"])  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "every claim holds" in verified.stdout
    assert json.loads((work / "cert" / "verify.json").read_text())["estimator"] == "const"

    compare = docs_commands(docs_section("Compare two versions"))
    assert [args[0] for args in compare] == ["run", "run", "compare"]
    assert gradbench(compare[0]).returncode == 0
    yaml = work / "conf" / "estimator" / "const.yaml"  # the change the page makes
    yaml.write_text(yaml.read_text().replace("c: 0.0", "c: 1.0"))
    assert gradbench(compare[1]).returncode == 0
    compared = gradbench(compare[2])
    assert compared.returncode == 1, compared.stdout + compared.stderr
    cell = "estimator=const,objective=bernoulli_threshold"
    assert f"regression: {cell} [logit]: variance ×" in compared.stderr
    assert "9 rows compared, 1 regression;" in compared.stdout
    table = pd.read_csv(work / "results" / "v2" / "compare.csv")
    assert len(table) == 9
    # The classics ran the same computation with the same seed: ratios of exactly 1, so
    # no alarm can be raised on them.
    classics = table[table["estimator"] != "const"]
    assert (classics["var_ratio"] == 1).all() and (classics["bias_shift_se"] == 0).all()
    assert not (classics["variance_grew"] | classics["bias_appeared"]).any()
    # Power, judged from this draw (as in tests/test_compare.py), at the default rate.
    row = table.set_index("run_dir").loc[cell]
    se = math.log(row["ci_high"] / row["ci_low"]) / (2 * 1.959964)
    # Two tests share the family: tests/test_compare.py and tests/test_plugins.py.
    margin = power_margin(rate("miss: compare: a variance increase through the CLI is flagged") / 2)
    growth_z = (math.log(row["var_ratio"]) - math.log(1.1)) / se
    assert growth_z > power_margin(1e-3 / len(table)) + margin + 1
