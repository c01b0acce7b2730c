"""The gradbench sweeper (hydra_plugins/gradbench_sweeper): what it skips must not change
what a sweep computes.

Its cheap per-cell config equals Hydra's own composition; complete cells are kept without
being composed or launched; cells the pre-check did not see are still validated; progress
is one line on a terminal and nothing per cell in a log.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys

import pandas as pd
import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from benchmarks import precheck, run
from benchmarks.cli import main
from benchmarks.config import joblib_jobs
from benchmarks.schema import hydra_context
from benchmarks.storage import RECORDS
from hydra_plugins.gradbench_sweeper import _compose, _core
from hydra_plugins.gradbench_sweeper import gradbench_sweeper as plugin

FAST = ["task.warmup_steps=2", "task.timing_min_run_time=0.001", "replicates=100"]
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys=[sweep,threads,resume]"


def sweep(folder, *overrides) -> int:
    return main(["run", "-m", *FAST, f"hydra.sweep.dir={folder}", *overrides])


def test_hydras_plugin_scan_finds_the_sweeper_and_the_config_selects_it():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = {c.__name__ for c in Plugins.instance().discover(Sweeper)}
    assert "GradbenchSweeper" in names and "BasicSweeper" in names
    with hydra_context():
        cfg = precheck.compose("config", overrides=[], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("gradbench_sweeper.GradbenchSweeper")


def master_and_cells(overrides: list[str]):
    """The master config of a multirun and its cells, as Hydra's own sweeper makes them."""
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
    task = [o for o in overrides if not o.startswith("hydra.")]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    return loader, master, BasicSweeper.split_arguments(parsed, None)[0]


def assert_cheap_equals_hydra(overrides: list[str], stride: int = 1) -> int:
    """Each cell's config from the sweeper's loader, with the composition caches, equals
    Hydra's own composition without them."""
    with _compose.hydras_own():
        loader, master, cells = master_and_cells(overrides)
    cheap = _core.CachingConfigLoader(loader)
    for cell in cells[::stride]:
        with _compose.hydras_own():
            own = loader.load_sweep_config(master, list(cell))
        fast = cheap.load_sweep_config(master, list(cell))
        for key in ("job.override_dirname", "overrides.task", "runtime.choices"):
            assert OmegaConf.select(fast.hydra, key) == OmegaConf.select(own.hydra, key), key
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(own), cell
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(own)
        for node in ("", "hydra", "hydra.job", "estimator", "task"):
            pair = (OmegaConf.select(fast, node), OmegaConf.select(own, node))
            flags = [(OmegaConf.is_struct(c), OmegaConf.is_readonly(c)) for c in pair]
            assert flags[0] == flags[1], node
    return len(cells[::stride])


def preset(conf, name: str, body: str, params: dict[str, str]):
    """A user's preset ``conf/sweep/NAME.yaml``: top-level ``body``, swept ``params``."""
    path = conf / "sweep" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    swept = "".join(f"      {key}: {values}\n" for key, values in params.items())
    path.write_text(f"# @package _global_\n{body}hydra:\n  sweeper:\n    params:\n{swept}")
    return path


def test_cheap_cell_configs_equal_hydras_own_composition(tmp_path):
    preset(tmp_path / "conf", "mixed", "", {
        "estimator": "gumbel_softmax,straight_through", "objective": "categorical_linear",
        "estimator.temperature": "0.3,1", "+objective.extra": "1,2",
    })  # fmt: skip
    with hydra_context():
        n = assert_cheap_equals_hydra(
            ["sweep=mixed", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", EXCLUDE,
             f"hydra.sweep.dir={tmp_path}", "n_samples=3", "task.timing_min_run_time=0.002"]
        )  # fmt: skip
        assert n == 8
        # a few cells of each preset (every cell: the slow test below)
        assert assert_cheap_equals_hydra(["sweep=toy_variance", EXCLUDE], stride=13) == 5


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["toy_variance", "toy_scale"])
def test_every_cell_of_the_toy_presets_composes_as_hydra_composes_it(preset):
    with hydra_context():
        assert assert_cheap_equals_hydra([f"sweep={preset}", EXCLUDE]) in (60, 100)


