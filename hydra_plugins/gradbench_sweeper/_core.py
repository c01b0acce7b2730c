"""The work of gradbench's sweeper: cheap per-cell configs, complete cells found without
composing, batches of cells per worker, and one progress line.

Hydra's plugin scan imports every module of ``hydra_plugins`` whose name does not start with
``_`` (and runs it again if it is already imported), so the state that must outlive a scan
(the composition cache) lives here.
"""

from __future__ import annotations

import copy
import gc
import importlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    configure_log,
    env_override,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import get_omega_conf_dumper
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.gradbench_sweeper import _compose

# The cell folder setting of conf/config.yaml: with it, a cell's folder follows from its
# overrides alone.
CELL_SUBDIR = "${gradbench.cell_dir:${hydra.job.override_dirname}}"
# Hydra's joblib launcher, which the sweeper batches and the CLI's check starts workers for.
JOBLIB_TARGET = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"

# Compositions by (sweep token, structural overrides): one per combination of config-group
# choices in each process (the command's, and each joblib worker's).
_COMPOSED: dict[tuple, _compose.Snapshot] = {}
_TOKEN: list[str] = [""]


def parse(lines: Sequence[str]) -> list[Override]:
    """Overrides parsed one line at a time, each line once per process (shared: read only)."""
    from benchmarks.precheck import parse_one

    return [parse_one(line) for line in lines]


def is_plain_value(override: Override, group_exists) -> bool:
    """A change of one value (``n_samples=10``, ``objective.sigma=2``), not of what is
    composed: Hydra applies it to the composed config with ``OmegaConf.update``, as is done
    here on a copy of the composition without it."""
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_sweep_override()
        and not override.is_hydra_override()
        and not isinstance(override.value(), dict)
        and not group_exists(override.key_or_group)
    )


def _overlaps(key: str, others: Sequence[str]) -> bool:
    return any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in others)


def override_dirname(master: DictConfig, task_lines: Sequence[str]) -> str:
    """``hydra.job.override_dirname`` of a cell, as Hydra's config loader computes it."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    settings = master.hydra.job.config.override_dirname
    return get_overrides_dirname(
        overrides=parse(task_lines),
        exclude_keys=list(settings.exclude_keys),
        item_sep=settings.item_sep,
        kv_sep=settings.kv_sep,
    )


def cell_folder(master: DictConfig, task_lines: Sequence[str]) -> Path | None:
    """A cell's output folder without composing its config, or None where the sweep's
    ``hydra.sweep.subdir`` is not gradbench's (then only a composition can say)."""
    from benchmarks.schema import cell_dirname

    sweep = OmegaConf.to_container(master.hydra.sweep, resolve=False)
    if sweep.get("subdir") != CELL_SUBDIR:
        return None
    return Path(str(master.hydra.sweep.dir)) / cell_dirname(override_dirname(master, task_lines))


def made_here(composed: DictConfig) -> bool:
    """Whether this process would compose ``composed`` as it is: what a composition takes
    from its process (the working directory, ``hydra.job.env_copy``'s variables) is the same
    here, as in a joblib worker; a task on another machine may differ."""
    runtime, job = composed.hydra.runtime, composed.hydra.job
    return runtime.cwd == os.getcwd() and all(
        job.env_set.get(key) == os.environ.get(key) for key in job.env_copy
    )


