"""``gradbench run | list``: the command line.

``run`` checks every cell of the requested run or sweep before handing over to Hydra, so
bad input (an unknown estimator, ``n_samples=0``, ``objective.sigma=-1``) is one line on
stderr and exit code 2, instead of a traceback from the middle of a sweep.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmarks.config import ConfigError, build

GROUPS = ("estimator", "objective", "task", "data", "sweep")
# Flags of Hydra's own command line that take a value.
VALUE_FLAGS = {"--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp",
               "--info", "-i", "--experimental-rerun"}  # fmt: skip
# Sweeps up to this many cells are checked cell by cell; larger ones value by value.
MAX_CELLS_CHECKED = 2000


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _hydra_context():
    """Initialise Hydra's Compose API on gradbench's config tree."""
    from benchmarks.run import config_path

    GlobalHydra.instance().clear()
    path = config_path()
    if path.startswith("pkg://"):
        return initialize_config_module(path.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(path, version_base="1.3")


def _one_line(exc: BaseException) -> str:
    """The first line of an exception and of each exception it was raised from."""
    parts = []
    while exc is not None:
        line = (str(exc).strip() or type(exc).__name__).splitlines()[0].strip()
        unknown = re.match(r"Could not override '(.+)'\.", line)
        if unknown:
            line = f"unknown setting {unknown.group(1)!r} (to add a new key, prefix it with +)"
        if line not in parts:
            parts.append(line)
        exc = exc.__cause__
    return ": ".join(parts)


def split_args(args: Sequence[str]) -> tuple[list[str], dict[str, str], bool]:
    """Split ``gradbench run`` arguments into (overrides, Hydra flags with values, multirun)."""
    overrides, flags, multirun = [], {}, False
    it = iter(args)
    for arg in it:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in VALUE_FLAGS:
            flags[arg] = next(it, "")
        elif arg.startswith("-"):
            flags[arg] = ""
        else:
            overrides.append(arg)
    return overrides, flags, multirun


def normalise_overrides(overrides: list[str]) -> list[str]:
    """``+sweep=NAME`` is accepted as a synonym of ``sweep=NAME`` (sweep defaults to null)."""
    return [o[1:] if o.startswith("+sweep=") else o for o in overrides]


def _group_options(group: str) -> list[str]:
    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options(group))


def _check_group_choices(parsed) -> None:
    for override in parsed:
        key = override.key_or_group
        if key not in GROUPS or override.is_delete():
            continue
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        options = _group_options(key)
        for value in values:
            if value in ("null", "None") and key == "sweep":
                continue
            if value not in options:
                raise UsageError(f"unknown {key} {value!r}; choose from: {', '.join(options)}")


def expand_cells(overrides: list[str], config_name: str) -> Iterator[list[str]]:
    """Every cell of the run or sweep, as a list of plain ``key=value`` overrides.

    Sweeps come from the command line (``a=1,2``) and from a preset's
    ``hydra.sweeper.params``; as in Hydra's basic sweeper, the command line wins.
    """
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    _check_group_choices(parsed)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose(config_name, overrides=fixed, return_hydra_config=True)
    preset = OmegaConf.select(base, "hydra.sweeper.params") or {}
    sweep_lines = [f"{k}={v}" for k, v in preset.items()]
    sweep_lines += [o.input_line for o in parsed if o.is_sweep_override()]
    axes: dict[str, list[str]] = {}
    for override in parser.parse_overrides(sweep_lines):
        _check_group_choices([override])
        key = override.get_key_element()
        if override.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            axes[key] = [override.input_line]
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


def check_run(overrides: list[str], flags: dict[str, str]) -> None:
    """Compose and build every cell; raise ``UsageError`` on the first bad one."""
    config_name = flags.get("--config-name") or flags.get("-cn") or "config"
    config_dir = flags.get("--config-dir") or flags.get("-cd")
    with _hydra_context():
        if config_dir:
            overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
        try:
            for cell in expand_cells(overrides, config_name):
                check_cell(compose(config_name, overrides=cell))
        except (HydraException, OmegaConfBaseException, ConfigError) as exc:
            raise UsageError(_one_line(exc)) from exc


def check_cell(cfg: DictConfig) -> None:
    """Everything the job will build, built once here (cheap for toys)."""
    build(cfg)


def summarise(output: dict[str, str]) -> int:
    """Print a sweep's table of variances; return the number of failed cells."""
    from benchmarks.records import collect_records, summary_table

    folder = Path(output["dir"])
    records = collect_records(folder)
    if records.empty:
        print(f"gradbench: no records under {folder}", file=sys.stderr)
        return 1
    cells = records.drop_duplicates("run_dir")
    status = cells["status"].str.split(":").str[0]
    print("\nvar_grad (variance of one estimate) per estimator:")
    print(summary_table(records))
    counts = status.value_counts().to_dict()
    print(f"\n{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"records under: {folder}")
    return int(counts.get("failed", 0))


def cmd_run(args: Sequence[str]) -> int:
    overrides, flags, multirun = split_args(args)
    overrides = normalise_overrides(overrides)
    if not any(flag in flags for flag in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info")):
        check_run(overrides, flags)
    from benchmarks import callbacks, run

    hydra_args = [*(["-m"] if multirun else []), *overrides]
    for flag, value in flags.items():
        hydra_args += [flag, value] if value else [flag]
    sys.argv = ["gradbench run", *hydra_args]
    callbacks.LAST_OUTPUT.clear()
    run.main()
    if callbacks.LAST_OUTPUT.get("mode") == "multirun":
        return 1 if summarise(callbacks.LAST_OUTPUT) else 0
    return 0


def compatibility() -> pd.DataFrame:
    """Which estimator applies to which objective, at the default config (n_samples=10)."""
    from estimators import NotApplicable

    rows = []
    with _hydra_context():
        estimators, objectives = _group_options("estimator"), _group_options("objective")
        for objective in objectives:
            row = {"objective": objective}
            for estimator in estimators:
                overrides = [f"estimator={estimator}", f"objective={objective}"]
                cfg = compose("config", overrides=overrides)
                est, obj = build(cfg)
                try:
                    est.check(obj, obj.theta, cfg.n_samples)
                    row[estimator] = "yes"
                except NotApplicable:
                    row[estimator] = "-"
            rows.append(row)
    return pd.DataFrame(rows).set_index("objective")


def cmd_list(args: Sequence[str]) -> int:
    table = compatibility()
    print("estimators:", ", ".join(table.columns))
    print("objectives:", ", ".join(table.index))
    print("\nwhich estimator applies to which objective (n_samples >= 2 for reinforce_loo):")
    print(table.to_string())
    return 0


def cmd_report(args: Sequence[str]) -> int:
    from benchmarks import report

    return report.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="gradbench",
        description="Benchmark Monte Carlo gradient estimators: variance, bias and cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run", help="run one cell or a sweep: gradbench run [-m] [key=value ...]", add_help=False
    )
    sub.add_parser("list", help="estimators, objectives and which pairs apply")
    sub.add_parser(
        "report",
        help="tables and figures from a folder of runs: gradbench report DIR",
        add_help=False,
    )
    if argv and argv[0] in ("run", "report"):
        command, rest = argv[0], argv[1:]
    else:
        command, rest = parser.parse_args(argv).command, []
    try:
        code = {"run": cmd_run, "list": cmd_list, "report": cmd_report}[command](rest)
    except UsageError as exc:
        print(f"gradbench: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