def test_a_plain_value_meeting_an_addition_is_composed_by_hydra(monkeypatch):
    with hydra_context():
        loader, master, _ = master_and_cells(["estimator=reinforce"])
        calls = []
        real = loader.load_sweep_config
        monkeypatch.setattr(loader, "load_sweep_config", lambda *a: calls.append(a) or real(*a))
        cheap = _core.CachingConfigLoader(loader)
        cfg = cheap.load_sweep_config(master, ["+objective.extra={a: 1}", "objective.extra.a=2"])
        assert cfg.objective.extra.a == 2 and len(calls) == 1
        cheap.load_sweep_config(master, ["n_samples=4"])
        assert len(calls) == 1  # plain values alone: the cached composition


def test_a_finished_sweep_is_kept_without_composing_or_launching_a_cell(tmp_path, monkeypatch):
    grid = ["estimator=reinforce,reparam", "n_samples=1,3"]
    assert sweep(tmp_path, *grid) == 0
    assert (tmp_path / precheck.PLAN_FILE).is_file()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob(f"*/{RECORDS}")}
    assert len(before) == 4

    def forbidden(*args, **kwargs):
        raise AssertionError("composed or launched a complete cell")

    monkeypatch.setattr(precheck, "compose_cached", forbidden)
    monkeypatch.setattr(_core.CachingConfigLoader, "load_sweep_config", forbidden)
    monkeypatch.setattr(Sweeper, "validate_batch_is_legal", forbidden)
    monkeypatch.setattr(run, "run_cell", forbidden)
    assert sweep(tmp_path, *grid, "hydra/launcher=joblib") == 0  # the launcher is no matter
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob(f"*/{RECORDS}")} == before


def test_an_edited_config_is_composed_again_and_its_cells_rerun(tmp_path):
    preset(tmp_path / "conf", "tiny", "seed: 5\n", {"n_samples": "2,3"})
    args = ["sweep=tiny", "--config-dir", str(tmp_path / "conf"), "estimator=reinforce"]
    assert sweep(tmp_path / "out", *args) == 0
    preset(tmp_path / "conf", "tiny", "seed: 6\n", {"n_samples": "2,3"})
    assert sweep(tmp_path / "out", *args) == 0
    records = pd.concat(pd.read_parquet(p) for p in (tmp_path / "out").glob(f"*/{RECORDS}"))
    assert len(records) == 4 and set(records["seed"]) == {6}


def test_pre_checked_cells_are_not_validated_again_others_are(tmp_path, monkeypatch, capsys):
    # Patched on Hydra's Sweeper base class: Hydra's plugin scan runs the plugin modules
    # again, making new sweeper classes, but not hydra.plugins.
    validated = []
    real = Sweeper.validate_batch_is_legal
    monkeypatch.setattr(
        Sweeper,
        "validate_batch_is_legal",
        lambda self, batch: validated.append(len(batch)) or real(self, batch),
    )
    assert sweep(tmp_path / "checked", "n_samples=1,2") == 0
    assert validated == []
    # The Hydra job run on its own (no pre-check): Hydra's validation, as before.
    argv = ["run", "-m", *FAST, f"hydra.sweep.dir={tmp_path / 'bare'}", "n_samples=1,2"]
    monkeypatch.setattr(sys, "argv", argv)
    run.main()
    assert validated == [2]
    assert len(list((tmp_path / "bare").glob(f"*/{RECORDS}"))) == 2
    monkeypatch.setattr(sys, "argv", [*argv[:-1], "n_samples=1,ten"])
    with pytest.raises(SystemExit):
        run.main()  # Hydra's own composition error, before any cell runs
    assert "n_samples=ten" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "log"])
def test_progress_is_one_line_on_a_terminal_and_quiet_in_a_log(tmp_path, monkeypatch, capsys, tty):
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert sweep(tmp_path, "estimator=reinforce,reparam", "n_samples=1,3") == 0
    err, out = stream.getvalue(), capsys.readouterr().out
    assert "#0 :" not in out + err and "Launching" not in out + err  # no line per cell
    assert "4 cells: 4 ok" in out
    if tty:
        assert err.count("\r") == 4 and "cells 4/4: 0 kept, 0 failed" in err
    else:
        assert err.splitlines() == [f"gradbench: 4 cells into {tmp_path}"]
    # On a terminal a finished sweep run again shows every cell kept, at once.
    if tty:
        stream.truncate(0)
        assert sweep(tmp_path, "estimator=reinforce,reparam", "n_samples=1,3") == 0
        assert "cells 4/4: 4 kept, 0 failed" in stream.getvalue()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_keeps_no_counted_cells_config(tmp_path, monkeypatch, launcher):
    """What the sweep returns (each cell's status and return value) holds none of the
    cells' configs, which Hydra's job step put there (the cells run in this process show
    them as they end)."""
    from hydra._internal.hydra import Hydra

    returned, stepped = [], []
    multirun, step = Hydra.multirun, _core.run_job

    def keep(*args, **kwargs):  # what the sweep returns, which Hydra's caller drops
        returned.extend(r for batch in multirun(*args, **kwargs) for r in batch)

    def run_job(*args):
        ret = step(*args)
        stepped.append(ret.cfg is not None and ret.hydra_cfg is not None)
        return ret

    monkeypatch.setattr(Hydra, "multirun", keep)
    monkeypatch.setattr(_core, "run_job", run_job)
    grid = ["estimator=reinforce,reparam", "n_samples=1,3", f"hydra/launcher={launcher}"]
    assert sweep(tmp_path, *grid) == 0
    assert [r.return_value for r in returned] == ["ok"] * 4
    assert all(r.cfg is None and r.hydra_cfg is None for r in returned)
    assert stepped and all(stepped)


