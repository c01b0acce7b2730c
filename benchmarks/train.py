"""``task=train``: optimise with an estimator and watch the gradient variance along the way.

Every objective offers the same training interface (``benchmarks.objectives.base.Objective``):
its ``optimizer_class`` (Adam on all of a model's parameters, one fresh minibatch per
step; plain SGD on a toy's θ, σ kept ≥ 1e-3 by the toy's ``constrain``) runs on
``parameters()``, each step differentiates ``loss``, and every step adds a row to
``train.parquet``:

    step, wall_time_s, loss, train_elbo, heldout_elbo, heldout_iwae, log10_var, optimality_gap,
    k, bound

``wall_time_s`` is cumulative time spent in training steps only (evaluation is not
counted), so runs can be compared per second. ``loss`` is the step's minibatch −ELBO
estimate for a model (from ``n_samples`` fresh draws, outside the timed step) and the exact
L(θ) for a toy; for a multi-sample estimator (``estimator.k`` = K) the loss trained and
logged is −L_K, its K in ``k`` and the bound's name in ``bound`` (``elbo``, ``L_K``), while
``train_elbo`` stays the ELBO; ``optimality_gap`` is L(θ) − inf L for the objectives that
know their infimum. ``heldout_elbo`` (test-set ELBO, exact for small Bernoulli latents,
otherwise Monte Carlo with ``eval_samples`` draws), ``heldout_iwae`` (the test-set
importance-weighted bound with ``iwae_k`` samples, Burda et al. 2016: the literature's
held-out log-likelihood estimate) and ``log10_var`` (the training estimator's gradient
variance, ``all`` group for models) are filled every ``eval_every`` steps, when the
variance of the training estimator (in the state training left it: its moving-average or
learned baseline) and of every tracked estimator (fresh) is measured at the same
parameters (the same-trajectory comparison of the DisARM and REBAR papers). Those
measurements are returned as the job's records, with a ``step`` column.

Files: ``train.parquet`` (rewritten atomically at every evaluation, so a killed run keeps
its progress) and, for objectives with a ``checkpoint()`` (the models), ``checkpoint.pt``
(the latest ``state_dict``) and ``checkpoints/step-NNNNNNN.pt`` (one per evaluation),
loadable with ``objective.checkpoint=PATH`` by ``task=variance``. At the end of training,
an objective's ``write_pictures`` adds its pictures (a VAE's ``samples.png``,
``reconstructions.png`` and, for two Gaussian latents, ``manifold.png``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from benchmarks.measure import bound_name
from benchmarks.objectives.base import Objective
from benchmarks.settings import TrainSettings
from benchmarks.storage import write_parquet_atomic
from estimators import Estimator, NotApplicable, bound_k

TRAIN = "train.parquet"
CHECKPOINT = "checkpoint.pt"
TRAIN_COLUMNS = [
    "step", "wall_time_s", "loss", "train_elbo", "heldout_elbo", "heldout_iwae", "log10_var",
    "optimality_gap", "objective", "estimator", "n_samples", "seed", "lr", "k", "bound",
]  # fmt: skip


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
    objective: Objective,
    settings: TrainSettings,
    *,
    estimator_name: str,
    objective_name: str,
    out: str | Path,
    tracked: dict[str, Estimator] | None = None,
    progress: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train ``objective`` with ``estimator``; return (train log, variance records).

    Args:
        tracked: more estimators whose variance is measured at each evaluation, by name
            (fresh instances: measuring never touches the training estimator's state).
        out: folder for ``train.parquet`` and the checkpoints.
        progress: show a tqdm bar (None: only on a terminal).

    With ``settings.compile``, each step's loss (forward, the estimator's surrogate, and so
    its backward) runs through ``torch.compile``; the first step then includes the
    compilation, which ``wall_time_s`` counts.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_samples, seed, steps = settings.n_samples, settings.seed, settings.steps
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    estimator.reset()
    estimator.check(objective, objective.theta, n_samples)  # NotApplicable: the cell is skipped
    optimizer = objective.optimizer_class(objective.parameters(), lr=settings.lr)
    k = bound_k(estimator)  # the loss trained and logged is −L_K (−ELBO at K = 1)

    def step_loss():
        return objective.loss(estimator, n_samples)

    if settings.compile:
        step_loss = torch.compile(step_loss)

    log: list[dict] = []
    records: list[pd.DataFrame] = []
    wall = 0.0

    def evaluate(step: int, row: dict) -> None:
        """Variance of every measured estimator at the current parameters, held-out ELBO."""
        with torch.random.fork_rng(devices=[]):
            objective.measure_batch()
            torch.manual_seed(seed + 1)
            row.update(objective.evaluation_row(settings.eval_samples, settings.iwae_k))
            truth = objective.truth()
            at_step = dataclasses.replace(settings, seed=seed + step)
            # The training estimator as training left it (its baseline state), on a copy
            # so that measuring does not change the run; the tracked ones fresh.
            measured = {estimator_name: (copy.deepcopy(estimator), False)}
            others = (tracked or {}).items()
            measured.update({n: (e, True) for n, e in others if n != estimator_name})
            for name, (measured_estimator, reset) in measured.items():
                frame = objective.measure(
                    measured_estimator, at_step, estimator_name=name,
                    objective_name=objective_name, step=step, reset=reset, truth=truth,
                )  # fmt: skip
                frame["task"] = "train"
                frame["train_estimator"] = estimator_name
                records.append(frame)
                if name == estimator_name:
                    ok = frame[frame["status"] == "ok"]
                    if (ok["param"] == "all").any():  # a model's row over all its groups
                        ok = ok[ok["param"] == "all"]
                    if len(ok):
                        row["log10_var"] = math.log10(ok["var_grad"].mean())
        write_parquet_atomic(pd.DataFrame(log, columns=TRAIN_COLUMNS), out / TRAIN)
        state = objective.checkpoint()
        if state is not None:
            # The latest weights, and one file per evaluation for task=variance later.
            (out / "checkpoints").mkdir(exist_ok=True)
            _save_atomic(state, out / "checkpoints" / f"step-{step:07d}.pt")
            _save_atomic(state, out / CHECKPOINT)
        shown = {"heldout_elbo": "held-out ELBO {:.4g}", "optimality_gap": "gap {:.3g}"}
        print(
            f"step {step}/{steps}: loss {row['loss']:.4g}"
            + "".join(f", {text.format(row[k])}" for k, text in shown.items()
                      if not math.isnan(row[k]))
            + f", log10 var {row['log10_var']:.3g}, {row['wall_time_s']:.2f} s training",
            file=sys.stderr,
        )  # fmt: skip

    bar = tqdm(range(steps + 1), disable=not progress if progress is not None else None)
    for step in bar:
        if step > 0:
            start = time.perf_counter()
            optimizer.zero_grad()
            objective.next_batch(generator)
            loss = step_loss()
            loss.backward()
            optimizer.step()
            objective.constrain()
            wall += time.perf_counter() - start
        row = dict.fromkeys(TRAIN_COLUMNS, math.nan)
        row.update(
            step=step, wall_time_s=wall, objective=objective_name, estimator=estimator_name,
            n_samples=n_samples, seed=seed, lr=settings.lr, k=k, bound=bound_name(k),
        )  # fmt: skip
        row.update(objective.step_row(n_samples, k))
        log.append(row)
        if step % settings.eval_every == 0 or step == steps:
            evaluate(step, row)
            log[-1] = row
    write_parquet_atomic(pd.DataFrame(log, columns=TRAIN_COLUMNS), out / TRAIN)
    objective.write_pictures(out)
    return pd.DataFrame(log, columns=TRAIN_COLUMNS), pd.concat(records, ignore_index=True)


def train_task(cell, out: str | Path) -> pd.DataFrame:
    """``task=train`` on a built cell (``benchmarks.config.Cell``): returns its records.

    An estimator that does not apply gives the usual variance rows saying why.
    """
    estimator, objective, settings = cell.estimator, cell.objective, cell.task
    try:
        estimator.check(objective, objective.theta, settings.n_samples)
    except NotApplicable:
        records = objective.measure(
            estimator, settings, estimator_name=cell.estimator_name,
            objective_name=cell.objective_name,
        )  # fmt: skip
        return records.assign(task="train")
    _, records = train(
        estimator,
        objective,
        settings,
        estimator_name=cell.estimator_name,
        objective_name=cell.objective_name,
        tracked=cell.tracked,
        out=out,
    )
    return records
