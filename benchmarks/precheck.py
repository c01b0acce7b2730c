"""The pre-check: every cell of a run or sweep composed and built before Hydra runs any.

Bad input (an unknown estimator, ``n_samples=0``, ``objective.sigma=-1``, an unwritable
results folder) becomes a ``UsageError`` with a one-line message, instead of a traceback
from the middle of a sweep. Each cell is built with ``benchmarks.config.build_cell``, the
call the job makes, so a cell that passes the check is a cell the job accepts.

``check_run`` also plans the run: a sweep goes to a folder named after the command
(``results/sweeps/<preset>`` or ``results/sweeps/<preset or "sweep">-<hash of the
overrides>``), one sub-folder per cell named by the cell's swept values, so running the
same command again finds the cells already done and runs only the others
(``benchmarks.run``).

The check's compositions can be made ahead, by a process forked before the command imports
torch (``ComposedAhead``, running ``compose_all``); this module imports neither torch nor
pandas at its top for that, only where a cell is built.

The option table of ``gradbench list`` composes configs too, and lives here as well.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
import math
import os
import pickle
import re
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmarks.errors import ConfigError, UsageError
from benchmarks.finished import config_dir_of, inputs_digest
from benchmarks.schema import RESULT_NEUTRAL_KEYS, cell_dirname, config_hash, hydra_context
from benchmarks.storage import RECORDS, records_complete, write_atomic
from hydra_plugins.gradbench_sweeper._compose import Snapshot, parsed_files, take_parsed_files
from hydra_plugins.gradbench_sweeper._core import (
    CELL_SUBDIR,
    JOBLIB_TARGET,
    StartedWorkers,
    without_hydra,
    worker_count,
)

if TYPE_CHECKING:
    import pandas as pd

GROUPS = ("estimator", "objective", "task", "data", "sweep", "hydra/launcher")
# How type errors name the type the schema wanted.
TYPE_NAMES = {"integer": "an integer", "float": "a number", "bool": "true or false"}
# Sweeps up to this many cells are checked cell by cell; larger ones value by value.
MAX_CELLS_CHECKED = 2000
# The ray launcher is the `ray` extra; constraints.txt keeps its pins in one resolvable set.
RAY_INSTALL = "pip install -c constraints.txt -e '.[ray]' --config-settings editable_mode=compat"
# Errors of composing or building a config that the pre-check turns into one line.
CONFIG_ERRORS = (HydraException, OmegaConfBaseException, ConfigError)


def one_line(exc: BaseException) -> str:
    """The first line of an exception and of each exception it was raised from."""
    parts = []
    if isinstance(exc, OverrideParseException) and exc.override:
        parts.append(f"cannot parse {exc.override!r}")
    while exc is not None:
        line = (str(exc).strip() or type(exc).__name__).splitlines()[0].strip()
        unknown = re.match(r"Could not override '(.+)'\.", line)
        if unknown:
            line = f"unknown setting {unknown.group(1)!r} (to add a new key, prefix it with +)"
        if line not in parts:
            parts.append(line)
        exc = exc.__cause__
    message = ": ".join(parts)
    wrong_type = re.match(
        r"Error merging override ([^=]+)=.*: Value '(.*)' (?:of type '\w+' could not be "
        r"converted to|is not a valid) (\w+)",
        message,
    )
    if wrong_type:  # OmegaConf's wording, from the schema in benchmarks/schema.py
        key, value, kind = wrong_type.groups()
        message = f"{key} must be {TYPE_NAMES.get(kind.lower(), kind.lower())}, got {value!r}"
    return message


def normalise_overrides(overrides: list[str]) -> list[str]:
    """``+sweep=NAME`` is accepted as a synonym of ``sweep=NAME`` (sweep defaults to null)."""
    return [o[1:] if o.startswith("+sweep=") else o for o in overrides]


def config_dir_override(config_dir: str | None) -> list[str]:
    """The override that adds a user's config folder to Hydra's search path, as Hydra does.

    Raises:
        UsageError: if ``config_dir`` is not a folder.
    """
    if config_dir is None:
        return []
    if not Path(config_dir).is_dir():
        raise UsageError(f"--config-dir: no such folder: {config_dir}")
    return [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]


def group_options(group: str, search_path: Sequence[str] = ()) -> list[str]:
    """Options of a config group, including those of ``hydra.searchpath`` overrides."""
    loader = GlobalHydra.instance().config_loader()
    return sorted(
        loader.get_group_options(group, config_name="config", overrides=list(search_path))
    )


def _check_group_choices(parsed, search_path: Sequence[str] = ()) -> None:
    for override in parsed:
        key = override.key_or_group
        if key not in GROUPS or override.is_delete():
            continue
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        options = group_options(key, search_path)
        for value in values:
            if value in ("null", "None") and key == "sweep":
                continue
            if value not in options:
                hint = ""
                if key == "hydra/launcher" and value == "ray":
                    hint = f" (the ray launcher is an extra: {RAY_INSTALL})"
                raise UsageError(
                    f"unknown {key} {value!r}; choose from: {', '.join(options)}{hint}"
                )


def sweep_axes(overrides: list[str], config_name: str) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides fixed for every cell, and the values of each swept key.

    Sweeps come from the command line (``a=1,2``) and from a preset's
    ``hydra.sweeper.params``; as in Hydra's basic sweeper, the command line wins.
    """
    # With the config loader: a glob over a group's options (``estimator='glob(reinforce*)'``)
    # lists them through it.
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed = parser.parse_overrides(overrides)
    search_path = [o.input_line for o in parsed if o.get_key_element() == "hydra.searchpath"]
    _check_group_choices(parsed, search_path)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        base = compose(config_name, overrides=fixed, return_hydra_config=True)
    except CONFIG_ERRORS as exc:
        raise UsageError(one_line(exc) + _swept_group_hint(parsed)) from exc
    preset = OmegaConf.select(base, "hydra.sweeper.params") or {}
    # A value fixed on the command line replaces the preset's axis for that key.
    fixed_keys = {o.get_key_element() for o in parsed if not o.is_sweep_override()}
    sweep_lines = [f"{k}={v}" for k, v in preset.items() if k not in fixed_keys]
    sweep_lines += [o.input_line for o in parsed if o.is_sweep_override()]
    axes: dict[str, list[str]] = {}
    for override in parser.parse_overrides(sweep_lines):
        _check_group_choices([override], search_path)
        key = override.get_key_element()
        if override.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            axes[key] = [override.input_line]
    return fixed, axes


