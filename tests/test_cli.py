"""The command line: a run, a sweep into a temporary folder, `list`, and bad input."""

import subprocess
import sys

import pandas as pd
import pytest

from benchmarks.cli import main
from benchmarks.measure import RECORD_COLUMNS

SPEC_COLUMNS = [
    "objective", "estimator", "task", "param", "n_samples", "replicates", "seed",
    "true_grad", "mean_grad", "var_grad", "bias", "bias_se", "time_per_estimate_s",
    "measure_time_s", "status",
]  # fmt: skip


def run(tmp_path, *overrides):
    code = main(["run", *overrides, f"hydra.run.dir={tmp_path}"])
    return code, pd.read_parquet(tmp_path / "records.parquet")


def test_run_writes_the_contract_columns_and_prints_a_table(tmp_path, capsys):
    code, records = run(
        tmp_path, "objective=gaussian_quadratic", "estimator=reinforce", "n_samples=10",
        "replicates=2000", "task.timing_min_run_time=0.001",
    )  # fmt: skip
    assert code == 0
    assert list(records.columns[: len(RECORD_COLUMNS)]) == RECORD_COLUMNS
    assert set(SPEC_COLUMNS) <= set(RECORD_COLUMNS)
    assert records["param"].tolist() == ["mu", "sigma"]
    assert (records["status"] == "ok").all()
    assert records["true_grad"].tolist() == [2.0, 2.0]
    assert (records["time_per_estimate_s"] > 0).all() and (records["measure_time_s"] > 0).all()
    # bias_se is the standard error of the mean of the replicates.
    assert records["bias_se"].tolist() == pytest.approx((records["var_grad"] / 2000) ** 0.5)
    out = capsys.readouterr().out
    assert "mean ± se" in out and "sigma" in out and "records:" in out
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_gives_the_same_numbers(tmp_path):
    overrides = ["estimator=reinforce_ema", "objective=categorical_linear", "n_samples=5",
                 "replicates=500", "seed=7", "task.timing_min_run_time=0.001"]  # fmt: skip
    _, first = run(tmp_path / "a", *overrides)
    _, second = run(tmp_path / "b", *overrides)
    _, other = run(tmp_path / "c", *overrides[:-2], "seed=8", "task.timing_min_run_time=0.001")
    stats = ["mean_grad", "var_grad", "bias", "bias_se"]
    pd.testing.assert_frame_equal(first[stats], second[stats])
    assert not first["mean_grad"].equals(other["mean_grad"])


def test_sweep_records_inapplicable_cells_as_skipped(tmp_path, capsys):
    code = main([
        "run", "-m", "objective=gaussian_quadratic,bernoulli_threshold",
        "estimator=reinforce_loo,reparam", "n_samples=1,3", "replicates=200",
        "task.timing_min_run_time=0.001", f"hydra.sweep.dir={tmp_path}",
    ])  # fmt: skip
    assert code == 0
    records = pd.concat(pd.read_parquet(p) for p in tmp_path.glob("*/records.parquet"))
    cells = records.drop_duplicates(["objective", "estimator", "n_samples"])
    assert len(cells) == 8
    keys = zip(cells.objective, cells.estimator, cells.n_samples, strict=True)
    status = dict(zip(keys, cells.status, strict=True))
    assert status["gaussian_quadratic", "reparam", 1] == "ok"
    assert status["gaussian_quadratic", "reinforce_loo", 3] == "ok"
    assert status["gaussian_quadratic", "reinforce_loo", 1].startswith("skipped: leave-one-out")
    assert status["bernoulli_threshold", "reparam", 3].startswith("skipped: reparameterization")
    out = capsys.readouterr().out
    assert "8 cells: 4 ok, 4 skipped" in out


