"""Hydra's composition with the work that repeats from one composition to the next done once.

A sweep composes its config once per combination of config-group choices, and every one of
those compositions reads and parses the same config files and merges Hydra's own dozen
configs and the primary config in the same order before it reaches the groups that differ.
``install`` puts two caches on Hydra's classes, for this process:

- ``ConfigRepository.load_config`` keeps each file's parsed result, keyed by the file's path
  and bytes, and hands out a result sharing its config, which building the defaults tree
  only reads; ``ConfigLoaderImpl._load_single_config`` copies that config before Hydra's
  merge takes nodes from it (or replaces it with the schema-merged one);
- ``ConfigLoaderImpl._compose_config_from_defaults_list`` keeps the config merged up to and
  including the primary config, keyed by what each of those defaults is and by its file's
  key (or, for a config the ConfigStore holds, the stored node), and merges the rest of the
  defaults list into a copy of it.

The merged prefix is kept as a ``Snapshot`` (pickled once, unpickled for each copy), which
is also how the sweeper copies each cell's config from its combination's.

A file edited between compositions gets a new key and is parsed again. A default whose source
is neither a file, a package file nor the ConfigStore is never cached. The compositions
equal Hydra's own (tests/test_sweeper.py composes every cell of the toy presets both ways).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import ConfigRepository
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigSource
from omegaconf import DictConfig, OmegaConf, flag_override

_LOADS: dict[tuple, Any] = {}
_PREFIXES: dict[tuple, Snapshot] = {}
_ORIGINAL: dict[str, Any] = {}
# The attribute that marks a loaded result whose config is the cache's own.
_SHARED = "_gradbench_shares_cached_config"


# The classes that snapshots refer to, by id: kept alive here so that an id is never reused.
_CLASSES: dict[int, type] = {}


class _ClassesAsThemselves(pickle.Pickler):
    """A pickler for copies made in this process: a class is kept as the object itself, not
    looked up again by name, so a config keeps the very classes it has (Hydra's plugin scan
    imports a plugin's config module twice, and a lookup by name finds the second class)."""

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, type):
            _CLASSES[id(obj)] = obj
            return id(obj)
        return None


class _ClassesFromThemselves(pickle.Unpickler):
    def persistent_load(self, pid: int) -> type:
        return _CLASSES[pid]