def _swept_group_hint(parsed) -> str:
    """How to set a key of swept group options (``-m estimator=iwae,dreg estimator.k=10``):
    Hydra composes a sweep's settings with the group's default option first, which may not
    have the key, so the key must be added where it is missing (``++``)."""
    swept = {o.key_or_group for o in parsed if o.is_sweep_override() and o.key_or_group in GROUPS}
    for o in parsed:
        key = o.get_key_element()
        if _is_plain_value(o) and key.split(".")[0] in swept:
            return f"; to set it on every swept {key.split('.')[0]} option, write ++{o.input_line}"
    return ""


def cells_to_check(fixed: list[str], axes: dict[str, list[str]]) -> Iterator[list[str]]:
    """Every cell, or for a sweep of more than ``MAX_CELLS_CHECKED`` cells every value."""
    if math.prod(len(values) for values in axes.values()) <= MAX_CELLS_CHECKED:
        for cell in itertools.product(*axes.values()):
            yield fixed + list(cell)
        return
    # Too many cells to compose one by one: vary one axis at a time around the first
    # value of every other axis, so that every value given is still checked.
    first = [values[0] for values in axes.values()]
    for i, values in enumerate(axes.values()):
        for value in values:
            yield fixed + first[:i] + [value] + first[i + 1 :]


def _is_plain_value(override) -> bool:
    """A change of one value (``n_samples=10``, ``objective.sigma=2``), not of what is composed."""
    key = override.get_key_element()
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_sweep_override()
        and key not in GROUPS
        and "/" not in key
        and not key.startswith("hydra")
    )


def structural_lines(cell: Sequence[str]) -> tuple[str, ...]:
    """The overrides of a cell that change what is composed (all but its plain values)."""
    return tuple(line for line in cell if not _is_plain_value(parse_one(line)))


