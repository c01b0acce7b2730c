"""The one interface the tasks use for every objective, toy or model.

An objective implements ``estimators.StochasticObjective`` (``theta``, ``distribution``,
``cost``) for the estimators, and ``Objective`` below for the tasks: ``benchmarks.run``
measures it with ``measure``, and ``benchmarks.train`` optimises it with ``parameters``,
``loss``, ``constrain`` and logs ``step_row`` / ``evaluation_row``. What differs between a
toy (``benchmarks.objectives.toy.ToyObjective``) and a model
(``benchmarks.objectives.model.ModelObjective``) lives in these methods, so the tasks never
ask which kind they hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import Tensor

from benchmarks.settings import MeasureSettings


class Objective:
    """What a task needs from an objective beyond the estimator contract.

    Attributes:
        name: the objective's config name (``gaussian_quadratic``, ``vae_bernoulli``).
        optimizer_class: the optimiser ``task=train`` uses on ``parameters()``.
        infimum: inf over the parameters of the loss where known, else NaN; the training
            log's ``optimality_gap`` is the loss minus it.
    """

    name: str = ""
    optimizer_class: type[torch.optim.Optimizer] = torch.optim.SGD
    infimum: float = math.nan

    # -- training -----------------------------------------------------------------------
    def parameters(self) -> Iterable[Tensor]:
        """The leaves the optimiser updates."""
        raise NotImplementedError

    def loss(self, estimator, n_samples: int) -> Tensor:
        """A scalar whose value is the loss and whose gradient w.r.t. ``parameters()`` is
        one estimate from ``n_samples`` draws (what a training step differentiates)."""
        raise NotImplementedError

    def constrain(self) -> None:
        """Applied after every optimiser step: keep the parameters where they are valid."""

    def next_batch(self, generator: torch.Generator) -> None:
        """Move to a fresh training minibatch (objectives without data: nothing to do)."""

    def measure_batch(self) -> None:
        """Go back to the fixed minibatch on which variances are measured."""

    def step_row(self, n_samples: int, k: int = 1) -> dict[str, float]:
        """Columns of the training log at the current parameters: ``loss`` and, where
        they apply, ``train_elbo`` and ``optimality_gap``.

        ``k``: the K of the bound the training estimator optimises
        (``estimators.bound_k``); the loss logged is −L_K, −ELBO at K = 1.
        """
        raise NotImplementedError

    def evaluation_row(self, eval_samples: int, iwae_k: int = 100) -> dict[str, float]:
        """Columns of the training log filled at evaluation steps only (``heldout_elbo``
        from ``eval_samples`` draws per point, ``heldout_iwae`` with ``iwae_k``)."""
        return {}

    def write_pictures(self, folder) -> dict:
        """Pictures of the trained objective into ``folder`` at the end of training
        (a VAE's samples and reconstructions); returns the paths by file name."""
        return {}

    def checkpoint(self) -> dict | None:
        """The state to save at each evaluation (a ``state_dict``), or None for none."""
        return None

    # -- measurement --------------------------------------------------------------------
    def truth(self):
        """The true gradient at the current parameters, to share between the estimators
        measured there, or None where ``measure`` computes it itself cheaply."""
        return None

    def measure(
        self,
        estimator,
        settings: MeasureSettings,
        *,
        estimator_name: str,
        objective_name: str,
        step: int | None = None,
        reset: bool = True,
        truth=None,
    ) -> pd.DataFrame:
        """Bias, variance and cost of ``estimator`` at the current parameters.

        Args:
            step: the training step the parameters come from, for the rows' ``step``
                column (None outside training).
            reset: forget the estimator's state first; False measures it as it is.
            truth: a ``truth()`` from the same parameters.
        """
        raise NotImplementedError
