"""A finished sweep recognised from its command alone, before torch or Hydra is imported.

Running a sweep's command again when every cell is complete runs nothing: the pre-check
finds each cell's records complete and the sweeper launches none. That answer still costs
importing torch and Hydra and composing the sweep's first cell. After a sweep in which the
pre-check composed every cell, the CLI keeps a note of it (``remember``): the command's
arguments, the folder and fingerprint of every cell, and a digest of everything the cells
were composed from (the config files, the installed estimator entry points, the versions
of gradbench, Hydra and OmegaConf). The same command from the same folder, with the same
digest, whose every cell's records are still complete (``benchmarks.storage``'s test, the
one the sweeper uses) is a finished sweep (``finished``): the CLI prints its summary and
stops. Anything else, or any doubt, takes the ordinary path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import benchmarks

# Notes of finished sweeps, one per command, under the folder the command runs in.
NOTES = Path("results") / ".gradbench-finished"
# conf/ of a source checkout or editable install; a regular install has it as the package
# data benchmarks/conf (pyproject.toml maps one onto the other). Defined here, where nothing
# imports torch or Hydra; benchmarks.schema reads them from here.
SOURCE_CONF = Path(benchmarks.__file__).resolve().parent.parent / "conf"
INSTALLED_CONF = Path(benchmarks.__file__).resolve().parent / "conf"
# Estimators that other installed packages provide (benchmarks.schema registers them).
ENTRY_POINT_GROUP = "gradbench.estimators"
# Flags of Hydra's own command line that take a value.
VALUE_FLAGS = {"--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp",
               "--cfg", "-c", "--package", "-p", "--experimental-rerun"}  # fmt: skip
# Flags whose value may be left out, with the values they take (Hydra's ``--info``).
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
OPTIONAL_VALUE_FLAGS = {"--info": INFO_VALUES, "-i": INFO_VALUES}


def split_args(args: Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """Split ``gradbench run`` arguments into (overrides, Hydra flags with values, multirun).

    A flag's value may follow it (``--config-dir DIR``) or be joined to it with ``=``
    (``--config-dir=DIR``), as Hydra's own argument parser accepts; ``--info`` takes the
    next argument only where it is one of its values (``--info plugins``, not
    ``--info n_samples=3``).
    """
    overrides, flags, multirun = [], {}, False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, joined, value = arg.partition("=")
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in VALUE_FLAGS:
            flags[arg] = rest.pop(0) if rest else ""
        elif arg in OPTIONAL_VALUE_FLAGS:
            takes = rest and rest[0] in OPTIONAL_VALUE_FLAGS[arg]
            flags[arg] = rest.pop(0) if takes else ""
        elif joined and name in (*VALUE_FLAGS, *OPTIONAL_VALUE_FLAGS):
            flags[name] = value
        elif arg.startswith("-"):
            flags[arg] = ""
        else:
            overrides.append(arg)
    return overrides, flags, multirun


def config_dir_of(flags: dict[str, str]) -> str | None:
    """The ``--config-dir`` (or ``-cd``) of ``split_args``'s flags."""
    return flags.get("--config-dir") or flags.get("-cd")


def _note_path(args: Sequence[str]) -> Path:
    digest = hashlib.sha1(json.dumps([os.getcwd(), list(args)]).encode()).hexdigest()[:16]
    return NOTES / f"{digest}.json"


def inputs_digest(config_dir: str | None) -> str:
    """A digest of what a sweep's cells are composed from: every config file of gradbench
    and of ``config_dir``, the estimator entry points, and the versions that compose them."""
    from importlib.metadata import entry_points, version

    digest = hashlib.sha1()
    for name in ("gradbench", "hydra-core", "omegaconf"):
        digest.update(f"{name}={version(name)}\n".encode())
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        digest.update(f"{point.name}={point.value}\n".encode())
    roots = [SOURCE_CONF, INSTALLED_CONF, *([Path(config_dir).resolve()] if config_dir else [])]
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.yaml")):
            digest.update(f"\n{path}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def remember(args: Sequence[str], inputs: str, sweep_dir: Path, cells: dict[str, str]) -> None:
    """Note that the sweep of ``args`` into ``sweep_dir`` has ``cells`` (folder relative to
    ``sweep_dir`` -> fingerprint), composed from configs whose ``inputs_digest`` is
    ``inputs`` (the one taken when they were composed: a file edited during the sweep then
    makes the note not hold), for ``finished``. Never fails the command."""
    from benchmarks.storage import write_atomic

    note = {
        "args": list(args),
        "inputs": inputs,
        "sweep_dir": str(sweep_dir),  # as the command named it (the note is per folder)
        "cells": cells,
    }
    path = _note_path(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda handle: handle.write(json.dumps(note, indent=0).encode()))
    except OSError:
        pass  # a note is only a shortcut; the ordinary path finds the same answer


def finished(args: Sequence[str], config_dir: str | None) -> tuple[Path, int] | None:
    """(sweep folder, number of cells) if ``args`` is a sweep noted by ``remember`` whose
    inputs are unchanged and whose every cell's records are complete; else None."""
    try:
        note = json.loads(_note_path(args).read_text())
    except (OSError, ValueError):
        return None
    if note.get("args") != list(args) or note.get("inputs") != inputs_digest(config_dir):
        return None
    from benchmarks.storage import RECORDS, records_complete

    sweep_dir = Path(note["sweep_dir"])
    cells = note.get("cells") or {}
    if not cells or not all(
        records_complete(sweep_dir / folder / RECORDS, fingerprint)
        for folder, fingerprint in cells.items()
    ):
        return None
    return sweep_dir, len(cells)