def compose_cached(config_name: str, cell: list[str], cache: dict, composer=None) -> DictConfig:
    """``compose(config_name, overrides=cell)``, sharing work between similar cells.

    Composing costs Hydra a tenth of a second or more; cells that differ only in plain
    values share one composition, and the values are set on a copy, as Hydra sets them.
    Group choices, additions, deletions and Hydra's own keys change what is composed, so
    they key the cache (``structural_lines``; its values are ``Snapshot``s). On any error
    the cell is composed in full, for Hydra's own message. ``composer(structural)``
    composes a combination where given (``SharedCompositions``).
    """
    structural = structural_lines(cell)
    if structural not in cache:
        make = composer or (lambda lines: compose(config_name, overrides=list(lines)))
        cache[structural] = Snapshot(make(structural))
    cfg = cache[structural].copy()
    try:
        for override in map(parse_one, cell):  # a sweep's cells repeat their lines
            if _is_plain_value(override):
                OmegaConf.update(cfg, override.get_key_element(), override.value(), merge=True)
    except OmegaConfBaseException:
        return compose(config_name, overrides=cell)
    return cfg


# The job name Hydra gives ``benchmarks.run``'s task function (its file's name): it is part
# of every composed config (hydra.job.name).
JOB_NAME = "run"


class SharedCompositions:
    """The pre-check's compositions, made as the in-process launcher will make them.

    Each combination of config groups is composed with the Hydra overrides the CLI will
    hand to Hydra and Hydra's job name, so that the sweeper's config loader
    (hydra_plugins/gradbench_sweeper) can take it instead of composing it again when the
    sweep's Hydra overrides are indeed these (``hydra_lines``). The pre-check checks the
    same composition without its ``hydra`` node, which is what ``compose`` returns.
    """

    def __init__(self, config_name: str, hydra_lines: list[str]) -> None:
        self.config_name = config_name
        self.hydra_lines = hydra_lines
        self.full: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, structural: Sequence[str]) -> DictConfig:
        from hydra.core.utils import JobRuntime
        from hydra.types import RunMode

        lines = sorted(line for line in structural if not parse_one(line).is_hydra_override())
        runtime = JobRuntime.instance()
        name = runtime.get("name")
        runtime.set("name", JOB_NAME)
        loader = GlobalHydra.instance().config_loader()
        try:
            overrides = [*self.hydra_lines, *lines]
            full = loader.load_configuration(self.config_name, overrides, run_mode=RunMode.RUN)
        finally:
            runtime.set("name", name)
        self.full[tuple(lines)] = full
        return without_hydra(full)  # a copy, its large Hydra node left out, not copied


def launcher_hydra_lines(overrides: list[str], plan, first: DictConfig, flag: bool) -> list[str]:
    """The Hydra overrides the sweep's master config will list, in Hydra's order: the
    command's, the CLI's additions, and ``hydra.mode=MULTIRUN`` where Hydra adds it (``-m``
    given, the config not setting the mode)."""
    parsed = OverridesParser.create().parse_overrides([*overrides, *plan.added])
    lines = [o.input_line for o in parsed if o.is_hydra_override()]
    if flag and first.hydra.mode is None:
        lines.append("hydra.mode=MULTIRUN")
    return lines


@dataclass
class Plan:
    """What a checked ``gradbench run`` will do, and the overrides the CLI adds for it."""

    multirun: bool
    output_dir: Path  # the run folder, or the sweep folder of a multirun
    cells: int
    added: list[str] = field(default_factory=list)
    # The fingerprint (``config_hash``) of every cell, by ``cell_key``, and the cells found
    # complete (kept, not run).
    hashes: dict[tuple[str, ...], str] = field(default_factory=dict)
    kept: set[tuple[str, ...]] = field(default_factory=set)
    # Keys left out of a cell's folder name (``hydra.job.config.override_dirname``), and
    # whether cell folders are named as conf/config.yaml names them (else only Hydra knows).
    exclude_keys: list[str] = field(default_factory=list)
    cell_folders: bool = False
    resume: bool = True  # the composed ``resume`` setting
    # ``benchmarks.finished.inputs_digest`` of the configs the check composed the cells from.
    inputs: str = ""
    # Set by the sweeper where a launcher's task ended without finishing (a Slurm task
    # cancelled or killed): one line saying so; the CLI prints it with the summary.
    interrupted: str | None = None
    # The pre-check's compositions, for the launcher (None where they cannot be shared).
    shared: SharedCompositions | None = None
    # joblib's workers, started at the first cell to run (``hydra/launcher=joblib``).
    workers: Any = None

    def cell_folder(self, key: tuple[str, ...]) -> Path | None:
        """The folder of the cell ``key`` (a ``cell_key``), as its job will name it."""
        from hydra._internal.config_loader_impl import get_overrides_dirname

        if not self.cell_folders:
            return None
        parsed = [parse_one(line) for line in key]
        name = get_overrides_dirname(parsed, self.exclude_keys, item_sep=",", kv_sep="=")
        return self.output_dir / cell_dirname(name)


