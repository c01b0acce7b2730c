"""The shape of the code: no import cycles, and the config stops at the door.

The import graph is read with ``ast`` from every ``.py`` file of ``estimators`` and
``benchmarks``, imports inside functions included (a lazy import still makes a cycle, it
only hides it until run time). Each check has a negative control on a synthetic package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("estimators", "benchmarks")

# Modules that turn a composed config into objects (the door) and Hydra's own plumbing;
# ``benchmarks/precheck.py`` is the CLI's check of every cell before a run.
CONFIG_READERS = {
    "benchmarks/run.py",
    "benchmarks/cli.py",
    "benchmarks/config.py",
    "benchmarks/schema.py",
    "benchmarks/precheck.py",
    "benchmarks/callbacks.py",
}
# The only modules that may build a cell from a config.
# The speed suite is an entry point of its own (pytest): it builds each option from its
# config file through the door's ``instantiate_file``/``load_file``.
DOOR_USERS = {
    "benchmarks/run.py",
    "benchmarks/cli.py",
    "benchmarks/precheck.py",
    "benchmarks/speed/cases.py",
    "benchmarks/speed/reference_shared.py",
    "benchmarks/speed/reference_measure_valued.py",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path, modules=frozenset()) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file (absolute, dotted).

    ``from a.b import c`` gives ``a.b.c`` where that is one of ``modules`` (c is a
    submodule), else ``a.b``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                names.add(submodule if submodule in modules else module)
    return names


def python_files(root: Path, packages=PACKAGES) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports."""
    files = python_files(root, packages)
    modules = {module_name(p, root): p for p in files}
    return {
        name: {m for m in imported_names(path, root, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None if the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def top_level_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path, ROOT)}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- import cycles ---------------------------------------------------------------------


def test_no_import_cycle_among_estimators_and_benchmarks():
    graph = import_graph(ROOT)
    assert {"estimators.base", "benchmarks.run", "benchmarks.train"} <= set(graph)
    assert "benchmarks.measure" in graph["benchmarks.run"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_sees_a_cycle_made_by_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None


# -- the config stops at the door ------------------------------------------------------


def test_only_the_door_imports_hydra_or_omegaconf():
    offenders = {}
    for path in python_files(ROOT, ("benchmarks",)):
        used = top_level_imports(path) & {"hydra", "omegaconf"}
        allowed = {"hydra", "omegaconf"} if relative(path) in CONFIG_READERS else set()
        if used - allowed:
            offenders[relative(path)] = sorted(used - allowed)
    assert not offenders


@pytest.mark.parametrize(
    "module",
    ["benchmarks/train.py", "benchmarks/measure.py", "benchmarks/measure_model.py",
     "benchmarks/settings.py", "benchmarks/objectives/toy.py",
     "benchmarks/objectives/model.py", "benchmarks/objectives/vae.py",
     "benchmarks/objectives/bayes_logreg.py", "benchmarks/objectives/base.py"],
)  # fmt: skip
def test_below_the_door_nothing_reads_a_config(module):
    names = imported_names(ROOT / module, ROOT)
    assert not {n.split(".")[0] for n in names} & {"hydra", "omegaconf"}
    assert "benchmarks.config" not in names and "benchmarks.run" not in names


def test_only_the_entry_points_build_cells_from_a_config():
    users = {
        relative(p)
        for p in python_files(ROOT, ("benchmarks",))
        if "benchmarks.config" in imported_names(p, ROOT) and relative(p) != "benchmarks/config.py"
    }
    assert "benchmarks/run.py" in users
    assert users <= DOOR_USERS, users - DOOR_USERS


def test_the_library_imports_no_harness_config_or_dataframes():
    for path in python_files(ROOT, ("estimators",)):
        used = top_level_imports(path) & {"hydra", "omegaconf", "pandas", "benchmarks"}
        assert not used, (relative(path), used)


def test_the_import_checks_see_a_nested_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lazy.py").write_text(
        "def f():\n    from omegaconf import OmegaConf\n    import pandas\n"
    )
    names = imported_names(pkg / "lazy.py", tmp_path)
    assert {n.split(".")[0] for n in names} == {"omegaconf", "pandas"}


def test_every_task_has_settings_and_a_function():
    from benchmarks.config import TASK_SETTINGS
    from benchmarks.run import TASKS

    assert set(TASKS) == set(TASK_SETTINGS) == {"variance", "train"}
    tasks = {p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")}
    assert tasks == set(TASKS)


# The sweeper plugin is Hydra plumbing outside the package: of gradbench it reads the door
# and the schema (cell folders, fingerprints), the storage of records and the pre-check's
# plan, nothing below the door.
PLUGIN_USES = {
    "benchmarks", "benchmarks.config", "benchmarks.schema", "benchmarks.storage",
    "benchmarks.precheck",
}  # fmt: skip


def test_the_sweeper_plugin_uses_only_the_door_storage_and_the_plan():
    files = sorted((ROOT / "hydra_plugins").rglob("*.py"))
    assert any(p.name == "gradbench_sweeper.py" for p in files)
    for path in files:
        used = {n for n in imported_names(path, ROOT) if n.split(".")[0] in PACKAGES}
        assert used <= PLUGIN_USES, (relative(path), used - PLUGIN_USES)