def test_under_joblib_progress_moves_as_each_batch_returns(tmp_path, monkeypatch, capsys):
    """Two batches per worker: on a terminal the line is rewritten as each returns (in
    whatever order), and ends with every cell; the records are each cell's, in order."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    grid = ["estimator=reinforce,reparam", "n_samples=1,3"]
    assert sweep(tmp_path, "hydra/launcher=joblib", *grid) == 0
    err = stream.getvalue()
    batches = min(4, joblib_jobs(-1) * plugin.BATCHES_PER_JOB)
    assert err.count("\r") == batches and "cells 4/4: 0 kept, 0 failed" in err
    assert "4 cells: 4 ok" in capsys.readouterr().out
    for folder in tmp_path.glob(f"*/{RECORDS}"):
        record = pd.read_parquet(folder)
        assert f"estimator={record['estimator'][0]}" in folder.parent.name


def test_failed_cells_are_those_whose_task_recorded_them_failed():
    from hydra.core.utils import JobReturn, JobStatus

    recorded, ok, raised = JobReturn(), JobReturn(), JobReturn()
    recorded.return_value, ok.return_value = "failed", "ok"
    recorded.status = ok.status = JobStatus.COMPLETED
    raised.return_value, raised.status = RuntimeError("the task raised"), JobStatus.FAILED
    assert _core.count_failed([recorded, ok, raised]) == 1


def test_progress_counts_failed_cells_and_estimates_time_left():
    stream = Terminal()
    progress = _core.Progress(4, stream)
    progress.update(kept=1)
    progress.update(ran=1, failed=1)
    assert "cells 2/4: 1 kept, 1 failed, about" in stream.getvalue().split("\r")[-1]
    progress.close()
    assert stream.getvalue().endswith("\n")


def test_joblib_batches_cover_every_cell_once_in_order():
    cells = list(range(11))
    batches = _core.chunks(cells, 4)
    assert [len(b) for b in batches] == [3, 3, 3, 2]
    assert [c for b in batches for c in b] == cells
    assert _core.chunks(cells[:2], 4) == [[0], [1]]
    assert plugin.BatchedJoblibLauncher.__mro__[1].__name__ == "JoblibLauncher"


def test_the_pre_checks_compositions_give_the_launcher_the_same_files(tmp_path, monkeypatch):
    """The launcher takes the pre-check's composition of each combination instead of
    composing it again: every file of every cell is the same as without sharing."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    grid = ["objective=gaussian_quadratic,categorical_linear", "estimator=reinforce,reparam"]
    calls = []
    real = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(
        ConfigLoaderImpl, "load_configuration", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    def run_and_read() -> tuple[dict[str, str], int]:
        calls.clear()
        assert sweep(tmp_path, *grid, "n_samples=1,2", "resume=false") == 0
        texts = {
            str(p.relative_to(tmp_path)): p.read_text()
            for p in sorted(tmp_path.glob("*/.hydra/*.yaml"))
        }
        return texts, len(calls)

    with monkeypatch.context() as alone:
        alone.setattr(precheck, "SharedCompositions", lambda *args: None)
        files_alone, composed_alone = run_and_read()
    files_shared, composed_shared = run_and_read()
    assert len(files_alone) == 8 * 3 and files_shared == files_alone
    assert composed_alone - composed_shared == 4  # one per combination, in the launcher


def test_submitit_runs_several_cells_per_task_with_the_same_records(tmp_path, monkeypatch):
    """``hydra.sweeper.cells_per_task=3``: 4 cells in 2 submitit tasks, the records of one
    task per cell (the code path of hydra/launcher=submitit_slurm). On a terminal the
    progress line moves as each task ends, not once when the launch returns."""
    grid = ["objective=categorical_linear", "estimator=reinforce,reinforce_loo", "n_samples=2,3"]
    frames = {}
    for per_task in (1, 3):
        out = tmp_path / str(per_task)
        stream = Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        code = sweep(out, *grid, "hydra/launcher=submitit_local",
                     f"hydra.sweeper.cells_per_task={per_task}")  # fmt: skip
        assert code == 0
        moves = [m.group(1) for m in re.finditer(r"gradbench: cells (\d)/4", stream.getvalue())]
        tasks = 4 if per_task == 1 else 2
        assert len(moves) == tasks and moves[-1] == "4", stream.getvalue()
        frames[per_task] = pd.concat(
            {p.parent.name: pd.read_parquet(p) for p in sorted(out.glob(f"*/{RECORDS}"))}
        ).drop(columns=["time_per_estimate_s", "measure_time_s", "work_normalized_var"])
        ran = {p.name for p in (out / ".submitit").iterdir() if p.name.isdigit()}
        assert len(ran) == tasks, ran
    assert len(frames[1]) == 4 * 3  # a row per logit
    pd.testing.assert_frame_equal(frames[1], frames[3])


def test_cells_per_task_below_one_is_refused_in_one_line(tmp_path, capsys):
    assert sweep(tmp_path, "n_samples=1,2", "hydra.sweeper.cells_per_task=0") == 2
    assert "cells_per_task must be at least 1, got 0" in capsys.readouterr().err


GRADBENCH_MAIN = (
    "import sys, benchmarks.cli as cli; code = cli.main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules); sys.exit(code)"
)


def run_again(cwd, args):
    """The same command in a new process (``python -c`` on the CLI), from ``cwd``."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", GRADBENCH_MAIN, *args], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_finished_sweep_run_again_is_its_summary_without_torch(tmp_path):
    """The command of a finished sweep, run again, prints the summary from its note
    (benchmarks.finished) without importing torch or composing; a missing cell's records
    take the ordinary path, which runs that cell only."""
    args = ["run", "-m", *FAST, "hydra.sweep.dir=out", "estimator=reinforce,reparam",
            "n_samples=1,3"]  # fmt: skip
    first = run_again(tmp_path, args)
    assert "4 cells: 4 ok (4 run now, 0 kept" in first and "torch imported: True" in first
    again = run_again(tmp_path, args)
    assert "4 cells: 4 ok (0 run now, 4 kept" in again and "torch imported: False" in again
    assert again.split("(0 run now")[0] == first.split("(4 run now")[0]  # the same table
    (tmp_path / "out" / "estimator=reparam,n_samples=3" / RECORDS).unlink()
    rerun = run_again(tmp_path, args)
    assert "4 cells: 4 ok (1 run now, 3 kept" in rerun and "torch imported: True" in rerun


def test_a_finished_sweeps_note_holds_only_while_its_configs_are_unchanged(tmp_path):
    from benchmarks import finished

    conf = tmp_path / "conf"
    preset(conf, "mine", "replicates: 100\n", {"n_samples": "1,3"})
    before = finished.inputs_digest(str(conf))
    assert finished.inputs_digest(str(conf)) == before
    preset(conf, "mine", "replicates: 200\n", {"n_samples": "1,3"})
    assert finished.inputs_digest(str(conf)) != before
    assert finished.finished(["run", "-m", "sweep=never_run"], None) is None


@pytest.mark.parametrize("chdir", [False, True])
def test_the_in_process_job_step_is_hydras_run_job(tmp_path, monkeypatch, chdir):
    """``_core.run_job`` (what ``hydra/launcher=basic`` runs each cell with) and Hydra's own
    ``run_job`` on the same cells: the task sees the same config, Hydra node, working
    directory and environment; ``.hydra/`` holds byte-identical files; the returns agree,
    for a task that returns and one that raises."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRADBENCH_TEST_ENV", raising=False)

    def task(cfg):
        seen.append({
            "cfg": OmegaConf.to_container(cfg), "struct": OmegaConf.is_struct(cfg),
            "type": OmegaConf.get_type(cfg), "readonly": OmegaConf.is_readonly(cfg),
            "yaml": OmegaConf.to_yaml(cfg), "keys": list(cfg),
            "hydra": OmegaConf.to_container(HydraConfig.get()), "cwd": __import__("os").getcwd(),
            "env": __import__("os").environ.get("GRADBENCH_TEST_ENV"),
        })  # fmt: skip
        if cfg.n_samples == 3:
            raise RuntimeError("a failing cell")
        return f"ran with {cfg.n_samples} samples"

    overrides = [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.job.chdir={chdir}",
                 "++hydra.job.env_set.GRADBENCH_TEST_ENV=set", "estimator=reinforce,reparam",
                 "n_samples=2,3"]  # fmt: skip
    with hydra_context():
        loader, master, cells = master_and_cells(overrides)
        context = HydraContext(config_loader=loader, callbacks=None)
        from hydra._internal.callbacks import Callbacks

        context.callbacks = Callbacks(master)
        outcomes = {}
        for name, step in {
            "hydra": lambda cfg: run_job(
                task, cfg, "hydra.sweep.dir", "hydra.sweep.subdir", context
            ),  # fmt: skip
            "gradbench": lambda cfg: _core.run_job(task, cfg, context),
        }.items():
            seen, returns = [], []
            for idx, cell in enumerate(cells):
                cfg = loader.load_sweep_config(master, list(cell))
                with open_dict(cfg):
                    cfg.hydra.job.id = cfg.hydra.job.num = idx
                returns.append(step(cfg))
            files = {str(p.relative_to(tmp_path)): p.read_bytes()
                     for p in sorted(tmp_path.glob("sweep/*/.hydra/*.yaml"))}  # fmt: skip
            shutil.rmtree(tmp_path / "sweep")
            outcomes[name] = seen, returns, files
    (seen_h, ret_h, files_h), (seen_g, ret_g, files_g) = outcomes["hydra"], outcomes["gradbench"]
    assert len(files_h) == 3 * len(cells) == 12 and files_g == files_h
    assert seen_g == seen_h and {s["env"] for s in seen_h} == {"set"}
    assert all((s["cwd"] == s["hydra"]["runtime"]["output_dir"]) == chdir for s in seen_h)
    assert "GRADBENCH_TEST_ENV" not in __import__("os").environ
    for h, g in zip(ret_h, ret_g, strict=True):
        assert (g.status, g.overrides, g.working_dir, g.task_name) == (
            h.status, h.overrides, h.working_dir, h.task_name)  # fmt: skip
        assert OmegaConf.to_container(g.cfg) == OmegaConf.to_container(h.cfg)
        assert OmegaConf.to_container(g.hydra_cfg.hydra) == OmegaConf.to_container(
            h.hydra_cfg.hydra
        )
        if h.status.name == "FAILED":
            assert repr(g._return_value) == repr(h._return_value)
        else:
            assert g.return_value == h.return_value
    assert sorted(h.status.name for h in ret_h) == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"]