# The file in a sweep folder with the fingerprint of every cell the pre-check composed, and
# of what they were composed from: a run of the same command from the same configs finds
# its complete cells without composing them again.
PLAN_FILE = ".gradbench-plan.json"


# The plan of the sweep this process is about to run, for the sweeper
# (hydra_plugins/gradbench_sweeper): the cells it lists are checked, and their fingerprints
# tell complete cells without composing them. Set by ``check_run``, cleared by the CLI.
_planned: dict[str, Plan] = {}


@functools.lru_cache(maxsize=100_000)
def parse_one(line: str):
    """One override, parsed (Hydra's parser takes milliseconds a line; sweeps repeat lines).
    The result is shared: read it, do not change it."""
    return OverridesParser.create().parse_overrides([line])[0]


def cell_key(cell: Sequence[str]) -> tuple[str, ...]:
    """A cell's overrides other than Hydra's, in one spelling and order (a cell's identity)."""
    return tuple(sorted(
        f"{o.get_key_element()}={o.get_value_element_as_str()}"
        for o in map(parse_one, cell)
        if not o.is_hydra_override()
    ))  # fmt: skip


def planned_sweep(sweep_dir: Path) -> Plan | None:
    """The pre-check's plan of the sweep into ``sweep_dir``: which cells it checked, their
    fingerprints, which it found complete (None where the sweep runs without the pre-check)."""
    plan = _planned.get("sweep")
    if plan is None or plan.output_dir.resolve() != Path(sweep_dir).resolve():
        return None
    return plan


def forget_plan() -> None:
    _planned.clear()


def command_config(overrides: list[str], flags: dict[str, str]) -> tuple[str, str | None, list]:
    """The primary config's name, ``--config-dir``, and the overrides with its search path."""
    config_name = flags.get("--config-name") or flags.get("-cn") or "config"
    config_dir = config_dir_of(flags)
    return config_name, config_dir, [*overrides, *config_dir_override(config_dir)]


def shared_compositions(first, overrides, config_name, config_dir, multirun, plan):
    """The ``SharedCompositions`` of a sweep whose cells run where Hydra is given the same
    overrides and config tree (None for a single run or a ``--config-dir`` tree)."""
    if not plan.multirun or config_dir is not None:
        return None
    lines = launcher_hydra_lines(overrides, plan, first, multirun)
    return SharedCompositions(config_name, lines)