class CachingConfigLoader:
    """Hydra's config loader, composing each combination of config-group choices once.

    ``load_sweep_config`` (what every launcher calls for each cell) composes the cell's
    structural overrides (group choices, additions, deletions, Hydra's own keys) once per
    process, and sets the plain values on a copy, with ``OmegaConf.update`` as Hydra does;
    ``hydra.overrides.task`` and ``hydra.job.override_dirname`` are then those of the whole
    cell. A plain value whose key overlaps a structural override's, or one that fails, is
    composed in full (Hydra's own result, or its own error). Everything else is the wrapped
    loader's.
    """

    def __init__(self, loader: Any, shared: Any = None) -> None:
        self.loader = loader
        self.token = uuid.uuid4().hex
        # The pre-check's compositions (benchmarks.precheck.SharedCompositions), used where
        # the sweep's Hydra overrides are those it composed with: here, and with
        # ``to_workers`` in joblib's workers too (unpickling one costs a few milliseconds,
        # composing it a tenth of a second), where they would compose the same
        # (``made_here``). Submitit and Ray pickle the loader once per task, so there they
        # stay here and each task composes its own.
        self.shared = shared
        self.to_workers = False

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # during unpickling, before __dict__ is set
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict:
        return self.__dict__ if self.to_workers else {**self.__dict__, "shared": None}

    def _composed(self, config_name: str, hydra_lines: list, structural: list) -> DictConfig:
        shared = self.shared
        group_exists = self.loader.repository.group_exists
        additions = [o for o in structural if not o.is_hydra_override()]
        additions = [o for o in additions if not group_exists(o.key_or_group)]
        # The pre-check composed the lines in sorted order: the same config where at most
        # one of them is a config override (group choices commute).
        if shared is not None and shared.hydra_lines == hydra_lines and len(additions) <= 1:
            lines = tuple(sorted(o.input_line for o in structural if not o.is_hydra_override()))
            if lines in shared.full and made_here(shared.full[lines]):
                return shared.full[lines]
        return self.loader.load_configuration(
            config_name=config_name,
            overrides=[o.input_line for o in structural],
            run_mode=RunMode.RUN,
        )

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        _compose.install()  # in a launcher's worker too
        if _TOKEN[0] != self.token:  # a new sweep: configs on disk may have changed
            _COMPOSED.clear()
            _TOKEN[0] = self.token
        hydra_lines = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        parsed = parse([*hydra_lines, *sweep_overrides])
        group_exists = self.loader.repository.group_exists
        is_plain = [is_plain_value(o, group_exists) for o in parsed]
        plain = [o for o, p in zip(parsed, is_plain, strict=True) if p]
        structural = [o for o, p in zip(parsed, is_plain, strict=True) if not p]
        # Additions and deletions are applied in order with the plain values: where their
        # keys meet, only Hydra's own order gives Hydra's result.
        config_keys = [
            o.key_or_group
            for o in structural
            if not o.is_hydra_override() and not group_exists(o.key_or_group)
        ]
        if any(_overlaps(o.key_or_group, config_keys) for o in plain):
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        key = (self.token, tuple(o.input_line for o in structural))
        if key not in _COMPOSED:
            _COMPOSED[key] = _compose.Snapshot(
                self._composed(master_config.hydra.job.config_name, hydra_lines, structural)
            )
        cfg = _COMPOSED[key].copy()
        try:
            for override in plain:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        task = [o.input_line for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = task
            cfg.hydra.job.override_dirname = override_dirname(cfg, task)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg


class Progress:
    """One line for the whole sweep: cells done of total, kept, failed, and the time left.

    On a terminal (stderr is a tty) the line is rewritten in place after every cell; in a
    log or CI nothing is written until the summary (the CLI prints the start line and the
    final table).
    """

    def __init__(self, total: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.total, self.kept, self.ran, self.failed = total, 0, 0, 0
        self.started = time.monotonic()

    def line(self) -> str:
        done = self.kept + self.ran
        text = f"cells {done}/{self.total}: {self.kept} kept, {self.failed} failed"
        if self.ran and done < self.total:
            per_cell = (time.monotonic() - self.started) / self.ran
            text += f", about {per_cell * (self.total - done):.0f} s left"
        return text

    def update(self, kept: int = 0, ran: int = 0, failed: int = 0) -> None:
        self.kept += kept
        self.ran += ran
        self.failed += failed
        if self.live:
            self.stream.write(f"\r\x1b[Kgradbench: {self.line()}")
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def count_failed(returns: Sequence[JobReturn]) -> int:
    """Cells of ``returns`` whose task recorded them as failed (it returns ``"failed"``);
    a task that raised is Hydra's failure, raised by the sweeper, not counted here."""
    return sum(r.status == JobStatus.COMPLETED and r._return_value == "failed" for r in returns)


def is_uncompleted(exc: BaseException) -> bool:
    """Whether a launch failed because a submitit task ended without finishing (cancelled,
    killed, out of time): the cells it had not finished are simply not complete."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:
        return False
    return isinstance(exc, UncompletedJobError)


def uncompleted_line(exc: BaseException) -> str:
    """One line for a task that ended without finishing, from submitit's message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"a launcher task ended without finishing ({first}); the cells it had not finished "
        "are not complete: run the same command again to resume"
    )


def worker_count(launcher: Any) -> int:
    """The worker processes of a ``hydra/launcher=joblib`` sweep: one fewer than the cells
    it runs at once (``benchmarks.config.joblib_jobs``), this process running cells too
    (``BatchedJoblibLauncher``)."""
    from benchmarks.config import joblib_jobs

    return joblib_jobs(launcher.get("n_jobs")) - 1


# Thread-count variables a worker starts with (joblib's loky backend sets these and a few
# more): the machine's CPUs shared out between the cells run at once.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Seconds an idle worker waits for work before it ends, as joblib's loky backend has it.
IDLE_WORKER_S = 300


def worker_pool(launcher: Any):
    """The loky executor (joblib's process pool) with ``worker_count`` workers for a
    ``hydra/launcher=joblib`` config, or None where there are none to start. It is loky's
    reusable executor: the check's ``StartedWorkers`` and the launcher get the same one.

    joblib's ``Parallel`` is not used: it runs a single worker's tasks in this process.
    """
    from joblib.externals.loky import get_reusable_executor

    from benchmarks.config import joblib_threads

    count = worker_count(launcher)
    if count < 1:
        return None
    env = dict.fromkeys(THREAD_VARIABLES, str(joblib_threads(launcher.get("n_jobs"))))
    return get_reusable_executor(max_workers=count, timeout=IDLE_WORKER_S, env=env)


def import_modules(names: Sequence[str]) -> int:
    """Import ``names`` (what a cell needs) in a joblib worker, then freeze its collector
    (``freeze_worker``); returns the worker's process id."""
    for name in names:
        importlib.import_module(name)
    freeze_worker()
    return os.getpid()


_FROZEN: list[bool] = []


def freeze_worker() -> None:
    """``gc.freeze()`` once in a joblib worker, its imports made: the collector's full
    passes otherwise walk every object torch, pandas and Hydra made, in every batch. A
    worker is a process of its own, so what is frozen is what it keeps until it ends."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


def stop_workers(executor: Any, kill: bool = False) -> None:
    """Tell a pool's idle workers to end now, not at the interpreter's exit, where the
    command would wait for each to tear down torch; their cells have returned (their
    records are written). ``kill``: end them where they are."""
    executor.shutdown(wait=False, kill_workers=kill)


class StartedWorkers:
    """joblib's workers for a sweep (``worker_pool``), started while this process goes on
    (the CLI's check), each importing ``modules`` meanwhile; the launcher takes them
    (``WorkerFeed``)."""

    def __init__(self, launcher: DictConfig, modules: Sequence[str]) -> None:
        self.executor = worker_pool(launcher)
        count = worker_count(launcher)
        self.imports = [self.executor.submit(import_modules, list(modules)) for _ in range(count)]
        self.ready = self.stopped = False

    def wait(self) -> set[int]:
        """Wait until the workers have made their imports; their process ids."""
        try:
            return {future.result() for future in self.imports}
        except Exception:  # the launcher's batches start them again, or say why not
            return set()
        finally:
            self.ready = True

    def stop(self, kill: bool = False) -> None:
        """End the workers: at once where they were never waited for (the sweep did not
        run them) or ``kill``, else once idle. Stopping again does nothing."""
        if not self.stopped:
            self.stopped = True
            stop_workers(self.executor, kill=kill or not self.ready)


_UNPICKLED: dict[bytes, Any] = {}


def unpickled(payload: bytes) -> Any:
    """``payload`` unpickled (cloudpickle), once in this process for the same bytes: a
    worker gets the launch's state with every batch, and unpickling it (the config loader
    with the check's compositions) costs more than a toy cell."""
    import cloudpickle

    if payload not in _UNPICKLED:
        _UNPICKLED.clear()  # a new launch
        _UNPICKLED[payload] = cloudpickle.loads(payload)
    return _UNPICKLED[payload]


class BatchQueue:
    """Batches of cells, each handed out once, in order, to whichever of several threads
    asks next (iterating it takes one after another); ``close`` hands out no more."""

    def __init__(self, batches: Sequence[list]) -> None:
        self.pending = list(enumerate(batches))[::-1]
        self.lock = threading.Lock()

    def take(self) -> tuple[int, list] | None:
        """The next batch with its position among them, or None when none is left."""
        with self.lock:
            return self.pending.pop() if self.pending else None

    def __iter__(self) -> Iterator[tuple[int, list]]:
        return iter(self.take, None)

    def close(self) -> None:
        with self.lock:
            self.pending.clear()


class WorkerFeed:
    """joblib's workers taking batches from ``queue``, one batch per worker at a time (a
    thread of this process for each waits on its worker's batch), while this process takes
    batches from the same queue itself.

    ``run(position, batch, payload)`` runs in a worker; ``payload`` is pickled by the caller
    before anything starts (the state cells then change in this process travels as it
    was). ``returned(position, returns)`` is called in a feeding thread as each batch
    returns. ``timeout``: seconds a batch may take (joblib's ``timeout``). ``started``: the
    check's workers, waited for (in the threads) and used; else the pool is started here.
    """

    def __init__(self, launcher: Any, queue: BatchQueue, run, payload: bytes, returned,
                 started: StartedWorkers | None = None) -> None:  # fmt: skip
        self.started = started
        self.executor = started.executor if started else worker_pool(launcher)
        self.errors: list[BaseException] = []
        timeout = launcher.get("timeout")
        self.threads = [
            threading.Thread(
                target=self._feed,
                args=(queue, run, payload, returned, timeout),
                name=f"gradbench-joblib-{i}",
                daemon=True,
            )
            for i in range(worker_count(launcher))
        ]
        for thread in self.threads:
            thread.start()

    def _feed(self, queue, run, payload, returned, timeout) -> None:
        try:
            if self.started:
                self.started.wait()
            for position, batch in queue:
                returned(*self.executor.submit(run, position, batch, payload).result(timeout))
        except BaseException as exc:  # raised in the launcher's thread by ``join``
            self.errors.append(exc)

    def join(self) -> None:
        """Wait for the workers' last batches; raise the first error a worker's batch
        raised (a worker that died, a batch past ``timeout``), the workers killed first:
        one may still be running a batch no one waits for."""
        for thread in self.threads:
            thread.join()
        if self.errors:
            self.stop(kill=True)
            raise self.errors[0]

    def stop(self, kill: bool = False) -> None:
        """End the workers (``stop_workers``): once idle, or ``kill``: where they are."""
        if self.started:
            self.started.stop(kill)
        else:
            stop_workers(self.executor, kill)


def chunks(items: list, count: int) -> list[list]:
    """``items`` cut into ``count`` runs of nearly equal length, in order."""
    count = max(1, min(count, len(items)))
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


class _YamlDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """OmegaConf's YAML dumper on libyaml's emitter where PyYAML has it: the same text as
    ``OmegaConf.to_yaml`` (the same representers), at a quarter of the cost for Hydra's node."""


_YamlDumper.yaml_representers = dict(get_omega_conf_dumper().yaml_representers)
_YamlDumper.yaml_multi_representers = dict(get_omega_conf_dumper().yaml_multi_representers)


def plain(cfg: Any) -> Any:
    """A config as plain dicts and lists, interpolations kept, as ``OmegaConf.to_yaml`` has it."""
    return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def to_yaml(container: Any) -> str:
    """``OmegaConf.to_yaml`` of a config made ``plain``, through ``_YamlDumper``."""
    return yaml.dump(
        container, Dumper=_YamlDumper, default_flow_style=False, allow_unicode=True,
        sort_keys=False,
    )  # fmt: skip


def launch_cell(
    hydra_context: Any,
    master: DictConfig,
    task_function: Any,
    overrides: Sequence[str],
    idx: int,
    job_id: Any,
) -> JobReturn:
    """Compose one cell (``load_sweep_config``), number it as the launcher does and run it."""
    cfg = hydra_context.config_loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = job_id
        cfg.hydra.job.num = idx
    return run_job(task_function, cfg, hydra_context)


def torch_threads(threads: int | None = None) -> int | None:
    """torch's intra-op thread count (None where torch is not loaded), set to ``threads``
    first if given: a cell under joblib sets its share of the CPUs, which this process
    gives back once its cells are done."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def launch_batch(
    hydra_context: Any, master: DictConfig, task_function: Any, batch: Sequence[tuple]
) -> list[JobReturn]:
    """Run a batch of ``(index, overrides)`` cells one after another (``launch_cell``),
    each with the job id Hydra's joblib launcher gives it, ``<job name>_<index>``."""
    name = master.hydra.job.name
    return [
        launch_cell(hydra_context, master, task_function, overrides, idx, f"{name}_{idx}")
        for idx, overrides in batch
    ]


def without_hydra(config: DictConfig) -> DictConfig:
    """A deep copy of ``config`` less its ``hydra`` node (the config a task gets), made
    without copying that node: it stands for itself in the copy until it is deleted there."""
    node = config._get_node("hydra")
    task_cfg = copy.deepcopy(config, memo={id(node): node})
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    node._set_parent(config)  # as DictConfig's copy leaves it; kept whatever OmegaConf does
    return task_cfg


def run_job(task_function: Any, config: DictConfig, hydra_context: Any) -> JobReturn:
    """Hydra's ``run_job`` for one cell of a sweep, in this process, without its copies.

    What the task sees is Hydra's: ``HydraConfig`` holds the cell's Hydra node (with
    ``runtime.output_dir``), the task gets the config without it, the job's logging, working
    directory, environment and callbacks are set as Hydra sets them, and ``.hydra/`` holds the
    same three files. Hydra copies the whole config with its large Hydra node four times for
    this, and writes the files with the pure-Python YAML emitter; here ``config`` is the
    cell's own (``load_sweep_config`` made it), so ``HydraConfig`` takes it as it is,
    read-only, and only the task's part is copied (``without_hydra``).
    """
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    instance = HydraConfig.instance()
    orig_hydra_cfg = instance.cfg
    OmegaConf.set_readonly(config.hydra, True)
    instance.cfg = config  # HydraConfig.get() is config.hydra, as after Hydra's set_config
    output_dir = os.path.join(
        str(OmegaConf.select(config, "hydra.sweep.dir")),
        str(OmegaConf.select(config, "hydra.sweep.subdir")),
    )
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    chdir = False
    try:
        ret = JobReturn()
        task_cfg = without_hydra(config)
        ret.cfg = task_cfg
        ret.hydra_cfg = config  # its ``hydra`` node is Hydra's ``hydra_cfg.hydra``
        ret.overrides = plain(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = bool(config.hydra.job.chdir)  # None: version_base 1.2 and later do not
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            folder = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            folder.mkdir(parents=True, exist_ok=True)
            files = {
                "config.yaml": plain(task_cfg),
                "hydra.yaml": {"hydra": plain(config.hydra)},
                "overrides.yaml": ret.overrides,
            }
            for name, node in files.items():
                (folder / name).write_text(to_yaml(node), encoding="utf-8")
        with env_override(config.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:
                ret.return_value = exc
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        instance.cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)
