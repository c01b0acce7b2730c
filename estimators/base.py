"""The one contract every gradient estimator in this package follows.

The problem. A stochastic objective is L(θ) = E_{x ~ p_θ}[f(x)]. An estimator sees it as
any object with

    distribution(theta) -> torch.distributions.Distribution
        p_θ, with batch shape ``theta.shape[:-1]``: the last dimension of ``theta`` holds
        the D parameter coordinates, leading dimensions are independent copies.
    cost(x) -> Tensor
        f, applied elementwise over sample and batch dimensions: [N, *batch, *event] ->
        [N, *batch].
    cost_is_differentiable: bool
        whether f may be differentiated with respect to x (pathwise estimators need it).

    relaxed_cost(y) -> Tensor            (optional; relaxation-based estimators need it)
        f extended to continuous relaxations of discrete samples: y in [0, 1] with the
        shape of x for Bernoulli variables; probability vectors [..., K] for categorical
        ones (f of a one-hot vector must equal f of its index).

``theta`` is whatever the distribution is built from. For a toy it is the parameter
vector itself; for a model it is an encoder's output, and gradients flow on to the
encoder's weights by the chain rule.

The estimator. ``Estimator.surrogate(objective, theta, n_samples)`` draws its own samples
with ``torch.distributions`` (``sample``/``rsample``, so seeding torch makes a draw
repeatable) and returns a *surrogate* of shape [m, *batch]: m independent terms, one per
sample (or one per antithetic pair: an estimator that spends n_samples evaluations of f
on pairs returns n_samples / 2 terms). Its value means nothing; its gradient does:
``surrogate.mean(0)`` differentiated with respect to ``theta`` is the gradient estimate
built from n_samples evaluations of f. Surrogates compose with the
rest of a model's loss, and ``objective_with_estimator_gradient`` gives a loss whose value
is the objective and whose gradient is the estimator's (Pyro's trick).

Drawing inside the estimator, not in the caller, lets each family draw what it needs:
plain samples, reparameterised samples, antithetic pairs, or extra independent samples to
fit a baseline.

Importance-weighted objectives. The multi-sample estimators (``estimators.multisample``:
IWAE, STL, DReG, VIMCO) need more than p_θ and f: a latent-variable model's joint and a
proposal, as any object with

    distribution(theta) -> torch.distributions.Distribution
        the proposal q_θ(z), batch shape ``theta.shape[:-1]`` as above.
    log_joint(z) -> Tensor
        log p(x, z) for the objective's fixed data x, elementwise over sample and batch
        dimensions: [*sample, *batch, *event] -> [*sample, *batch]. It may depend on
        parameters of its own (a decoder); θ reaches it only through z.

(``ImportanceWeightedObjective``). With K importance samples z_k ~ q_θ and weights
w_k = p(x, z_k) / q_θ(z_k), the bound is L_K = E[log (1/K) Σ_k w_k] ≤ log p(x); K = 1 is
the ELBO, and L_K rises to log p(x) as K grows. K is the estimator's setting ``k``
(``estimator.k``), apart from ``n_samples``: each of the surrogate's ``n_samples`` terms is
one estimate from its own K samples. The loss is −L_K: these surrogates' gradients
estimate ∇θ(−L_K), as every surrogate here estimates the gradient of a loss to minimise.
An objective that knows its bound exactly takes K in ``exact_value(theta, k=...)`` and
``true_grad(k=...)``: the truth a measurement compares with is that of the estimator's K
(``bound_k(estimator)``; 1 for single-sample estimators, whose loss is the ELBO's).
A multi-sample surrogate is the whole loss −L_K, prior and entropy included: a model
that adds an analytic KL to single-sample surrogates (the VAEs) adds none to these
(``Estimator.importance_weighted`` says which kind a surrogate is).

Measuring. ``replicate_gradients`` turns a surrogate into ``replicates`` independent
gradient estimates with one forward and one backward pass: ``theta`` is copied once per
replicate along a new batch dimension, so each copy's gradient is that replicate's
estimate. No Python loop over replicates.
"""

from __future__ import annotations

import abc
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution


class NotApplicable(ValueError):
    """An estimator cannot be used on this objective or with these settings."""


class StochasticObjective(Protocol):
    """What an estimator needs to know about L(θ) = E_{x ~ p_θ}[f(x)]."""

    cost_is_differentiable: bool

    def distribution(self, theta: Tensor) -> Distribution: ...

    def cost(self, x: Tensor) -> Tensor: ...


class ImportanceWeightedObjective(Protocol):
    """What a multi-sample estimator needs to know about L_K = E[log (1/K) Σ_k w_k]."""

    def distribution(self, theta: Tensor) -> Distribution: ...

    def log_joint(self, z: Tensor) -> Tensor: ...


def is_importance_weighted(objective) -> bool:
    """Whether ``objective`` provides the joint log p(x, z) of an importance-weighted bound."""
    return callable(getattr(objective, "log_joint", None))


class Estimator(abc.ABC):
    """Base class: a recipe for a surrogate whose gradient estimates ∇θ E_{p_θ}[f].

    Subclasses set ``unbiased`` (False where the estimate's mean is not the gradient of
    the objective they are given, e.g. a relaxation's, or STL's for K > 1) and implement
    ``surrogate``; they override ``check`` to refuse objectives or sample sizes they cannot
    handle, and ``reset`` if they carry state across calls.
    """

    unbiased: bool = True
    # Whether the surrogate estimates the loss −L_K of an ImportanceWeightedObjective (its
    # K in ``k``) rather than E_{p_θ}[f].
    importance_weighted: bool = False

    def check(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> None:
        """Raise ``NotApplicable`` with a one-sentence reason if this cannot be estimated."""
        if n_samples < 1:
            raise NotApplicable(f"n_samples must be at least 1, got {n_samples}")

    @abc.abstractmethod
    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        """Return the surrogate, [n_samples, *batch] for ``theta`` of shape [*batch, D]."""

    def reset(self) -> None:  # noqa: B027 - most estimators are stateless
        """Forget state carried across calls (moving averages, learned baselines)."""


def bound_k(estimator: Estimator) -> int:
    """K of the bound L_K whose gradient ``estimator`` estimates: its ``k`` for a
    multi-sample estimator, 1 (the ELBO) for any other."""
    return estimator.k if getattr(estimator, "importance_weighted", False) else 1


def estimate_gradient(
    estimator: Estimator, objective: StochasticObjective, theta: Tensor, n_samples: int
) -> Tensor:
    """One gradient estimate from ``n_samples`` draws, shaped like ``theta``."""
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        _mean_over_terms(estimator.surrogate(objective, theta, n_samples)), theta
    )
    return grad


def _mean_over_terms(surrogate: Tensor) -> Tensor:
    """The surrogate's mean over its terms, summed over the batch: a scalar.

    Written as a sum, then one division, because the backward of a sum broadcasts one
    number where ``mean``'s backward writes 1/m into a tensor the surrogate's size.
    """
    return surrogate.sum() / surrogate.shape[0]


def replicate_gradients(
    estimator: Estimator,
    objective: StochasticObjective,
    theta: Tensor,
    n_samples: int,
    replicates: int,
) -> Tensor:
    """``replicates`` independent estimates of ∇θ L at ``theta`` [D], as [replicates, D].

    The replicate copies of ``theta`` are separate leaves of one graph, and replicate r's
    surrogate depends on copy r only, so the gradient of the summed surrogates with
    respect to the copies stacks the r estimates: one batched backward pass.
    """
    copies = theta.detach().expand(replicates, *theta.shape).clone().requires_grad_(True)
    surrogate = estimator.surrogate(objective, copies, n_samples)  # [n_samples, replicates]
    (grads,) = torch.autograd.grad(_mean_over_terms(surrogate), copies)
    return grads


def objective_with_estimator_gradient(value: Tensor, surrogate: Tensor) -> Tensor:
    """A tensor equal to ``value`` whose gradient is the surrogate's (Pyro's trick).

    Use it to train with an estimator while logging the objective itself.
    """
    surrogate = surrogate.mean(0)
    return value.detach() + (surrogate - surrogate.detach())
