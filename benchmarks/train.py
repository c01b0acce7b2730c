"""``task=train``: optimise with an estimator and watch the gradient variance along the way.

Models (``vae_*``, ``bayes_logreg``) are trained with Adam on all their parameters, one
fresh minibatch per step; toys with plain SGD on θ (σ kept ≥ 1e-3). Every step adds a row
to ``train.parquet``:

    step, wall_time_s, loss, train_elbo, heldout_elbo, log10_var, optimality_gap

``wall_time_s`` is cumulative time spent in training steps only (evaluation is not
counted), so runs can be compared per second. ``loss`` is the step's minibatch −ELBO
estimate for a model (from ``n_samples`` fresh draws, outside the timed step) and the exact
L(θ) for a toy; ``optimality_gap`` is L(θ) − inf L for the toys that know their infimum.
``heldout_elbo`` (test-set ELBO, exact for small Bernoulli latents, otherwise Monte Carlo
with ``task.eval_samples`` draws) and ``log10_var`` (the training estimator's gradient
variance, ``all`` group for models) are filled every ``task.eval_every`` steps, when the
variance of the training estimator (for a model, in the state training left it: its
moving-average or learned baseline) and of every estimator in ``task.track`` (fresh) is
measured at the same parameters (the same-trajectory comparison of the DisARM and REBAR
papers). Those measurements are returned as the job's records, with a ``step`` column.

Files: ``train.parquet`` (rewritten atomically at every evaluation, so a killed run keeps
its progress) and, for models, ``checkpoint.pt`` (the latest ``state_dict``) and
``checkpoints/step-NNNNNNN.pt`` (one per evaluation), loadable with
``objective.checkpoint=PATH`` by ``task=variance``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from benchmarks.config import ConfigError, measurement_settings
from benchmarks.measure import measure_variance
from benchmarks.measure_model import measure_model_variance, model_cell, true_gradient
from benchmarks.storage import write_parquet_atomic
from estimators import Estimator, NotApplicable

TRAIN = "train.parquet"
CHECKPOINT = "checkpoint.pt"
TRAIN_COLUMNS = [
    "step", "wall_time_s", "loss", "train_elbo", "heldout_elbo", "log10_var",
    "optimality_gap", "objective", "estimator", "n_samples", "seed", "lr",
]  # fmt: skip
MIN_SIGMA = 1e-3


def toy_infimum(objective) -> float:
    """inf over θ of a toy's L(θ), where known (NaN otherwise)."""
    name = getattr(objective, "name", "")
    if name == "gaussian_quadratic":
        return 0.0  # mu = target, sigma -> 0
    if name == "gaussian_cosine":
        return -1.0 if objective.omega != 0 else 1.0  # omega·mu = pi, sigma -> 0
    if name == "bernoulli_threshold":
        return min(objective.target**2, (1 - objective.target) ** 2)  # p -> 0 or 1
    if name == "bernoulli_shared":
        # L is linear in p = sigmoid(phi): the infimum is at p -> 0 or p -> 1.
        targets = objective.targets
        return float(min(targets.square().sum(), (1 - targets).square().sum()))
    if name == "categorical_linear":
        return float(objective.rewards.min())  # all mass on the best reward
    return math.nan


def _estimator_options() -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return []
    return sorted(GlobalHydra.instance().config_loader().get_group_options("estimator"))


def check_train(cfg: DictConfig) -> None:
    """Refuse train settings no run can use (one-line ``ConfigError``)."""
    task = cfg.task
    for key in ("steps", "eval_every", "eval_samples"):
        value = task.get(key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"task.{key} must be a positive integer, got {value!r}")
    try:
        lr = float(task.lr)
    except (TypeError, ValueError):
        lr = math.nan
    if not lr > 0:
        raise ConfigError(f"task.lr must be a number > 0, got {task.lr!r}")
    if not isinstance(task.get("compile", False), bool):
        raise ConfigError(f"task.compile must be true or false, got {task.get('compile')!r}")
    track = task.get("track") or []
    if isinstance(track, str) or not OmegaConf.is_list(track) and not isinstance(track, list):
        raise ConfigError(f"task.track must be a list of estimator names, got {track!r}")
    options = _estimator_options()
    for name in track:
        if options and name not in options:
            raise ConfigError(
                f"task.track: unknown estimator {name!r}; choose from: {', '.join(options)}"
            )


