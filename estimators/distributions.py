"""Helpers on torch distributions that several estimator families share."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent

from estimators.base import NotApplicable


def unwrap_independent(dist: Distribution) -> tuple[Distribution, int]:
    """The distribution inside any ``Independent`` wrappers, and how many of its batch
    dimensions the wrappers reinterpret as event dimensions."""
    event_dims = 0
    while isinstance(dist, Independent):
        event_dims += dist.reinterpreted_batch_ndims
        dist = dist.base_dist
    return dist, event_dims


def bernoulli_logits(dist: Distribution) -> tuple[Tensor, int]:
    """The logits φ [*batch, *event] of a Bernoulli or Independent(Bernoulli) and its number
    of event dimensions; ``NotApplicable`` for any other distribution."""
    base, event_dims = unwrap_independent(dist)
    if not isinstance(base, Bernoulli):
        raise NotApplicable(
            f"needs Bernoulli variables (Bernoulli or Independent(Bernoulli)); "
            f"the objective's distribution is {type(base).__name__}"
        )
    return base.logits, event_dims


def sum_event(t: Tensor, event_dims: int) -> Tensor:
    """Sum the trailing ``event_dims`` dimensions of ``t``."""
    return t.sum(tuple(range(-event_dims, 0))) if event_dims else t