def test_a_sweep_takes_hydras_range_choice_and_glob(tmp_path, capsys):
    code = main([
        "run", "-m", "objective=gaussian_quadratic", "estimator=glob(reinforce_l*)",
        "n_samples=range(2,4)", "seed=choice(0)", "replicates=50",
        "task.timing_min_run_time=0.001", f"hydra.sweep.dir={tmp_path}",
    ])  # fmt: skip
    assert code == 0
    folders = sorted(p.parent.name for p in tmp_path.glob("*/records.parquet"))
    assert folders == [
        f"estimator={e},n_samples={n},seed=0" for e in ("reinforce_learned", "reinforce_loo")
        for n in (2, 3)
    ]  # fmt: skip
    assert "4 cells: 4 ok" in capsys.readouterr().out


def test_hydras_cfg_flag_prints_the_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--cfg", "job", "estimator=reparam"]) == 0
    out = capsys.readouterr().out
    assert "_target_: estimators.Reparameterization" in out and "n_samples: 10" in out
    assert not (tmp_path / "results").exists()


def test_hydras_info_flag_takes_a_value_only_where_it_is_one_of_its_own(
    tmp_path, capsys, monkeypatch
):
    """``--info`` alone (all), or with one of Hydra's values; an override after it stays an
    override, which Hydra's info then shows."""
    from benchmarks.finished import split_args

    assert split_args(["--info", "n_samples=3"]) == (["n_samples=3"], {"--info": ""}, False)
    assert split_args(["-i", "defaults", "-m"]) == ([], {"-i": "defaults"}, True)
    assert split_args(["--info=plugins"]) == ([], {"--info": "plugins"}, False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--info", "defaults", "estimator=reparam"]) == 0
    out = capsys.readouterr().out
    assert "Defaults List" in out and "estimator/reparam" in out
    assert not (tmp_path / "results").exists()


def test_named_preset_runs_with_plus_or_without(tmp_path, capsys):
    # A tiny preset from a user config dir, run both ways the README shows.
    presets = tmp_path / "conf" / "sweep"
    presets.mkdir(parents=True)
    (presets / "tiny.yaml").write_text(
        "# @package _global_\nreplicates: 50\ntask:\n  timing_min_run_time: 0.001\n"
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
        "      estimator: reinforce,reparam\n      n_samples: 2\n"
    )
    for i, choice in enumerate(["+sweep=tiny", "sweep=tiny"]):
        out_dir = tmp_path / f"out{i}"
        code = main(["run", choice, "--config-dir", str(tmp_path / "conf"),
                     f"hydra.sweep.dir={out_dir}"])  # fmt: skip
        assert code == 0
        assert len(list(out_dir.glob("*/records.parquet"))) == 2
    assert "2 cells: 2 ok" in capsys.readouterr().out


def test_list_shows_estimators_objectives_and_compatibility(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "reinforce_optimal" in out and "categorical_linear" in out
    lines = [line.strip() for line in out.splitlines()]
    header = next(line for line in lines if line.startswith("objective ")).split()
    row = next(line for line in lines if line.startswith("bernoulli_threshold")).split()
    applies = dict(zip(header, row, strict=True))
    assert applies["reinforce"] == applies["reinforce_loo"] == "yes"
    assert applies["reparam"] == "-"  # a Bernoulli is not reparameterizable


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    """A user's config folder with an estimator ``const`` from a module of the user's own."""
    (tmp_path / "gradbench_user_estimator.py").write_text(
        "from estimators import Reinforce\n\n\n"
        'class Const(Reinforce):\n    """REINFORCE under the user\'s own name."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "conf" / "estimator").mkdir(parents=True)
    (tmp_path / "conf" / "estimator" / "const.yaml").write_text(
        "_target_: gradbench_user_estimator.Const\n"
    )
    return tmp_path / "conf"


@pytest.mark.parametrize("joined", [False, True], ids=["--config-dir DIR", "--config-dir=DIR"])
def test_a_user_estimator_from_a_config_dir_runs(tmp_path, user_conf, joined):
    flag = [f"--config-dir={user_conf}"] if joined else ["--config-dir", str(user_conf)]
    code, records = run(tmp_path / "out", *flag, "estimator=const", "replicates=50",
                        "task.timing_min_run_time=0.001")  # fmt: skip
    assert code == 0
    assert (records["estimator"] == "const").all() and (records["status"] == "ok").all()


def test_list_shows_the_options_of_a_config_dir(user_conf, capsys):
    listed = {}
    for args in ([], ["--config-dir", str(user_conf)], [f"--config-dir={user_conf}"]):
        assert main(["list", *args]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        listed[len(args)] = first.removeprefix("estimators: ").split(", ")
    assert "const" not in listed[0] and "reinforce" in listed[0]
    assert "const" in listed[1] and "const" in listed[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimator=nope"], "unknown estimator 'nope'; choose from: "),
        (["-m", "objective=gaussian_quadratic,nope"], "unknown objective 'nope'"),
        (["n_samples=0"], "n_samples must be at least 1, got 0"),
        (["-m", "n_samples=5,0"], "n_samples must be at least 1, got 0"),
        (["replicates=1"], "replicates must be at least 2"),
        (["objective.sigma=-1"], "objective.sigma must be > 0"),
        (["objective=categorical_linear", "objective.logits=[1,2]"], "objective.logits has 2"),
        (["n_samples=ten"], "n_samples must be an integer, got 'ten'"),
        (["n_sample=3"], "unknown setting 'n_sample'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    code = main(["run", *args, f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gradbench: error: ") and err.count("\n") == 1
    assert message in err
    assert not list(tmp_path.rglob("records.parquet"))


def test_sweep_summary_keeps_swept_settings_apart(tmp_path, capsys):
    # Variance vs sigma must not be averaged over sigma in the printed summary.
    code = main(["run", "-m", "estimator=reparam", "objective.sigma=0.5,2", "replicates=2000",
                 "task.timing_min_run_time=0.001", f"hydra.sweep.dir={tmp_path}"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("var_grad") :].splitlines()
    assert "objective.sigma" in table[2]
    mu_rows = [line.split() for line in table if " mu " in f" {line} "]
    # Pathwise variance of d/dmu is 4 sigma² / n_samples: 0.1 at sigma 0.5, 1.6 at sigma 2
    # (rel=0.1 is over 3 standard errors of a variance from 2000 Gaussian replicates).
    assert len(mu_rows) == 2
    variances = [float(row[-1]) for row in mu_rows]
    assert variances[0] == pytest.approx(0.1, rel=0.1)
    assert variances[1] == pytest.approx(1.6, rel=0.1)


def test_cached_composition_equals_hydras_own():
    # The pre-check composes each combination of config groups once and sets plain values
    # on a copy; that must give exactly what Hydra composes for the cell.
    from hydra import compose
    from omegaconf import OmegaConf

    from benchmarks.precheck import compose_cached, hydra_context

    cells = [
        ["estimator=reinforce_loo", "objective=gaussian_quadratic", "n_samples=3"],
        ["estimator=reinforce_loo", "objective=gaussian_quadratic", "objective.sigma=2.5"],
        ["estimator=gumbel_softmax", "estimator.temperature=0.3", "objective=categorical_linear",
         "objective.logits=[1,2,3]", "objective.rewards=[0,1,0]"],
        ["estimator=reinforce", "task=train", "task.steps=7", "+objective.extra=1"],
    ]  # fmt: skip
    cache = {}
    with hydra_context():
        for cell in cells:
            cached = OmegaConf.to_yaml(compose_cached("config", cell, cache))
            assert cached == OmegaConf.to_yaml(compose("config", overrides=cell))
    assert len(cache) == 3  # the first two cells share one composition


def test_a_measurement_in_several_chunks_shows_progress_on_a_terminal(monkeypatch):
    import io
    import sys

    from benchmarks.measure import replicate_gradients_chunked
    from benchmarks.objectives import GaussianQuadratic
    from estimators import Reinforce

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    objective = GaussianQuadratic()
    for size, shown in ((10, True), (10_000, False)):  # 100 chunks of one replicate, then one
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        grads = replicate_gradients_chunked(Reinforce(), objective, objective.theta, 10, 100, size)
        assert grads.shape == (100, 2)
        assert ("replicates" in terminal.getvalue()) is shown


def test_the_command_line_sets_passive_openmp_waits_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = "import os, benchmarks.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr


def test_report_and_compare_do_not_load_torch_or_hydra():
    # The cheap subcommands pay only for what they use.
    import subprocess
    import sys

    code = (
        "import sys, benchmarks.cli, benchmarks.compare;"
        "print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


EXIT_SCRIPT = """
import atexit, sys, threading, time
from benchmarks.cli import exit_now
atexit.register(lambda: print("atexit ran", file=sys.stderr))
print("x" * 100000)  # left in stdout's buffer
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()
exit_now(3)
print("not reached")
"""


@pytest.mark.parametrize("thread", [False, True], ids=["alone", "with a thread running"])
def test_exit_now_runs_atexit_flushes_and_waits_for_a_running_thread(tmp_path, thread):
    """``exit_now`` skips the interpreter's teardown, not what an exit owes: the code, the
    ``atexit`` handlers, whatever is left in stdout's buffer (here piped to a file), and a
    thread still running, which it waits for (by exiting the usual way)."""
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, "thread" if thread else "alone"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 3
    assert out.stdout.startswith("x" * 100000 + "\n") and "not reached" not in out.stdout
    assert ("thread done" in out.stdout) is thread
    assert "atexit ran" in out.stderr


def test_a_reader_that_goes_away_ends_the_console_script_quietly():
    """``gradbench list | head -1``: the reader closes the pipe before the table is
    written; the command ends with exit code 1 and nothing on stderr (no traceback)."""
    from pathlib import Path

    gradbench = Path(sys.executable).with_name("gradbench")
    with subprocess.Popen(
        [gradbench, "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        proc.stdout.close()  # before the command has written anything
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 1 and err == b""


def test_heavy_imports_pause_the_collector_only_in_the_console_script(monkeypatch):
    """``run`` and ``report`` import torch, pandas and Hydra with the collector off, then
    freeze what they loaded and turn it back on, also where the imports fail; inside a
    longer process (a test session) the collector is left as it is."""
    import gc

    from benchmarks import cli

    assert gc.isenabled() and gc.get_freeze_count() == 0
    with cli.heavy_imports():
        assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(cli, "_whole_process", True)
    try:
        with cli.heavy_imports():
            assert not gc.isenabled()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.unfreeze()
        with pytest.raises(ImportError), cli.heavy_imports():
            import benchmarks.no_such_module  # noqa: F401
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_forked_composer_collects_though_the_command_paused_its_collector(monkeypatch):
    """The composer is forked during the command's imports, collector off; composing a
    large sweep makes garbage, so it turns the collector back on."""
    import gc

    from benchmarks import precheck

    sent = []

    class Pipe:
        def send_bytes(self, data):
            sent.append(gc.isenabled())

        def close(self):
            pass

    monkeypatch.setattr(precheck.os, "dup2", lambda *_: None)  # keep this process's output
    monkeypatch.setattr(precheck, "compose_all", lambda *_: None)
    gc.disable()
    try:
        precheck._compose_and_send(Pipe(), [], {}, False)
    finally:
        gc.enable()
    assert sent == [True]


def test_the_console_script_runs_main_and_freezes_the_collector_for_a_quick_exit(monkeypatch):
    """``gradbench`` (pyproject's entry point) is ``console``: ``command``, then
    ``exit_now``. ``command`` gives ``main``'s exit code, with the objects frozen so that
    the interpreter's collections at exit skip them, also when ``main`` raises; only inside
    it does ``run`` freeze what it imported."""
    import gc
    from pathlib import Path

    from benchmarks import cli

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '\n[project.scripts]\ngradbench = "benchmarks.cli:console"\n' in pyproject
    seen = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(cli._whole_process) or 3)
    try:
        assert gc.get_freeze_count() == 0
        assert cli.command() == 3 and gc.get_freeze_count() > 0
        assert seen == [True] and cli._whole_process is False  # a test session's main: no
        gc.unfreeze()
        monkeypatch.setattr(cli, "main", lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            cli.command()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