def test_the_composition_caches_read_an_edited_file_again(tmp_path):
    """A copy of conf/ whose primary config and an estimator's file are rewritten between two
    compositions, in the same clock tick and at the same size: the second composition has
    the new values, as Hydra's own has."""
    from hydra import initialize_config_dir

    from benchmarks.finished import SOURCE_CONF

    conf = tmp_path / "conf"
    shutil.copytree(SOURCE_CONF, conf)
    primary, option = conf / "config.yaml", conf / "estimator" / "reinforce_ema.yaml"
    texts = {path: path.read_text() for path in (primary, option)}
    assert "seed: 0\n" in texts[primary] and "decay: 0.9" in texts[option]
    overrides = ["estimator=reinforce_ema"]
    _compose.install()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        first = loader.load_configuration("config", overrides, run_mode=RunMode.RUN)
        primary.write_text(texts[primary].replace("seed: 0\n", "seed: 7\n"))
        option.write_text(texts[option].replace("decay: 0.9", "decay: 0.5"))
        second = loader.load_configuration("config", overrides, run_mode=RunMode.RUN)
        with _compose.hydras_own():
            own = loader.load_configuration("config", overrides, run_mode=RunMode.RUN)
    assert (first.seed, first.estimator.baseline.decay) == (0, 0.9)
    assert (second.seed, second.estimator.baseline.decay) == (7, 0.5)
    assert OmegaConf.to_yaml(second) == OmegaConf.to_yaml(own)


