"""``hydra/sweeper=gradbench``: Hydra's basic sweeper, with the harness's own cost cut.

The cells are the basic sweeper's (the same ``-m`` grammar, the same ``hydra.sweeper.params``
of a preset, the command line winning). What it does differently:

- A cell whose records are complete for its configuration (``resume=true``) is recognised
  from its folder, which follows from its overrides, and the fingerprint the CLI's pre-check
  computed for it (or one cheap composition), and is not launched at all.
- Cells the pre-check composed and built are not composed again to validate them (Hydra's
  ``validate_batch_is_legal``); a sweep run without the pre-check is validated as before.
- The launcher gets a config loader that composes each combination of config-group choices
  once per process and sets plain values on a copy (``_core.CachingConfigLoader``), and each
  composition reuses the parsed files and Hydra's merged part of the ones before it
  (``_compose``); under ``hydra/launcher=joblib`` each worker gets a batch of cells, so
  Hydra's state is sent and each composition made once per batch, not once per cell.
- In this process (``hydra/launcher=basic``) and in joblib's workers each cell runs through
  ``_core.run_job``: Hydra's job step without its copies of the whole config.
- Progress is one line for the whole sweep on a terminal, nothing per cell in a log.
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it is
# in sys.modules, where dataclasses cannot resolve string annotations.
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf reads these)

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.gradbench_sweeper import _core

# Loggers of the launchers that write a line per cell (``#N : overrides``).
LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    "hydra_plugins.hydra_ray_launcher._core",
    "hydra_plugins.hydra_ray_launcher.ray_launcher",
)
BASIC_TARGET = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Joins the cells of one submitit task into the one override list Hydra's launcher passes.
CELL_SEP = "\x00"
# Batches per cell run at once under joblib: several, so that whoever ends early (this
# process, which starts at once, or a worker, which starts once it has imported torch)
# takes another.
BATCHES_PER_JOB = 8
# Seconds between looks at which submitit tasks have ended (each task's result file, and
# on Slurm its state), by executor: on a cluster's shared file system, gently.
POLL_S = {"local": 1.0, "slurm": 5.0}


@dataclass
class GradbenchSweeperConf:
    _target_: str = "hydra_plugins.gradbench_sweeper.gradbench_sweeper.GradbenchSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045
    # Under hydra/launcher=submitit_local or submitit_slurm: cells run one after another in
    # each task (a Slurm array task), where a task per cell would be mostly start-up.
    cells_per_task: int = 1


ConfigStore.instance().store(
    group="hydra/sweeper", name="gradbench", node=GradbenchSweeperConf, provider="gradbench"
)


class InProcessLauncher(BasicLauncher):
    """Hydra's basic launcher (``hydra/launcher=basic``), each cell run by ``_core.run_job``:
    Hydra's job step without its copies of the config. The sweeper launches one cell at a
    time, so Hydra's logging, which every launch sets up and every cell sets back, is set
    up by the first launch only: after that each cell's end has set it back."""

    logging_set = False

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        if not self.logging_set:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            self.logging_set = True
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        runs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            runs.append(_core.launch_cell(self.hydra_context, self.config, self.task_function,
                                          overrides, idx, job_id=idx))  # fmt: skip
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


class BatchedJoblibLauncher(JoblibLauncher):
    """Hydra's joblib launcher, ``n_jobs`` cells at a time: this process and ``n_jobs - 1``
    workers (``_core.worker_count``) take batches of cells from one queue, each taking the
    next as it ends one (``_core.WorkerFeed``). The cells start here while the workers
    import torch, and the machine starts one worker fewer. The workers the CLI's check
    started (``_core.StartedWorkers``) are the ones used. ``progress`` (the sweeper's) moves
    as each batch returns, in whatever order they end."""

    started = None
    feed = None
    progress = None

    def stop_workers(self, kill: bool = False) -> None:
        """End the sweep's workers, if any were started: idle ones would keep the command
        waiting at its exit. ``kill``: where they are (the sweep stopped on an error, or
        was interrupted)."""
        if self.feed is not None:
            self.feed.stop(kill)
        elif self.started:
            self.started.stop(kill)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        import cloudpickle
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, setup_globals

        from benchmarks.config import joblib_jobs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        indexed = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        jobs = joblib_jobs(self.joblib.get("n_jobs"))
        batches = _core.chunks(indexed, jobs * BATCHES_PER_JOB)
        queue = _core.BatchQueue(batches)
        runs: List[list] = [[] for _ in batches]  # noqa: UP006
        lock = threading.Lock()

        def returned(position: int, returns: list) -> None:
            with lock:
                runs[position] = returns
                if self.progress is not None:
                    self.progress.update(ran=len(returns), failed=_core.count_failed(returns))

        feed = None
        if jobs > 1 and len(batches) > 1:
            state = (self.hydra_context, self.config, self.task_function, Singleton.get_state(),
                     os.getcwd())  # fmt: skip
            feed = self.feed = _core.WorkerFeed(self.joblib, queue, execute_cells,
                                                cloudpickle.dumps(state), returned,
                                                self.started)  # fmt: skip
        threads = _core.torch_threads()
        try:
            for position, batch in queue:
                returned(position, _core.launch_batch(self.hydra_context, self.config,
                                                      self.task_function, batch))  # fmt: skip
        finally:
            queue.close()  # on an error here, the workers take no more
            # Hydra's logging and torch's threads back, as the cells here found them.
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            _core.torch_threads(threads)
        if feed is not None:
            feed.join()
        return [ret for batch in runs for ret in batch]


