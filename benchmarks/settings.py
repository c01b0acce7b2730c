"""The plain, typed settings a task takes: what ``benchmarks.config`` reads from the config.

Nothing here knows about Hydra: a notebook or a test builds these directly. Each dataclass
checks its values when it is made, with the one-line ``ConfigError`` messages the command
line prints, so a bad value is refused in the same words wherever it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks.errors import ConfigError

# What a measurement does with non-finite replicate estimates: record the count and leave
# the statistics NaN, or compute the statistics over the finite replicates only.
NONFINITE = ("record", "drop")


def check_sizes(n_samples: int, replicates: int, nonfinite: str = "record") -> None:
    """Refuse sizes no variance measurement can use (``ConfigError``, one line)."""
    if n_samples < 1:
        raise ConfigError(f"n_samples must be at least 1, got {n_samples}")
    if replicates < 2:
        raise ConfigError(f"replicates must be at least 2 to estimate a variance, got {replicates}")
    if nonfinite not in NONFINITE:
        raise ConfigError(
            f"task.nonfinite must be one of {', '.join(NONFINITE)}; got {nonfinite!r}"
        )


@dataclass(frozen=True)
class MeasureSettings:
    """What every variance measurement takes (``task=variance``, and along training).

    Attributes:
        n_samples: draws per gradient estimate.
        replicates: independent estimates whose spread is the variance.
        seed: seeds torch before the measurement.
        warmup_steps: single estimates before measuring (they warm stateful baselines).
        timing_min_run_time: seconds spent timing one estimate (median of blocks).
        nonfinite: ``record`` (count non-finite estimates, statistics NaN) or ``drop``
            (statistics over the finite replicates).
        max_batch_samples: draws per batched pass of a toy; larger measurements are chunked.
    """

    n_samples: int
    replicates: int
    seed: int = 0
    warmup_steps: int = 10
    timing_min_run_time: float = 0.05
    nonfinite: str = "record"
    max_batch_samples: int = 2**22

    def __post_init__(self) -> None:
        check_sizes(self.n_samples, self.replicates, self.nonfinite)

    def measure_kwargs(self) -> dict:
        """The keyword arguments ``measure_variance`` and ``measure_model_variance`` share."""
        names = ("n_samples", "replicates", "seed", "warmup_steps", "timing_min_run_time",
                 "nonfinite")  # fmt: skip
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class VarianceSettings(MeasureSettings):
    """``task=variance``: one measurement at the objective's parameters."""


@dataclass(frozen=True)
class TrainSettings(MeasureSettings):
    """``task=train``: optimise, and measure variances every ``eval_every`` steps.

    Attributes:
        steps: optimiser steps.
        lr: learning rate.
        eval_every: steps between evaluations (variances, held-out ELBO, checkpoint).
        eval_samples: samples per data point of a Monte Carlo held-out ELBO.
        iwae_k: samples per data point of the held-out importance-weighted bound.
        compile: run each step's loss through ``torch.compile``.
        track: more estimators whose variance is measured at the same parameters.
    """

    steps: int = 300
    lr: float = 0.003
    eval_every: int = 100
    eval_samples: int = 16
    iwae_k: int = 100
    compile: bool = False
    track: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("steps", "eval_every", "eval_samples", "iwae_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"task.{key} must be a positive integer, got {value!r}")
        try:
            lr = float(self.lr)
        except (TypeError, ValueError):
            lr = math.nan
        if not lr > 0:
            raise ConfigError(f"task.lr must be a number > 0, got {self.lr!r}")
        object.__setattr__(self, "lr", lr)
        if not isinstance(self.compile, bool):
            raise ConfigError(f"task.compile must be true or false, got {self.compile!r}")
        if isinstance(self.track, str) or not all(isinstance(n, str) for n in self.track):
            raise ConfigError(f"task.track must be a list of estimator names, got {self.track!r}")
        object.__setattr__(self, "track", tuple(self.track))