def check_run(
    overrides: list[str],
    flags: dict[str, str],
    multirun: bool = False,
    workers: bool = False,
    ahead: ComposedAhead | None = None,
) -> Plan:
    """Compose and build every cell; raise ``UsageError`` on the first bad one.

    A cell of a sweep run before from the same configs (``PLAN_FILE``) whose records are
    complete is not composed again: it will not run. Also checks what Hydra would
    otherwise report with a traceback: a sweep without ``-m``, a results folder that
    cannot be written, Slurm's launcher without Slurm. ``workers``: start joblib's workers
    at the first cell that will run, for the caller to run the sweep on (``Plan.workers``).
    ``ahead``: the compositions made meanwhile by another process, taken where they were
    made from the same config files (else, or where it made none, the check composes).
    """
    config_name, config_dir, overrides = command_config(overrides, flags)
    made = ahead.result() if ahead is not None else None
    digest = inputs_digest(config_dir)
    forget_plan()
    plan = None
    with hydra_context():
        try:
            if made is not None and made.inputs != digest:
                made = None  # a config file changed meanwhile
            if made is not None:
                fixed, axes = made.fixed, made.axes
                warnings_again(made.warnings)
                take_parsed_files(made.parsed)  # for Hydra's own compositions at its start
            else:
                fixed, axes = sweep_axes(overrides, config_name)
            cache: dict = {}
            built: dict = {}  # objects shared by the cells' checks (build_cell)
            hashes = {}
            for i, cell in enumerate(cells_to_check(fixed, axes)):
                if i == 0:
                    first = (
                        made.first
                        if made
                        else compose(config_name, overrides=cell, return_hydra_config=True)
                    )
                    remote = runs_elsewhere(first.hydra, multirun)
                    plan, known, inputs = planned(
                        first, overrides, config_name, config_dir, multirun, axes, digest
                    )
                    if made is not None:
                        cache = {key: Snapshot(cfg) for key, cfg in made.cells.items()}
                        if plan.shared is not None:
                            plan.shared.full.update(made.full)
                key = cell_key(cell)
                if is_kept(plan, known, key):
                    hashes[key] = known[key]
                    plan.kept.add(key)
                    continue
                if workers and plan.workers is None:
                    plan.workers = started_workers(first.hydra, plan)
                cfg = compose_cached(config_name, cell, cache, plan.shared)
                check_cell(cfg, remote, built)
                hashes[key] = config_hash(cfg)
            check_writable(plan.output_dir)
        except BaseException as exc:
            if plan is not None and plan.workers:
                plan.workers.stop()
            if isinstance(exc, CONFIG_ERRORS):
                raise UsageError(one_line(exc)) from exc
            raise
    if plan.multirun:
        plan.hashes = hashes
        _planned["sweep"] = plan
        if len(hashes) == plan.cells:
            write_plan(plan, inputs)
    return plan


def planned(
    first, overrides, config_name, config_dir, multirun, axes, digest: str
) -> tuple[Plan, dict, str]:
    """The plan of a run, from its first cell's composition and the ``inputs_digest`` of its
    config files; the fingerprints of the cells a plan written before for the same inputs
    lists (``known_complete``); and the inputs' fingerprint."""
    cells = math.prod(len(values) for values in axes.values())
    plan = _plan(first, overrides, config_name, config_dir, multirun, cells)
    plan.resume = bool(first.resume) and "resume" not in axes
    plan.inputs = digest
    inputs = inputs_fingerprint(overrides, config_name, plan.inputs)
    known = known_complete(plan, first, inputs, "resume" in axes)
    plan.shared = shared_compositions(first, overrides, config_name, config_dir, multirun, plan)
    return plan, known, inputs


def is_kept(plan: Plan, known: dict, key: tuple[str, ...]) -> bool:
    """Whether the cell ``key`` is complete as a plan written before knows it: not run."""
    return bool(known.get(key)) and plan_cell_complete(plan, key, known[key])


@dataclass
class Compositions:
    """Every composition ``check_run`` makes for a command, made before it runs."""

    inputs: str  # ``inputs_digest`` of the config files they were composed from
    fixed: list[str]  # ``sweep_axes``
    axes: dict[str, list[str]]
    first: DictConfig  # the first cell, with its Hydra node
    cells: dict[tuple[str, ...], DictConfig]  # by ``structural_lines``, as ``compose`` gives
    full: dict[tuple[str, ...], DictConfig]  # ``SharedCompositions.full``
    warnings: list[tuple[str, type]] = field(default_factory=list)  # what composing warned
    parsed: dict = field(default_factory=dict)  # ``_compose.parsed_files``