class Snapshot:
    """A config as it is now, pickled once; ``copy()`` is a new copy of it each time, equal to
    ``copy.deepcopy``'s (values, flags, metadata and resolver cache) at a fraction of its
    cost, for a config copied once per sweep cell."""

    def __init__(self, config: DictConfig) -> None:
        buffer = io.BytesIO()
        _ClassesAsThemselves(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(config)
        self.data = buffer.getvalue()
        self.config = config  # for its resolver cache, which pickling leaves out

    def copy(self) -> DictConfig:
        cfg = _ClassesFromThemselves(io.BytesIO(self.data)).load()
        OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
        return cfg


class _Stored:
    """A ConfigStore node as part of a key: equal only to itself, kept alive by the key."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def __hash__(self) -> int:
        return id(self.node)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Stored) and other.node is self.node


def source_key(source: ConfigSource | None, config_path: str) -> tuple | None:
    """What a config's content follows from: its file's path and bytes (a modification time
    can be the same for two writes in one clock tick), or the ConfigStore's node; None where
    neither is known."""
    if source is None:
        return None
    name = ConfigSource._normalize_file_name(config_path)
    scheme = source.scheme()
    if scheme == "structured":
        try:
            return ("structured", _Stored(ConfigStore.instance()._load(name)))
        except Exception:  # Hydra's own load gives the error
            return None
    if scheme == "file":
        path = Path(os.path.realpath(os.path.join(source.path, name)))
    elif scheme == "pkg":
        path = resources.files(source.path).joinpath(name)
        if not isinstance(path, Path):  # inside a zip: left to Hydra
            return None
    else:
        return None
    try:
        return (str(path), path.read_bytes())
    except OSError:
        return None


def _find(repo: Any, config_path: str) -> ConfigSource | None:
    while not isinstance(repo, ConfigRepository):  # Hydra's CachingConfigRepository
        repo = getattr(repo, "delegate", None)
        if repo is None:
            return None
    return repo._find_object_source(config_path=config_path, object_type=ObjectType.CONFIG)


def load_config(self: ConfigRepository, config_path: str):
    """``ConfigRepository.load_config``, each file parsed once.

    The result handed out shares the parsed config and defaults list with the cache
    (``_SHARED`` marks it): building the defaults tree only reads the config and copies the
    list before use, and a file before the primary config is never merged again
    (``compose_from_defaults``). The merge copies the config first (``load_single_config``).
    """
    key = source_key(_find(self, config_path), config_path)
    if key is None or key[0] == "structured":  # the ConfigStore hands out copies itself
        return _ORIGINAL["load_config"](self, config_path)
    if key not in _LOADS:
        _LOADS[key] = _ORIGINAL["load_config"](self, config_path)
    cached = _LOADS[key]
    result = copy.copy(cached)
    result.header = dict(cached.header)
    setattr(result, _SHARED, True)
    return result


def parsed_files() -> dict[tuple, Any]:
    """The config files parsed so far in this process (by path and bytes), for another
    process composing from the same files (``take_parsed_files``)."""
    return dict(_LOADS)


def take_parsed_files(files: dict[tuple, Any]) -> None:
    """Take files another process parsed (``parsed_files``): each is keyed by its bytes, so it
    stands for the file only where the file here is the same."""
    _LOADS.update(files)


class _Private:
    """A config repository that hands out one result of its own for one path."""

    def __init__(self, repo: Any, config_path: str, result: Any) -> None:
        self.repo, self.config_path, self.result = repo, config_path, result

    def load_config(self, config_path: str):
        if config_path == self.config_path:
            return self.result
        return self.repo.load_config(config_path=config_path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)


def load_single_config(self: ConfigLoaderImpl, default: Any, repo: Any):
    """``ConfigLoaderImpl._load_single_config`` on a config of its own: Hydra's merge takes
    nodes from it and may replace it with its schema-merged one, so a result that shares
    its config with the cache gets a copy first."""
    loaded = repo.load_config(config_path=default.config_path)
    if getattr(loaded, _SHARED, False):
        loaded.config = copy.deepcopy(loaded.config)
        setattr(loaded, _SHARED, False)
        repo = _Private(repo, default.config_path, loaded)
    return _ORIGINAL["single"](self, default, repo)


def compose_from_defaults(self: ConfigLoaderImpl, defaults: list, repo: Any) -> DictConfig:
    """``ConfigLoaderImpl._compose_config_from_defaults_list``, starting from a copy of the
    config merged up to the primary config where an earlier composition made it."""
    primary = next((i for i, d in enumerate(defaults) if d.primary), None)
    if primary is None:
        return _ORIGINAL["compose"](self, defaults, repo)
    keys = []
    for default in defaults[: primary + 1]:
        found = source_key(_find(repo, default.config_path), default.config_path)
        if found is None:
            return _ORIGINAL["compose"](self, defaults, repo)
        keys.append((default.config_path, default.package, default.primary, default.is_self,
                     found))  # fmt: skip
    key = tuple(keys)
    if key not in _PREFIXES:
        _PREFIXES[key] = Snapshot(merge_defaults(self, defaults[: primary + 1], repo))
    cfg = _PREFIXES[key].copy()
    merged = merge_defaults(self, defaults[primary + 1 :], repo, start=cfg)
    strip_defaults(merged)
    return merged


def merge_defaults(self: ConfigLoaderImpl, defaults: list, repo: Any, start=None) -> DictConfig:
    """The merge loop of Hydra's ``_compose_config_from_defaults_list``, from ``start``,
    without its last step (``strip_defaults``)."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.create() if start is None else start
    with flag_override(cfg, "no_deepcopy_set_nodes", True):
        for default in defaults:
            loaded = self._load_single_config(default=default, repo=repo)
            try:
                cfg.merge_with(loaded.config)
            except OmegaConfBaseException as e:
                raise ConfigCompositionException(
                    f"In '{default.config_path}': {type(e).__name__} raised while"
                    f" composing config:\n{e}"
                ) from e
    return cfg


def strip_defaults(cfg: Any) -> None:
    """Hydra's removal of the defaults lists left in a composed config."""
    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none():
            return
        with flag_override(cfg, ["readonly", "struct"], False):
            if cfg._get_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS"):
                cfg._set_flag("HYDRA_REMOVE_TOP_LEVEL_DEFAULTS", None)
                cfg.pop("defaults", None)
        for _key, value in cfg.items_ex(resolve=False):
            strip_defaults(value)


def install() -> None:
    """Put the two caches on Hydra's classes, in this process: gradbench's commands and the
    sweeper do, not Hydra's plugin scan, so another Hydra app is left as it is."""
    if _ORIGINAL:
        return
    _ORIGINAL["load_config"] = ConfigRepository.load_config
    _ORIGINAL["compose"] = ConfigLoaderImpl._compose_config_from_defaults_list
    _ORIGINAL["single"] = ConfigLoaderImpl._load_single_config
    ConfigRepository.load_config = load_config
    ConfigLoaderImpl._compose_config_from_defaults_list = compose_from_defaults
    ConfigLoaderImpl._load_single_config = load_single_config


@contextlib.contextmanager
def hydras_own() -> Iterator[None]:
    """Hydra's own composition while in the block, the caches kept (what tests compare)."""
    installed = bool(_ORIGINAL)
    if installed:
        ConfigRepository.load_config = _ORIGINAL["load_config"]
        ConfigLoaderImpl._compose_config_from_defaults_list = _ORIGINAL["compose"]
        ConfigLoaderImpl._load_single_config = _ORIGINAL["single"]
        _ORIGINAL.clear()
    try:
        yield
    finally:
        if installed:
            install()
