"""The check's compositions made ahead, in a second process: what the check takes from them
must be what it would have composed itself, and a config copied from a ``Snapshot`` must
be what ``copy.deepcopy`` gives.

``ComposedAhead`` only forks where torch is not imported, so its own tests run in a fresh
interpreter; the rest call ``compose_all`` (what the forked process runs) in this one.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from benchmarks import precheck
from benchmarks.cli import main
from benchmarks.errors import UsageError
from benchmarks.schema import hydra_context
from hydra_plugins.gradbench_sweeper._compose import Snapshot

FAST = ["task.warmup_steps=2", "task.timing_min_run_time=0.001", "replicates=100"]
GRID = ["objective=gaussian_quadratic,categorical_linear", "estimator=reinforce,reparam",
        "n_samples=1,2"]  # fmt: skip


def assert_same_nodes(a, b, path: str = "") -> None:
    """Two configs alike node by node: node types, metadata (flags, types, keys) and values."""
    assert type(a) is type(b), path
    assert a._metadata == b._metadata, path
    if isinstance(a, DictConfig):
        assert list(a.keys()) == list(b.keys()), path
        for key in a:
            assert_same_nodes(a._get_node(key), b._get_node(key), f"{path}.{key}")
    elif isinstance(a, ListConfig):
        assert len(a) == len(b), path
        for i in range(len(a)):
            assert_same_nodes(a._get_node(i), b._get_node(i), f"{path}[{i}]")
    else:
        assert a._value() == b._value(), path


def full_composition() -> DictConfig:
    """A cell's whole config, Hydra node included, as a sweep's launcher composes it."""
    loader = GlobalHydra.instance().config_loader()
    return loader.load_configuration(
        "config", ["sweep=toy_variance", "hydra/launcher=joblib"], run_mode=RunMode.MULTIRUN
    )


def test_a_snapshot_copy_is_what_deepcopy_gives_and_stands_alone():
    with hydra_context():
        cfg = full_composition()
    str(cfg.hydra.run.dir)  # a resolver's cached value (${now:...}), which copies keep
    snapshot = Snapshot(cfg)
    copied, deep = snapshot.copy(), copy.deepcopy(cfg)
    assert_same_nodes(copied, deep)
    assert OmegaConf.get_cache(copied) == OmegaConf.get_cache(deep) != {}
    launcher = copied.hydra._get_node("launcher")._metadata.object_type
    assert launcher is cfg.hydra._get_node("launcher")._metadata.object_type  # the same class
    copied.n_samples = 999
    copied.hydra.job.name = "changed"
    assert cfg.n_samples != 999 and cfg.hydra.job.name != "changed"
    assert_same_nodes(snapshot.copy(), deep)  # a later copy is as the snapshot was taken
    with pytest.raises(AssertionError):  # negative control: the comparison sees a change
        assert_same_nodes(copied, deep)


class Given:
    """Compositions as ``ComposedAhead`` hands them over, made here."""

    def __init__(self, made):
        self.made = made

    def result(self):
        return self.made


def composing_forbidden(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("composed although the compositions were given")

    monkeypatch.setattr(precheck, "compose", forbidden)
    monkeypatch.setattr(precheck, "sweep_axes", forbidden)
    monkeypatch.setattr(precheck.SharedCompositions, "__call__", forbidden)


def test_the_check_takes_the_compositions_made_ahead_and_plans_the_same(tmp_path, monkeypatch):
    overrides = [*FAST, *GRID, f"hydra.sweep.dir={tmp_path}"]
    made = precheck.compose_all(overrides, {}, True)
    assert len(made.cells) == len(made.full) == 4  # one per combination of groups
    own = precheck.check_run(overrides, {}, True)
    with monkeypatch.context() as patched:
        composing_forbidden(patched)
        given = precheck.check_run(overrides, {}, True, ahead=Given(made))
    assert given.hashes == own.hashes and len(own.hashes) == 8
    assert given.added == own.added and given.output_dir == own.output_dir
    assert set(given.shared.full) == set(own.shared.full)
    for lines, cfg in own.shared.full.items():
        assert OmegaConf.to_yaml(given.shared.full[lines]) == OmegaConf.to_yaml(cfg)


def test_the_check_composes_itself_where_the_config_files_changed(tmp_path, monkeypatch):
    overrides = [*FAST, *GRID, f"hydra.sweep.dir={tmp_path}"]
    made = precheck.compose_all(overrides, {}, True)
    own = precheck.check_run(overrides, {}, True)
    made.inputs = "composed from other files"
    made.cells = {key: OmegaConf.create({"n_samples": -1}) for key in made.cells}
    assert precheck.check_run(overrides, {}, True, ahead=Given(made)).hashes == own.hashes
    made.inputs = own.inputs  # negative control: the same stale cells, taken, fail the check
    with pytest.raises(UsageError, match="Missing key"):
        precheck.check_run(overrides, {}, True, ahead=Given(made))


def test_compositions_made_ahead_leave_out_the_cells_the_check_will_keep(tmp_path):
    overrides = [*FAST, *GRID, f"hydra.sweep.dir={tmp_path}"]
    assert main(["run", "-m", *overrides]) == 0
    assert precheck.compose_all(overrides, {}, True).cells == {}  # every cell kept
    cell = "estimator=reparam,n_samples=2,objective=gaussian_quadratic"
    (tmp_path / cell / "records.parquet").unlink()
    made = precheck.compose_all(overrides, {}, True)
    (structural,) = made.cells  # that cell's combination alone
    assert structural[1:] == ("objective=gaussian_quadratic", "estimator=reparam")
    plan = precheck.check_run(overrides, {}, True, ahead=Given(made))
    assert len(plan.kept) == 7 and len(plan.hashes) == 8


def test_what_composing_ahead_warned_the_check_warns(tmp_path, monkeypatch):
    real = precheck.sweep_axes

    def warning_sweep_axes(*args):
        warnings.warn("a warning from composing", UserWarning, stacklevel=1)
        return real(*args)

    monkeypatch.setattr(precheck, "sweep_axes", warning_sweep_axes)
    overrides = [*FAST, "estimator=reinforce", f"hydra.sweep.dir={tmp_path}"]
    made = precheck.compose_all(overrides, {}, True)
    assert made.warnings == [("a warning from composing", UserWarning)]
    monkeypatch.setattr(precheck, "sweep_axes", real)
    with pytest.warns(UserWarning, match="a warning from composing"):
        precheck.check_run(overrides, {}, True, ahead=Given(made))


AHEAD_SCRIPT = """
import json, sys
from omegaconf import OmegaConf
from benchmarks import precheck
overrides = json.loads(sys.argv[1])
ahead = precheck.ComposedAhead(overrides, {}, True)
forked = ahead.process is not None
made = ahead.result()
from benchmarks.schema import hydra_context
from hydra_plugins.gradbench_sweeper import _compose
before = len(_compose._LOADS)  # nothing parsed yet in this process
_compose.take_parsed_files(made.parsed)
taken = len(_compose._LOADS)
with hydra_context():
    first = next(precheck.cells_to_check(made.fixed, made.axes))
    precheck.compose("config", overrides=first, return_hydra_config=True)