def compose_all(overrides: list[str], flags: dict[str, str], multirun: bool) -> Compositions:
    """The compositions ``check_run`` makes for the same command: every combination of
    config groups among the cells it will not keep, made the way it makes them."""
    config_name, config_dir, overrides = command_config(overrides, flags)
    inputs = inputs_digest(config_dir)
    with warnings.catch_warnings(record=True) as warned, hydra_context():
        warnings.simplefilter("always")
        fixed, axes = sweep_axes(overrides, config_name)
        cells = cells_to_check(fixed, axes)
        first_cell = next(cells)
        first = compose(config_name, overrides=first_cell, return_hydra_config=True)
        plan, known, _ = planned(first, overrides, config_name, config_dir, multirun, axes, inputs)
        shared = plan.shared
        make = shared or (lambda lines: compose(config_name, overrides=list(lines)))
        made: dict[tuple[str, ...], DictConfig] = {}
        for cell in itertools.chain([first_cell], cells):
            structural = structural_lines(cell)
            if structural not in made and not is_kept(plan, known, cell_key(cell)):
                made[structural] = make(structural)
    full = shared.full if shared else {}
    said = [(str(w.message), w.category) for w in warned]
    return Compositions(inputs, fixed, axes, first, made, full, said, parsed_files())


def warnings_again(said: Sequence[tuple[str, type]]) -> None:
    """Warn here what composing warned in the process that composed."""
    for message, category in said:
        warnings.warn(message, category, stacklevel=2)


class ComposedAhead:
    """The check's compositions (``compose_all``), made in a second process while this one
    imports torch: composing a sweep's combinations is most of the check and needs Hydra
    only; importing torch is most of a command's start and needs nothing composed.

    The second process is forked, so it composes from the same working directory,
    environment and config files (``check_run`` takes its compositions only where the files
    are still the same), and sends them back pickled. It is started only where forking is
    safe and there is something to overlap: on Linux, in a process with no other thread and
    no torch yet. Where it is not started, or it fails (bad input: the check's own
    composition then gives the one-line error), ``result()`` is None and the check composes.
    """

    def __init__(self, overrides: list[str], flags: dict[str, str], multirun: bool) -> None:
        self.process = None
        if not forking_is_safe():
            return
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_compose_and_send, args=(send, overrides, flags, multirun), daemon=True
        )
        self.process.start()
        send.close()

    def result(self) -> Compositions | None:
        """The compositions, once made (None where none were)."""
        if self.process is None:
            return None
        try:
            data = self.receive.recv_bytes()
        except (EOFError, OSError):  # it ended without sending
            data = None
        finally:
            self.receive.close()
            self.process.join()
            self.process = None
        return None if data is None else pickle.loads(data)


def forking_is_safe() -> bool:
    """Whether this process can fork a composer: Linux, one thread, torch not imported."""
    return sys.platform == "linux" and threading.active_count() == 1 and "torch" not in sys.modules


def _compose_and_send(send, overrides: list[str], flags: dict[str, str], multirun: bool) -> None:
    """In the forked process: compose, send the pickled ``Compositions``; say nothing (the
    check says what is wrong with a command, and repeats what composing warned)."""
    import cloudpickle  # keeps the classes Hydra's plugin scan imported twice

    gc.enable()  # paused in the command for its imports (benchmarks.cli.heavy_imports)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        made = compose_all(overrides, flags, multirun)
        send.send_bytes(cloudpickle.dumps(made))
    except BaseException:  # the check composes for itself, and reports what is wrong
        pass
    finally:
        send.close()