def build_estimator(name: str) -> Estimator:
    """A fresh estimator from ``conf/estimator/<name>.yaml``, through Hydra's compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    if GlobalHydra.instance().is_initialized():
        node = compose(config_name="config", overrides=[f"estimator={name}"]).estimator
    else:
        from benchmarks.config import config_path

        with initialize_config_dir(config_path(), version_base="1.3"):
            node = compose(config_name="config", overrides=[f"estimator={name}"]).estimator
    return instantiate(node)


def _save_atomic(state: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train(
    estimator: Estimator,
    objective,
    *,
    estimator_name: str,
    objective_name: str,
    tracked: dict[str, Estimator],
    out: str | Path,
    steps: int,
    lr: float,
    eval_every: int,
    n_samples: int,
    replicates: int,
    seed: int,
    eval_samples: int = 16,
    warmup_steps: int = 0,
    timing_min_run_time: float = 0.02,
    nonfinite: str = "record",
    progress: bool | None = None,
    compile: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train ``objective`` with ``estimator``; return (train log, variance records).

    Args:
        tracked: estimators whose variance is measured at each evaluation, by name (fresh
            instances: measuring never touches the training estimator's state).
        out: folder for ``train.parquet`` and ``checkpoint.pt``.
        progress: show a tqdm bar (None: only on a terminal).
        compile: run each step's loss (forward, the estimator's surrogate, and so its
            backward) through ``torch.compile``. The first step then includes the
            compilation, which ``wall_time_s`` counts.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    is_model = getattr(objective, "is_model", False)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    estimator.reset()
    estimator.check(objective, objective.theta, n_samples)  # NotApplicable: the cell is skipped

    if is_model:
        optimizer = torch.optim.Adam(objective.parameters(), lr=lr)
        infimum = math.nan
    else:
        theta = objective.theta.detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([theta], lr=lr)
        infimum = toy_infimum(objective)
        sigma = [k for k, n in enumerate(objective.param_names) if n == "sigma"]

    def step_loss():
        if is_model:
            return objective.loss(estimator, n_samples)
        return estimator.surrogate(objective, theta, n_samples).mean(0).sum()

    if compile:
        step_loss = torch.compile(step_loss)

    log: list[dict] = []
    records: list[pd.DataFrame] = []
    wall = 0.0

    def evaluate(step: int, row: dict) -> None:
        """Variance of every tracked estimator at the current parameters, held-out ELBO."""
        with torch.random.fork_rng(devices=[]):
            if is_model:
                objective.measure_batch()
                torch.manual_seed(seed + 1)
                row["heldout_elbo"] = objective.elbo("test", eval_samples)
                truth = true_gradient(objective)
            for name, tracked_estimator in tracked.items():
                kwargs = dict(
                    estimator_name=name, objective_name=objective_name, n_samples=n_samples,
                    replicates=replicates, seed=seed + step, warmup_steps=warmup_steps,
                    timing_min_run_time=timing_min_run_time, nonfinite=nonfinite,
                )  # fmt: skip
                if is_model and name == estimator_name:
                    # The training estimator as training left it (its baseline state), on
                    # a copy so that measuring does not change the run.
                    frame = measure_model_variance(
                        copy.deepcopy(estimator), objective, truth=truth, step=step,
                        reset=False, **kwargs,
                    )  # fmt: skip
                elif is_model:
                    frame = measure_model_variance(
                        tracked_estimator, objective, truth=truth, step=step, **kwargs
                    )
                else:
                    frame = measure_variance(tracked_estimator, objective, **kwargs)
                    frame["step"] = step
                frame["task"] = "train"
                frame["train_estimator"] = estimator_name
                records.append(frame)
                if name == estimator_name:
                    ok = frame[frame["status"] == "ok"]
                    if is_model:
                        ok = ok[ok["param"] == "all"]
                    if len(ok):
                        row["log10_var"] = math.log10(ok["var_grad"].mean())
        write_parquet_atomic(pd.DataFrame(log, columns=TRAIN_COLUMNS), out / TRAIN)
        if is_model:
            # The latest weights, and one file per evaluation for task=variance later.
            (out / "checkpoints").mkdir(exist_ok=True)
            _save_atomic(objective.state_dict(), out / "checkpoints" / f"step-{step:07d}.pt")
            _save_atomic(objective.state_dict(), out / CHECKPOINT)
        print(
            f"step {step}/{steps}: loss {row['loss']:.4g}"
            + (f", held-out ELBO {row['heldout_elbo']:.4g}" if is_model else "")
            + (f", gap {row['optimality_gap']:.3g}" if not is_model else "")
            + f", log10 var {row['log10_var']:.3g}, {row['wall_time_s']:.2f} s training",
            file=sys.stderr,
        )

    def current_loss() -> float:
        if not is_model:
            return float(objective.exact_value(theta.detach()))
        with torch.no_grad():
            return float(objective.batch_loss(n_samples))

    bar = tqdm(range(steps + 1), disable=not progress if progress is not None else None)
    for step in bar:
        if step > 0:
            start = time.perf_counter()
            optimizer.zero_grad()
            if is_model:
                objective.next_batch(generator)
            loss = step_loss()
            loss.backward()
            optimizer.step()
            if not is_model:
                with torch.no_grad():
                    theta[sigma] = theta[sigma].clamp_min(MIN_SIGMA)
                    objective.theta = theta.detach().clone()
            wall += time.perf_counter() - start
        row = dict.fromkeys(TRAIN_COLUMNS, math.nan)
        row.update(
            step=step, wall_time_s=wall, objective=objective_name, estimator=estimator_name,
            n_samples=n_samples, seed=seed, lr=lr, loss=current_loss(),
        )  # fmt: skip
        if is_model:
            row["train_elbo"] = -row["loss"]
        else:
            row["optimality_gap"] = row["loss"] - infimum
        log.append(row)
        if step % eval_every == 0 or step == steps:
            evaluate(step, row)
            log[-1] = row
    write_parquet_atomic(pd.DataFrame(log, columns=TRAIN_COLUMNS), out / TRAIN)
    return pd.DataFrame(log, columns=TRAIN_COLUMNS), pd.concat(records, ignore_index=True)


def train_cell(cfg: DictConfig, estimator, objective, estimator_name: str, objective_name: str):
    """``task=train`` as configured (called by ``benchmarks.run``): returns the records."""
    from hydra.core.hydra_config import HydraConfig

    check_train(cfg)
    try:
        estimator.check(objective, objective.theta, cfg.n_samples)
    except NotApplicable:
        # The usual variance measurement records the reason, one row per parameter.
        if getattr(objective, "is_model", False):
            records = model_cell(cfg, estimator, objective, estimator_name, objective_name)
        else:
            records = measure_variance(
                estimator, objective, estimator_name=estimator_name,
                objective_name=objective_name, **measurement_settings(cfg),
            )  # fmt: skip
        return records.assign(task="train")
    names = [estimator_name, *[n for n in (cfg.task.track or []) if n != estimator_name]]
    tracked = {name: build_estimator(name) for name in names}
    _, records = train(
        estimator,
        objective,
        estimator_name=estimator_name,
        objective_name=objective_name,
        tracked=tracked,
        out=HydraConfig.get().runtime.output_dir,
        steps=cfg.task.steps,
        lr=float(cfg.task.lr),
        eval_every=cfg.task.eval_every,
        eval_samples=cfg.task.eval_samples,
        compile=bool(cfg.task.get("compile", False)),
        **measurement_settings(cfg),
    )
    return records