def test_compositions_leave_the_cached_files_as_parsed():
    """The file cache hands out its parsed configs without a copy for building the defaults
    tree; the merge copies them first. After compositions of several combinations, each
    then changed, every cached file's config is still what its bytes parse to."""
    with hydra_context():
        loader = GlobalHydra.instance().config_loader()
        for estimator in ["reinforce", "reinforce_ema", "reparam"]:
            cfg = loader.load_configuration(
                "config",
                [f"estimator={estimator}", "objective=gaussian_quadratic", "sweep=toy_scale"],
                run_mode=RunMode.RUN,
            )
            cfg.seed, cfg.replicates, cfg.hydra.job.name = 99, 99, "changed"
            for node in (cfg.objective, cfg.estimator, cfg.task, cfg.hydra.sweeper.params):
                for key in list(node.keys()):
                    node[key] = 0
    cached = {key: result for key, result in _compose._LOADS.items() if key[0] != "structured"}
    assert len(cached) > 10
    for (path, text), result in cached.items():
        parsed = OmegaConf.to_container(OmegaConf.create(text.decode()))
        parsed.pop("defaults", None)  # Hydra's loader keeps it as the result's defaults list
        assert OmegaConf.to_container(result.config) == parsed, path


def test_a_config_edited_during_a_sweep_leaves_no_note_that_it_finished(tmp_path, monkeypatch):
    """The note of a finished sweep carries the digest of the configs its cells were checked
    and composed from: a config file written after the check (during the sweep) makes the
    same command take the ordinary path. Run again unchanged, the sweep is noted."""
    from benchmarks import finished

    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    preset(conf, "mine", "replicates: 100\n", {"n_samples": "1,3"})
    args = ["-m", "sweep=mine", "--config-dir", str(conf), "estimator=reinforce",
            "objective=categorical_linear", *FAST]  # fmt: skip
    real = precheck.check_run

    def check_then_edit(*a, **k):
        plan = real(*a, **k)
        (conf / "sweep" / "other.yaml").write_text("# @package _global_\nseed: 3\n")
        return plan

    with monkeypatch.context() as editing:
        editing.setattr(precheck, "check_run", check_then_edit)
        assert main(["run", *args]) == 0
    assert finished.finished(args, str(conf)) is None
    assert main(["run", *args]) == 0  # every cell kept; the configs now as checked
    noted = finished.finished(args, str(conf))
    assert noted is not None and noted[1] == 2