parsed = [before, taken, len(_compose._LOADS),
          all(open(path, "rb").read() == data for path, data in made.parsed)]
bad = precheck.ComposedAhead(["estimator=no_such_estimator"], {}, True)
bad_forked, bad_made = bad.process is not None, bad.result()
import torch  # noqa: F401
print(json.dumps({
    "forked": forked, "bad": [bad_forked, bad_made is None], "parsed": parsed,
    "after_torch": precheck.ComposedAhead(overrides, {}, True).process is not None,
    "cells": {"\\n".join(k): OmegaConf.to_yaml(v) for k, v in made.cells.items()},
    "full": {"\\n".join(k): OmegaConf.to_yaml(v) for k, v in made.full.items()},
}))
"""


def test_composed_ahead_forks_before_torch_and_hands_back_compose_all(tmp_path):
    overrides = [*FAST, *GRID, f"hydra.sweep.dir={tmp_path}"]
    out = subprocess.run(
        [sys.executable, "-c", AHEAD_SCRIPT, json.dumps(overrides)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # the forked process says nothing, even of a bad command
    got = json.loads(out.stdout)
    if sys.platform != "linux":
        assert not got["forked"]
        return
    assert got["forked"] and got["bad"] == [True, True] and not got["after_torch"]
    # The files the forked process parsed, taken here: composing the first cell parses
    # none of them again (each is its path and bytes, the same as on disk).
    before, taken, after, same_bytes = got["parsed"]
    assert before == 0 and taken > 0 and after == taken and same_bytes
    made = precheck.compose_all(overrides, {}, True)
    assert got["cells"] == {"\n".join(k): OmegaConf.to_yaml(v) for k, v in made.cells.items()}
    assert set(got["full"]) == {"\n".join(k) for k in made.full}
    here = {"\n".join(k): OmegaConf.to_yaml(v) for k, v in made.full.items()}
    for key, text in got["full"].items():  # the same but for each process's own cwd
        assert text.replace(f"cwd: {tmp_path}\n", "") == here[key].replace(
            f"cwd: {os.getcwd()}\n", ""
        )


def test_a_sweep_run_with_compositions_made_ahead_writes_the_same_files(tmp_path, monkeypatch):
    """The command in a fresh interpreter (compositions made ahead) and here (composed by
    the check): every cell's Hydra files and records' measured values are the same."""
    args = ["run", "-m", *FAST, *GRID, f"hydra.sweep.dir={tmp_path}", "resume=false"]
    script = (
        "import sys, json\nfrom benchmarks import precheck\nfrom benchmarks.cli import main\n"
        "seen = []\nreal = precheck.ComposedAhead.result\n"
        "precheck.ComposedAhead.result = lambda self: seen.append(self.process is not None) "
        "or real(self)\nrc = main(json.loads(sys.argv[1]))\nprint(json.dumps([rc, seen]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rc, seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and seen == [sys.platform == "linux"]

    def files() -> dict[str, str]:
        return {
            str(p.relative_to(tmp_path)): p.read_text()
            for p in sorted(tmp_path.glob("*/.hydra/*.yaml"))
        }

    def measured():
        import pandas as pd

        frames = [pd.read_parquet(p) for p in sorted(tmp_path.glob("*/records.parquet"))]
        keep = ["objective", "estimator", "n_samples", "param", "status", "mean_grad", "var_grad",
                "config_hash"]  # fmt: skip
        return pd.concat(frames)[keep].reset_index(drop=True)

    ahead_files, ahead_records = files(), measured()
    monkeypatch.chdir(tmp_path)  # as the command ran
    assert main(args) == 0
    assert len(ahead_files) == 8 * 3 and files() == ahead_files
    assert measured().equals(ahead_records)


def test_a_bad_command_is_still_one_line_from_the_console_script(tmp_path):
    """The forked process composes nothing it can send; the check's own composition gives
    the one-line error, said once."""
    gradbench = Path(sys.executable).with_name("gradbench")
    out = subprocess.run(
        [str(gradbench), "run", "-m", "estimator=reinforce,no_such_estimator", "n_samples=1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("gradbench: error: unknown estimator 'no_such_estimator'")
    assert not (tmp_path / "results").exists()