def inputs_fingerprint(overrides: list[str], config_name: str, digest: str) -> str:
    """A fingerprint of what a sweep's cells are composed from: the command's overrides and
    ``digest`` of every config file of the search path, the installed estimator entry points,
    and the versions of gradbench, Hydra and OmegaConf (``benchmarks.finished.inputs_digest``)."""
    # How cells run (the launcher, threads) changes neither what is composed for a cell nor
    # its fingerprint; where configs are found (hydra.searchpath) does.
    parsed = OverridesParser.create().parse_overrides(overrides)
    parts = [config_name] + [
        o.input_line
        for o in parsed
        if o.get_key_element() == "hydra.searchpath"
        or not (o.key_or_group.startswith("hydra") or o.key_or_group in RESULT_NEUTRAL_KEYS)
    ]
    parts.append(digest)
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def known_complete(plan: Plan, first: DictConfig, inputs: str, resume_swept: bool) -> dict:
    """The fingerprints of a plan written for the same inputs, where cells may be kept."""
    subdir = OmegaConf.to_container(first.hydra.sweep, resolve=False).get("subdir")
    names = first.hydra.job.config.override_dirname
    plan.cell_folders = (
        plan.multirun and subdir == CELL_SUBDIR and (names.item_sep, names.kv_sep) == (",", "=")
    )
    if not plan.cell_folders or not first.resume or resume_swept:
        return {}
    try:
        saved = json.loads((plan.output_dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if saved.get("inputs") != inputs:
        return {}
    return {tuple(key.split("\n")): value for key, value in saved.get("hashes", {}).items()}


def plan_cell_complete(plan: Plan, key: tuple[str, ...], fingerprint: str) -> bool:
    folder = plan.cell_folder(key)
    return folder is not None and records_complete(folder / RECORDS, fingerprint)


def write_plan(plan: Plan, inputs: str) -> None:
    hashes = {"\n".join(key): value for key, value in plan.hashes.items()}
    text = json.dumps({"inputs": inputs, "hashes": hashes}, indent=0, sort_keys=True)
    write_atomic(plan.output_dir / PLAN_FILE, lambda handle: handle.write(text.encode()))


def _plan(first, overrides, config_name, config_dir, multirun, cells) -> Plan:
    """Run or sweep, where its results go, and the settings the CLI adds to the command."""
    hydra_cfg = first.hydra
    parsed = OverridesParser.create().parse_overrides(overrides)
    multirun = multirun or str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    swept = [o for o in parsed if o.is_sweep_override()]
    if swept and not multirun:
        raise UsageError(
            f"{swept[0].input_line!r} is a sweep: add -m (gradbench run -m ...) to run every value"
        )
    if not multirun:
        return Plan(False, Path(str(hydra_cfg.run.dir)), 1)
    added = []
    dir_setting = OmegaConf.to_container(hydra_cfg.sweep, resolve=False)["dir"]
    if "${now:" in str(dir_setting):  # the default: name the folder after the command
        sweep_dir = sweep_folder(parsed, config_name, config_dir)
        added.append(f"hydra.sweep.dir={sweep_dir}")
    else:
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
    # A cell's folder is named by what varies between cells; what is fixed for the whole
    # sweep is already in the sweep folder's name (or chosen with it).
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override()})
    fixed = [k for k in fixed if not k.startswith("hydra")]
    exclude_keys = list(dict.fromkeys(["sweep", *RESULT_NEUTRAL_KEYS, *fixed]))
    exclude = ",".join(repr(k) for k in exclude_keys)
    added.append(f"hydra.job.config.override_dirname.exclude_keys=[{exclude}]")
    per_task = hydra_cfg.sweeper.get("cells_per_task", 1)
    if not isinstance(per_task, int) or per_task < 1:
        raise UsageError(f"hydra.sweeper.cells_per_task must be at least 1, got {per_task}")
    if str(hydra_cfg.launcher._target_).endswith(".SlurmLauncher") and not shutil.which("sbatch"):
        raise UsageError(
            "hydra/launcher=submitit_slurm needs Slurm, and sbatch is not on this machine's "
            "PATH; run from a Slurm login node, or try the same path here with "
            "hydra/launcher=submitit_local"
        )
    return Plan(True, sweep_dir, cells, added, exclude_keys=exclude_keys)


def sweep_folder(parsed, config_name: str, config_dir: str | None) -> Path:
    """``results/sweeps/<label>[-<hash>]``: the same sweep command, the same folder.

    The label is the preset (``sweep=NAME``) or else ``sweep``; the hash covers every
    override that can change results, so the launcher, ``threads`` and ``resume`` can
    differ between an interrupted run and its resumption.
    """
    label = "sweep" if config_name == "config" else config_name
    lines = []
    for override in parsed:
        key = override.key_or_group
        value = override.get_value_element_as_str() if not override.is_sweep_override() else ""
        if key == "sweep" and value not in ("", "null", "None"):
            label = value
        elif not (key.startswith("hydra") or key in RESULT_NEUTRAL_KEYS):
            lines.append(override.input_line)
    if config_dir:
        lines.append(f"--config-dir={Path(config_dir).resolve()}")
    if not lines:
        return Path("results", "sweeps", label)
    digest = hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()[:8]
    return Path("results", "sweeps", f"{label}-{digest}")