def test_a_worker_takes_the_pre_checks_composition_only_where_it_would_compose_the_same(
    tmp_path, monkeypatch
):
    """The config loader travels to joblib's workers with the pre-check's compositions (to
    submitit's tasks without them); a worker takes one where its working directory and
    ``hydra.job.env_copy`` variables are those it was composed with, and composes its own
    where they differ."""
    import cloudpickle  # what joblib sends a task with
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    monkeypatch.setenv("GRADBENCH_TEST_COPY", "one")
    hydra_lines = ["hydra.mode=MULTIRUN", "hydra.job.env_copy=[GRADBENCH_TEST_COPY]"]
    lines = ["estimator=reinforce", "objective=gaussian_quadratic"]
    with hydra_context():
        shared = precheck.SharedCompositions("config", hydra_lines)
        shared(lines)
        loader = _core.CachingConfigLoader(GlobalHydra.instance().config_loader(), shared)
        assert cloudpickle.loads(cloudpickle.dumps(loader)).shared is None  # a submitit task
        loader.to_workers = True  # as under hydra/launcher=joblib
        worker = cloudpickle.loads(cloudpickle.dumps(loader))
        assert list(worker.shared.full) == [tuple(lines)]
        calls = []
        real = ConfigLoaderImpl.load_configuration
        monkeypatch.setattr(
            ConfigLoaderImpl, "load_configuration", lambda *a, **k: calls.append(1) or real(*a, **k)
        )
        structural = _core.parse([*hydra_lines, *lines])
        taken = worker._composed("config", hydra_lines, structural)
        assert taken is worker.shared.full[tuple(lines)] and calls == []
        monkeypatch.setenv("GRADBENCH_TEST_COPY", "two")  # the variable differs here
        assert worker._composed("config", hydra_lines, structural).hydra.job.env_set == {
            "GRADBENCH_TEST_COPY": "two"
        }
        monkeypatch.setenv("GRADBENCH_TEST_COPY", "one")
        monkeypatch.chdir(tmp_path)  # another working directory
        assert worker._composed("config", hydra_lines, structural).hydra.runtime.cwd == str(
            tmp_path
        )
        assert len(calls) == 2
        assert _core.made_here(taken) is False