class SubmititProgress:
    """Hydra's submitit launcher (local or Slurm), moving the sweep's ``progress`` as each
    task ends, in whatever order: Hydra's launch waits on the tasks' results in the order
    it submitted them, so its launch returns, and the line would move, only once all have
    ended. Its executor's ``map_array`` is wrapped for the launch (``counted``); a task
    that failed ends the waiting there, and Hydra's launch raises it as before."""

    progress = None

    def __getstate__(self) -> dict:  # each task gets the launcher pickled, not the terminal
        return {k: v for k, v in self.__dict__.items() if k != "progress"}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        import submitit

        progress = self.progress
        if progress is None:
            return super().launch(job_overrides, initial_job_idx)
        map_array = submitit.AutoExecutor.map_array

        def counted(executor, *args, **kwargs):
            jobs = map_array(executor, *args, **kwargs)
            poll = POLL_S[self._EXECUTOR]
            for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
                try:
                    returns = job.results()[0]
                except Exception:  # Hydra's launch raises it, in its order
                    break
                returns = returns if isinstance(returns, list) else [returns]
                progress.update(ran=len(returns), failed=_core.count_failed(returns))
            return jobs

        submitit.AutoExecutor.map_array = counted
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = map_array


class ProgressLocalLauncher(SubmititProgress, LocalLauncher):
    """``hydra/launcher=submitit_local``, one cell per task (``SubmititProgress``)."""


class ProgressSlurmLauncher(SubmititProgress, SlurmLauncher):
    """``hydra/launcher=submitit_slurm``, one cell per task (``SubmititProgress``)."""


class BatchedSubmitit(SubmititProgress):
    """Hydra's submitit launcher (local or Slurm), running ``cells_per_task`` cells in
    each task: the cells of a task travel as one override list, joined by ``CELL_SEP``."""

    cells_per_task = 1

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        k = self.cells_per_task
        groups = [list(job_overrides[i : i + k]) for i in range(0, len(job_overrides), k)]
        tasks = [[CELL_SEP.join(cell) for cell in group] for group in groups]
        self._first = {initial_job_idx + i: i * k for i in range(len(groups))}
        runs = super().launch(tasks, initial_job_idx)
        return [ret for batch in runs for ret in batch]

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
        # Hydra's own per-cell call, by function: in a task, Hydra's plugin scan has made
        # new plugin classes, so super() cannot find this one's place among them.
        run_one = LocalLauncher.__call__
        first = self._first[job_num]
        return [
            run_one(self, cell.split(CELL_SEP) if cell else [], job_dir_key, first + i, job_id,
                    singleton_state)
            for i, cell in enumerate(sweep_overrides)
        ]  # fmt: skip


class BatchedLocalLauncher(BatchedSubmitit, LocalLauncher):
    """``hydra/launcher=submitit_local`` with ``hydra.sweeper.cells_per_task`` > 1."""


class BatchedSlurmLauncher(BatchedSubmitit, SlurmLauncher):
    """``hydra/launcher=submitit_slurm`` with ``hydra.sweeper.cells_per_task`` > 1."""


# Hydra's submitit launchers, by their ``_target_``: the sweeper's launcher for one cell
# per task and for ``cells_per_task`` > 1.
SUBMITIT = {
    f"{hydras.__module__}.{hydras.__qualname__}": (one, batched)
    for hydras, one, batched in [
        (LocalLauncher, ProgressLocalLauncher, BatchedLocalLauncher),
        (SlurmLauncher, ProgressSlurmLauncher, BatchedSlurmLauncher),
    ]
}