def check_writable(folder: Path) -> None:
    """Raise ``UsageError`` unless ``folder`` exists or could be made, and can be written."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write results to {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write results to {folder}: {existing} is not writable")


def started_workers(hydra_cfg: DictConfig, plan: Plan):
    """joblib's workers started now, for a sweep under ``hydra/launcher=joblib``, so that
    their imports overlap the rest of the check (``False`` for any other run); whoever runs
    the sweep ends them (``StartedWorkers.stop``)."""
    target = str(hydra_cfg.launcher._target_)
    if not plan.multirun or target != JOBLIB_TARGET or worker_count(hydra_cfg.launcher) < 1:
        return False
    return StartedWorkers(hydra_cfg.launcher, ["benchmarks.run"])


def runs_elsewhere(hydra_cfg: DictConfig, multirun: bool) -> bool:
    """Whether a sweep's cells run on other machines (Slurm, Ray) than the command."""
    target = str(hydra_cfg.launcher._target_)
    multirun = multirun or str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    return multirun and (target.endswith(".SlurmLauncher") or "ray_launcher" in target)


def check_cell(cfg: DictConfig, remote: bool = False, built: dict | None = None) -> None:
    """Everything the job will build, built once here (cheap for toys); with ``built``,
    once for all the cells that build the same objects (``build_cell``).

    The device is the job's to choose: cells that run elsewhere (``remote``) look for CUDA
    where they run, not on this login node, and a node without CUDA records the cell as
    failed; ``device=auto`` never fails, and the job prints which device it took. Both
    are built on the CPU here. ``device=cuda`` run here is resolved as the job resolves it,
    so that a machine without CUDA refuses it before anything runs.
    """
    import torch

    from benchmarks.config import build_cell

    on_cpu = remote or cfg.device == "auto"
    build_cell(cfg, torch.device("cpu") if on_cpu else None, built=built)


def compatibility(config_dir: str | None = None) -> pd.DataFrame:
    """Which estimator applies to which objective, at the default config (n_samples=10).

    ``config_dir`` adds a user's config folder, as ``--config-dir`` does for a run.
    """
    import pandas as pd

    from benchmarks.config import build
    from estimators import NotApplicable

    search_path = config_dir_override(config_dir)
    with hydra_context():
        try:
            # Each option is composed and built once; building a model loads its data.
            built = {}
            for group in ("estimator", "objective"):
                for option in group_options(group, search_path):
                    cfg = compose("config", overrides=[f"{group}={option}", *search_path])
                    estimator, objective = build(cfg)
                    built[group, option] = estimator if group == "estimator" else objective
        except CONFIG_ERRORS as exc:
            raise UsageError(one_line(exc)) from exc
    n_samples = cfg.n_samples
    rows = []
    for (group, name), objective in built.items():
        if group != "objective":
            continue
        row = {"objective": name}
        for (other, estimator_name), estimator in built.items():
            if other != "estimator":
                continue
            try:
                estimator.check(objective, objective.theta, n_samples)
                row[estimator_name] = "yes"
            except NotApplicable:
                row[estimator_name] = "-"
        rows.append(row)
    return pd.DataFrame(rows).set_index("objective")


def build_estimator_option(overrides: Sequence[str], config_dir: str | None = None):
    """``(name, estimator)`` from ``estimator=NAME [estimator.key=value ...]`` overrides, for
    commands that take one estimator (``gradbench verify``).

    Raises:
        UsageError: no ``estimator=``, an unknown option, or settings it refuses (one line).
    """
    import torch

    from benchmarks.config import build

    search_path = config_dir_override(config_dir)
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("estimator=")]
    if len(names) != 1:
        raise UsageError("give exactly one estimator=NAME (and estimator.key=value settings)")
    others = [o for o in overrides if not o.startswith("estimator")]
    if others:
        raise UsageError(f"only estimator settings apply here, got: {' '.join(others)}")
    with hydra_context():
        try:
            parsed = OverridesParser.create().parse_overrides([*overrides])
            _check_group_choices(parsed, search_path)
            cfg = compose("config", overrides=[*overrides, *search_path])
            estimator, _ = build(cfg, torch.device("cpu"))
        except CONFIG_ERRORS as exc:
            raise UsageError(one_line(exc)) from exc
    return names[0], estimator