def executor_ended(executor, seconds: float = 60) -> bool:
    """Whether every worker of a loky executor has exited within ``seconds`` (a bound on a
    process exit, not a timing)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(p.is_alive() for p in list(executor._processes.values())):
            return True
        time.sleep(0.05)
    return False


def joblib_launcher(*overrides: str):
    """The ``hydra/launcher=joblib`` node as a sweep composes it, with ``overrides``."""
    with hydra_context():
        cfg = precheck.compose(
            "config", ["hydra/launcher=joblib", *overrides], return_hydra_config=True
        )
    return cfg.hydra.launcher


def worker_pid_and_freeze(position, batch, payload):
    """A batch's run in a worker for the tests below: who ran it, and the worker's state."""
    import gc

    if payload == b"raise":
        raise RuntimeError("a batch that raises")
    if payload == b"sleep":
        import time

        time.sleep(60)
    return position, [(os.getpid(), gc.get_freeze_count(), cell) for cell in batch]


def test_started_workers_are_the_ones_the_launcher_uses_with_their_collector_frozen():
    """The worker the check starts (``StartedWorkers``; two cells at once: this process
    and one worker) is the pool the launcher feeds (``WorkerFeed``): every batch it gives
    it runs once, there (not in this process), after its imports, its collector frozen;
    stopping ends it."""
    launcher = joblib_launcher("hydra.launcher.n_jobs=2")
    started = _core.StartedWorkers(launcher, ["benchmarks.run"])
    assert _core.worker_count(launcher) == 1 and _core.worker_pool(launcher) is started.executor
    queue = _core.BatchQueue([["a", "b"], ["c"], ["d"], ["e", "f"]])
    returned = {}
    feed = _core.WorkerFeed(launcher, queue, worker_pid_and_freeze, b"", returned.__setitem__,
                            started)  # fmt: skip
    feed.join()
    pids = started.wait()
    assert len(pids) == 1 and os.getpid() not in pids
    assert sorted(returned) == [0, 1, 2, 3]
    assert [c for i in range(4) for _, _, c in returned[i]] == list("abcdef")
    assert {pid for batch in returned.values() for pid, _, _ in batch} <= pids
    assert all(frozen > 0 for batch in returned.values() for _, frozen, _ in batch)
    executor = started.executor
    feed.stop()
    assert executor_ended(executor)


def test_a_batch_queue_hands_each_batch_out_once_to_whoever_asks():
    queue = _core.BatchQueue([[1], [2, 3], [4]])
    assert queue.take() == (0, [1])
    assert list(queue) == [(1, [2, 3]), (2, [4])]
    assert queue.take() is None
    queue = _core.BatchQueue([[1], [2]])
    queue.close()
    assert list(queue) == []


def test_a_workers_launch_state_is_unpickled_once_per_launch():
    """Every batch brings the launch's pickled state; a worker unpickles the same bytes
    once (its later batches go on from the same objects), and a new launch's afresh."""
    import cloudpickle

    first, second = cloudpickle.dumps({"launch": 1}), cloudpickle.dumps({"launch": 2})
    state = _core.unpickled(first)
    assert state == {"launch": 1} and _core.unpickled(bytes(first)) is state
    assert _core.unpickled(second) == {"launch": 2}
    assert _core.unpickled(first) is not state  # the first launch's was let go


def test_a_workers_cells_run_from_the_launchs_working_directory(tmp_path, monkeypatch):
    """A worker started while a cell here was in its own folder (``hydra.job.chdir``)
    runs its batch from the folder the launch was made in, which travels with its state."""
    import cloudpickle
    from hydra.core.singleton import Singleton

    launch, elsewhere = tmp_path / "launch", tmp_path / "a cell's folder"
    launch.mkdir(), elsewhere.mkdir()
    seen = []
    monkeypatch.setattr(_core, "freeze_worker", lambda: None)  # not in a test session
    monkeypatch.setattr(_core, "launch_batch", lambda *a: seen.append(os.getcwd()) or [])
    config = OmegaConf.create({"hydra": {"job": {"name": "app"}}})
    state = (None, config, None, Singleton.get_state(), str(launch))
    monkeypatch.chdir(elsewhere)
    assert plugin.execute_cells(3, [], cloudpickle.dumps(state)) == (3, [])
    assert seen == [str(launch)]


def test_a_workers_failure_is_raised_once_the_feed_is_joined():
    """A batch that raises in a worker stops that worker's feed, and ``join`` raises it;
    the batches it did not take stay in the queue, for this process to take."""
    launcher = joblib_launcher("hydra.launcher.n_jobs=2")
    queue = _core.BatchQueue([["a"], ["b"], ["c"]])
    feed = _core.WorkerFeed(launcher, queue, worker_pid_and_freeze, b"raise",
                            lambda *a: None)  # fmt: skip
    with pytest.raises(RuntimeError, match="a batch that raises"):
        feed.join()
    assert list(queue) == [(1, ["b"]), (2, ["c"])]
    feed.stop()