def execute_cells(position: int, batch: list, payload: bytes):
    """Run a batch of cells in a joblib worker, as Hydra's joblib ``execute_job`` runs one
    (its job id, ``<job name>_<index>``), each through ``_core.run_job``; ``payload`` is the
    launch's Hydra context, config, task function, Hydra state and working directory,
    pickled (unpickled once per worker, ``_core.unpickled``: the cells of its later batches
    go on from the state the earlier ones left, as in a process that runs them all).
    Returns ``(position, returns)``, the batch's place among the launch's batches
    travelling with its results, which may come back in any order.

    The cells run from the launch's working directory: a worker that loky starts while a
    cell here is in its own folder (``hydra.job.chdir=true``) starts in that folder."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    hydra_context, config, task_function, singleton_state, cwd = _core.unpickled(payload)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    _core.freeze_worker()
    return position, _core.launch_batch(hydra_context, config, task_function, batch)


class GradbenchSweeper(BasicSweeper):
    """Hydra's basic sweeper that launches only the cells with work to do (module doc)."""

    def __init__(self, max_batch_size=None, params=None, cells_per_task: int = 1) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        if cells_per_task < 1:
            raise ValueError(
                f"hydra.sweeper.cells_per_task must be at least 1, got {cells_per_task}"
            )
        self.cells_per_task = cells_per_task

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from benchmarks.precheck import planned_sweep

        plan = planned_sweep(Path(str(config.hydra.sweep.dir)))
        shared = plan.shared if plan is not None else None
        loader = _core.CachingConfigLoader(hydra_context.config_loader, shared)
        context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        launcher_cfg = config.hydra.launcher
        target = str(launcher_cfg.get("_target_"))
        params = OmegaConf.to_container(launcher_cfg, resolve=True)
        params.pop("_target_")
        if target == BASIC_TARGET:
            self.launcher = InProcessLauncher(**params)
        elif target == _core.JOBLIB_TARGET:
            self.launcher = BatchedJoblibLauncher(**params)
            self.launcher.started = plan.workers if plan is not None else None
            loader.to_workers = True
        elif target in SUBMITIT:
            one, batched = SUBMITIT[target]
            if self.cells_per_task > 1:
                self.launcher = batched(**params)
                self.launcher.cells_per_task = self.cells_per_task
            else:
                self.launcher = one(**params)
        else:
            super().setup(hydra_context=context, task_function=task_function, config=config)
            return
        self.hydra_context, self.config = context, config
        self.launcher.setup(hydra_context=context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from benchmarks.precheck import Plan, cell_key, planned_sweep

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        cells = self.split_arguments(overrides, None)[0]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        checked = planned_sweep(sweep_dir)
        plan = checked or Plan(True, sweep_dir, len(cells))
        progress = _core.Progress(len(cells))
        joblib = isinstance(self.launcher, BatchedJoblibLauncher)
        # They move the progress line themselves, as each batch or task ends.
        moves = isinstance(self.launcher, (BatchedJoblibLauncher, SubmititProgress))
        if moves:
            self.launcher.progress = progress
        todo = []
        for idx, cell in enumerate(cells):
            key = cell_key(cell)
            if key in plan.kept or self._complete(cell, plan.hashes.get(key)):
                progress.update(kept=1)
            else:
                todo.append((idx, cell))
        unchecked = [cell for _, cell in todo if cell_key(cell) not in plan.hashes]
        if unchecked:
            self.validate_batch_is_legal(unchecked)
        quiet = [logging.getLogger(name) for name in LAUNCHER_LOGGERS]
        levels = [log.level for log in quiet]
        for log in quiet:
            log.setLevel(logging.WARNING)
        returns: List[Sequence[JobReturn]] = []  # noqa: UP006
        ended = False  # without an error
        try:
            for batch in self._batches(todo):
                try:
                    results = self.launcher.launch(
                        [c for _, c in batch], initial_job_idx=batch[0][0]
                    )
                except Exception as exc:
                    if checked is None or not _core.is_uncompleted(exc):
                        raise
                    checked.interrupted = _core.uncompleted_line(exc)
                    break
                for r in results:
                    _ = r.return_value  # raises where the job raised, as Hydra's sweeper does
                    # Hydra's multirun drops what a sweep returns: a counted cell's configs
                    # kept there would hold thousands of cells' in memory, for the
                    # collector to walk on every full pass.
                    r.cfg = r.hydra_cfg = None
                if not moves:
                    progress.update(ran=len(results), failed=_core.count_failed(results))
                returns.append(results)
            ended = True
        finally:
            for log, level in zip(quiet, levels, strict=True):
                log.setLevel(level)
            progress.close()
            if joblib:
                self.launcher.stop_workers(kill=not ended)
        self.overrides = [cells]
        self.batch_index = 1
        return returns

    def _batches(self, todo: list) -> list:
        """Cells per ``launch``: one by one in this process (progress after each), else all
        at once (or ``max_batch_size`` at a time), the launcher running them in parallel."""
        if not todo:
            return []
        size = self.max_batch_size
        if size is None:
            size = 1 if isinstance(self.launcher, InProcessLauncher) else len(todo)
        return [todo[i : i + size] for i in range(0, len(todo), size)]

    def _complete(self, cell: Sequence[str], planned: str | None) -> bool:
        """Whether a cell's folder holds complete records for its configuration (whose
        fingerprint the pre-check may have ``planned``)."""
        from benchmarks.storage import RECORDS, records_complete

        resume = self.config.get("resume", True)
        for override in _core.parse(cell):
            if override.key_or_group == "resume":
                resume = override.value()
        if not resume:
            return False
        folder = _core.cell_folder(self.config, cell)
        if folder is None or not (folder / RECORDS).is_file():
            return False
        fingerprint = planned or self._fingerprint(cell)
        return fingerprint is not None and records_complete(folder / RECORDS, fingerprint)

    def _fingerprint(self, cell: Sequence[str]) -> str | None:
        """The job's ``config_hash`` of a cell, from one cheap composition."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        from benchmarks.schema import config_hash

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell))
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} values, as in the job
        try:
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            return config_hash(cfg)
        except Exception:  # a value only the job can resolve: the job decides
            return None
        finally:
            HydraConfig.instance().cfg = saved
