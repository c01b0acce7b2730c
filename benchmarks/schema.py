"""The config tree, before anything is built from it: where ``conf/`` is, the schema of the
top-level keys, the estimators other installed packages add, Hydra's Compose API on the
tree, and the fingerprint and folder name of a cell.

Nothing here imports torch, so that a process can compose configs while another imports it
(``benchmarks.precheck.ComposedAhead``). ``benchmarks.config`` builds the objects.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from hydra import initialize_config_dir, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from benchmarks.finished import ENTRY_POINT_GROUP, INSTALLED_CONF, SOURCE_CONF


def config_path() -> str:
    """The conf/ folder of a source checkout or editable install, else the installed copy."""
    return str(SOURCE_CONF) if (SOURCE_CONF / "config.yaml").is_file() else "pkg://benchmarks.conf"


def hydra_context():
    """Initialise Hydra's Compose API on gradbench's config tree (a context manager), with
    the composition caches of ``hydra_plugins.gradbench_sweeper._compose``."""
    from hydra_plugins.gradbench_sweeper import _compose

    _compose.install()
    GlobalHydra.instance().clear()
    path = config_path()
    if path.startswith("pkg://"):
        return initialize_config_module(path.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(path, version_base="1.3")


@dataclass
class Settings:
    """Schema of the top-level keys. Hydra refuses a wrong type (``n_samples=ten``)."""

    n_samples: int = 10
    replicates: int = 1000
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    # torch intra-op threads per job; None keeps torch's default. Set it when running
    # parallel jobs so that they do not oversubscribe the cores.
    threads: int | None = None
    # In a sweep, skip cells whose records are already complete (see ``benchmarks.run``);
    # ``resume=false`` runs every cell again.
    resume: bool = True
    estimator: Any = MISSING
    objective: Any = MISSING
    task: Any = MISSING
    sweep: Any = None
    # The models' data set (conf/data/); objectives that use it interpolate ${data}.
    data: Any = None


ConfigStore.instance().store(name="gradbench_schema", node=Settings)

# Estimators that other installed packages provide: an entry point in ENTRY_POINT_GROUP names
# an estimator class (``my_estimator = "my_package.module:MyEstimator"``), and becomes the
# option ``estimator=my_estimator`` with that class as its ``_target_``.


def register_entry_point_estimators() -> list[str]:
    """Add every installed ``gradbench.estimators`` entry point to the ``estimator`` group.

    Returns the names registered. Options in ``conf/estimator/`` keep their meaning: an
    entry point with the same name as one of them is not registered.
    """
    from importlib.metadata import entry_points

    conf = SOURCE_CONF if (SOURCE_CONF / "config.yaml").is_file() else INSTALLED_CONF
    shipped = {p.stem for p in (conf / "estimator").glob("*.yaml")}
    names = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in shipped:
            continue
        target = point.value.replace(":", ".")
        ConfigStore.instance().store(group="estimator", name=point.name, node={"_target_": target})
        names.append(point.name)
    return names


register_entry_point_estimators()


# Longest cell folder name kept as is; longer ones are cut and get a hash.
MAX_CELL_DIRNAME = 160


def cell_dirname(override_dirname: str) -> str:
    """A sweep cell's folder name, from Hydra's ``hydra.job.override_dirname``.

    That is the cell's overrides, sorted, ``key=value`` joined by commas
    (``estimator=reinforce,n_samples=10``), so the folder says which cell it holds and the
    same cell of the same sweep always lands in the same folder, which is what lets a
    re-run sweep find the cells it already has. Slashes (paths in values) would make
    sub-folders and long names hit file-system limits, so such names are shortened and
    made unique with a hash of the full text.
    """
    if not override_dirname:
        return "defaults"
    safe = re.sub(r"[/\\\x00]", "_", override_dirname)
    if safe == override_dirname and len(safe) <= MAX_CELL_DIRNAME:
        return safe
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{safe[: MAX_CELL_DIRNAME - 11]}-{digest}"


OmegaConf.register_new_resolver("gradbench.cell_dir", cell_dirname, replace=True)


# Settings that change how a cell runs but not what it measures.
RESULT_NEUTRAL_KEYS = ("threads", "resume")


def config_hash(cfg: DictConfig) -> str:
    """A fingerprint of everything that decides a cell's results (``threads`` aside).

    Stored with the records; a resumed sweep re-runs a cell whose stored fingerprint
    differs, e.g. because a preset's values were edited since.
    """
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in RESULT_NEUTRAL_KEYS:
        tree.pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