def test_a_batch_past_joblibs_timeout_stops_the_sweep_with_its_error():
    """``hydra.launcher.timeout``: seconds a batch may take, as joblib's per task; one
    that takes longer raises joblib's ``TimeoutError`` (the sleeping worker is killed)."""
    launcher = joblib_launcher("hydra.launcher.n_jobs=2", "hydra.launcher.timeout=1")
    queue = _core.BatchQueue([["a"]])
    feed = _core.WorkerFeed(launcher, queue, worker_pid_and_freeze, b"sleep",
                            lambda *a: None)  # fmt: skip
    with pytest.raises(TimeoutError):
        feed.join()
    executor = feed.executor
    feed.stop(kill=True)
    assert executor_ended(executor)


def test_under_joblib_with_one_job_no_worker_is_started(tmp_path):
    """``n_jobs=1``: one cell at a time, this process runs them all, and nothing is
    started (a worker would only cost its start)."""
    from joblib.externals.loky import reusable_executor

    before = reusable_executor._executor
    grid = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "estimator=reinforce,reparam"]
    assert sweep(tmp_path, *grid) == 0
    assert len(list(tmp_path.glob(f"*/{RECORDS}"))) == 2
    assert reusable_executor._executor is before


def test_a_joblib_sweep_refused_by_the_check_ends_its_started_workers(tmp_path, capsys):
    """The check starts joblib's workers at the first cell; a later cell it refuses ends
    them at once, and the refusal is the one line it always is."""
    from joblib.externals.loky import reusable_executor

    code = sweep(tmp_path, "hydra/launcher=joblib", "n_samples=10,0")
    assert code == 2
    refusal = "gradbench: error: n_samples must be at least 1, got 0"
    assert capsys.readouterr().err.strip() == refusal
    assert reusable_executor._executor is not None  # they had been started
    assert executor_ended(reusable_executor._executor)


def test_a_joblib_sweep_ends_its_workers_when_it_ends(tmp_path):
    """When a joblib sweep ends its workers end, and what the cells this process ran set
    is set back: torch's threads, and Hydra's logging (no cell's file handler is left; each
    cell logs to its own ``run.log``)."""
    import logging

    import torch
    from joblib.externals.loky import reusable_executor

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the cells here set 1 (two cells at once on 2 CPUs) or more
    try:
        assert sweep(tmp_path, "hydra/launcher=joblib", "estimator=reinforce,reparam") == 0
        assert torch.get_num_threads() == 2  # as the sweep found it
    finally:
        torch.set_num_threads(threads)
    assert len(list(tmp_path.glob(f"*/{RECORDS}"))) == 2
    assert len(list(tmp_path.glob("*/run.log"))) == 2
    assert executor_ended(reusable_executor._executor)
    after = logging.getLogger().handlers
    assert not [h for h in after if str(tmp_path) in getattr(h, "baseFilename", "")]


def test_each_cell_logs_to_its_own_file_and_hydras_logging_is_back_between_cells(
    tmp_path, monkeypatch
):
    """Under the basic launcher a cell's log lines go to its own ``run.log`` (Hydra's job
    logging), and each cell starts from Hydra's own logging (set up once, set back after
    every cell): no cell's file handler is left for the next, or for the sweep after."""
    import logging

    real = run.run_cell
    seen = []

    def logging_cell(cfg, estimator_name, objective_name):
        root = logging.getLogger()
        seen.append([h.baseFilename for h in root.handlers if hasattr(h, "baseFilename")])
        logging.getLogger("gradbench.test").info("measuring %s", estimator_name)
        return real(cfg, estimator_name, objective_name)

    monkeypatch.setattr(run, "run_cell", logging_cell)
    assert sweep(tmp_path, "estimator=reinforce,reparam,reinforce_loo") == 0
    for name in ["reinforce", "reparam", "reinforce_loo"]:
        log = (tmp_path / f"estimator={name}" / "run.log").read_text()
        assert re.findall(r"measuring (\w+)$", log, re.M) == [name]
    assert [len(files) for files in seen] == [1, 1, 1]  # only the cell's own file
    assert len({files[0] for files in seen}) == 3
    after = logging.getLogger().handlers
    assert not [h for h in after if str(tmp_path) in getattr(h, "baseFilename", "")]
