"""Multi-sample importance-weighted bounds: IWAE, STL, DReG and VIMCO.

The objective is an ``ImportanceWeightedObjective`` (see ``estimators.base``): a joint
log p(x, z) and a proposal q_θ(z). With K importance samples z_1..z_K ~ q_θ and log weights
ℓ_k = log p(x, z_k) − log q_θ(z_k), the bound is

    L_K(θ) = E[ log (1/K) Σ_k exp ℓ_k ] ≤ log p(x),    L_1 = the ELBO,

and, as everywhere in this package, the quantity minimised is a loss: these estimators
estimate ∇θ (−L_K). Each of the ``n_samples`` terms of a surrogate is one estimate from
its own K samples; the surrogate's value is −log (1/K) Σ_k exp ℓ_k for all four.

Notation: w̃_k = exp ℓ_k / Σ_j exp ℓ_j, the normalised weights; z_k = g_θ(ε_k) for a
reparameterised q; ℓ^⊥_k, the log weight with q's parameters held fixed (the gradient
stopped at θ inside log q, the path z_k = g_θ(ε_k) kept).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent

from estimators.base import Estimator, NotApplicable, is_importance_weighted


def _positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"estimator.k must be a positive integer, got {value!r}")
    return value


def _carrying(value: Tensor, carrier: Tensor) -> Tensor:
    """``value``'s value with ``carrier``'s gradient."""
    return value.detach() + (carrier - carrier.detach())


class _ImportanceWeighted(Estimator):
    """Shared settings and checks: K, the objective's kind, and q's reparameterisation."""

    name = ""
    importance_weighted = True
    needs_rsample = True
    min_k = 1

    def __init__(self, k: int = 1):
        self.k = _positive_int(k)

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        if not is_importance_weighted(objective):
            raise NotApplicable(f"{self.name} needs an importance-weighted objective (log_joint)")
        if self.k < self.min_k:
            raise NotApplicable(
                f"{self.name}'s leave-one-out baseline needs k >= {self.min_k}, got {self.k}"
            )
        if self.needs_rsample:
            dist = objective.distribution(theta.detach())
            if not dist.has_rsample:
                kind = type(dist).__name__
                if isinstance(dist, Independent):
                    kind = f"Independent({type(dist.base_dist).__name__})"
                raise NotApplicable(
                    f"{self.name} needs a reparameterisable q; {kind} is not (vimco takes any q)"
                )

    def _fixed_q_log_weights(self, objective, theta: Tensor, n_samples: int):
        """(z, ℓ^⊥): z = g_θ(ε) [N, K, *batch, *event], ℓ^⊥ [N, K, *batch]."""
        z = objective.distribution(theta).rsample((n_samples, self.k))
        return z, objective.log_joint(z) - objective.distribution(theta.detach()).log_prob(z)


def _log_mean_exp(log_w: Tensor) -> Tensor:
    """log (1/K) Σ_k exp ℓ_k over dimension 1, [N, K, *batch] -> [N, *batch]."""
    return torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])


class IWAE(_ImportanceWeighted):
    """∇θ L_K ≈ ∇θ log (1/K) Σ_k exp ℓ_k(g_θ(ε_k)) = Σ_k w̃_k ∇θ ℓ_k,  ε_k ~ p(ε).

    The reparameterised gradient of the importance-weighted bound; at K = 1 the
    reparameterised ELBO gradient. Unbiased for ∇L_K. Its variance does not vanish at
    q = posterior: the term −Σ_k w̃_k ∇θ log q_θ(z) at fixed z is left, mean 0,
    covariance Fisher/K there.

    Requires: an importance-weighted objective (log_joint) whose q is reparameterisable.

    Shapes: theta [*batch, D] -> surrogate [N, *batch], N = n_samples estimates of K.
    Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders".

    Args:
        k: importance samples per estimate (K).
    """

    name = "iwae"

    def surrogate(self, objective, theta, n_samples):
        dist = objective.distribution(theta)
        z = dist.rsample((n_samples, self.k))
        return -_log_mean_exp(objective.log_joint(z) - dist.log_prob(z))


class STL(_ImportanceWeighted):
    """∇θ L_K ≈ Σ_k w̃_k ∇θ ℓ^⊥_k = Σ_k w̃_k ∂ℓ_k/∂z_k · ∂g_θ(ε_k)/∂θ  ("sticking the landing").

    IWAE's gradient without the score term −Σ_k w̃_k ∇θ log q_θ(z_k) at fixed z_k: the
    gradient through q's parameters in log q is stopped, the path is kept. At K = 1 the
    dropped term has mean zero, so STL is unbiased for the ELBO; for K > 1 it does not
    (E[Σ_k w̃_k ∇θ log q(z_k)] ≠ 0), so STL is biased for ∇L_K. At q = posterior
    ℓ^⊥ is constant in z and every estimate is exactly zero.

    Requires: an importance-weighted objective (log_joint) whose q is reparameterisable.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Roeder, Wu & Duvenaud (2017), "Sticking the landing: simple, lower-variance gradient
    estimators for variational inference".

    Args:
        k: importance samples per estimate (K).
    """

    name = "stl"
    unbiased = False  # for K > 1; at K = 1 it is unbiased

    def surrogate(self, objective, theta, n_samples):
        _, log_w_fixed = self._fixed_q_log_weights(objective, theta, n_samples)
        return -_log_mean_exp(log_w_fixed)


class DReG(_ImportanceWeighted):
    """∇θ L_K ≈ Σ_k w̃_k² ∂ℓ_k/∂z_k · ∂g_θ(ε_k)/∂θ  (doubly reparameterised).

    The score term of IWAE's gradient, reparameterised a second time, becomes
    Σ_k (w̃_k² − w̃_k) ∂ℓ_k/∂z_k ∂z_k/∂θ, leaving the path term with weights w̃_k² instead
    of w̃_k. Unbiased for ∇L_K; exactly zero at q = posterior. Parameters of the joint
    (a decoder) get IWAE's gradient Σ_k w̃_k ∇ log p(x, z_k), as in the paper.

    Requires: an importance-weighted objective (log_joint) whose q is reparameterisable.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Tucker, Lawson, Gu & Maddison (2018), "Doubly reparameterized gradient estimators for
    Monte Carlo objectives".

    Args:
        k: importance samples per estimate (K).
    """

    name = "dreg"

    def surrogate(self, objective, theta, n_samples):
        z, log_w_fixed = self._fixed_q_log_weights(objective, theta, n_samples)
        w = torch.softmax(log_w_fixed.detach(), 1)
        # θ reaches only the first sum, through the path z = g_θ(ε). The second evaluates
        # the joint at z held fixed, so that parameters of the joint get weights w̃ in all.
        carrier = (w.square() * log_w_fixed).sum(1)
        carrier = carrier + ((w - w.square()) * objective.log_joint(z.detach())).sum(1)
        return _carrying(-_log_mean_exp(log_w_fixed), -carrier)


class VIMCO(_ImportanceWeighted):
    """∇θ L_K ≈ Σ_k (L̂ − L̂_{−k}) ∇θ log q_θ(z_k) + Σ_k w̃_k ∇θ ℓ_k,  z_k ~ q_θ (no path).

    L̂ = log (1/K) Σ_j exp ℓ_j is the estimate, and the learning signal of sample k is
    measured against a leave-one-out baseline: L̂_{−k} = log (1/K) (Σ_{j≠k} exp ℓ_j +
    exp ℓ̄_{−k}), with exp ℓ̄_{−k} the geometric mean of the other K − 1 weights
    standing in for w_k. The baseline does not depend on z_k, so the estimate is unbiased
    for ∇L_K. The second sum holds θ's direct dependence, −Σ_k w̃_k ∇θ log q_θ(z_k) (and
    the joint's parameters' gradient).

    Requires: an importance-weighted objective (log_joint), K ≥ 2; log q_θ(z)
    differentiable in θ. z may be discrete (Bernoulli VAEs).

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Mnih & Rezende (2016), "Variational inference for Monte Carlo objectives".

    Args:
        k: importance samples per estimate (K ≥ 2).
    """

    name = "vimco"
    needs_rsample = False
    min_k = 2

    def surrogate(self, objective, theta, n_samples):
        dist = objective.distribution(theta)
        with torch.no_grad():
            z = dist.sample((n_samples, self.k))
        log_q = dist.log_prob(z)
        log_w = objective.log_joint(z) - log_q
        bound = _log_mean_exp(log_w)
        signal = bound.detach().unsqueeze(1) - leave_one_out_bound(log_w.detach())
        score = (signal * log_q).sum(1)
        return -(bound + score - score.detach())


def leave_one_out_bound(log_w: Tensor) -> Tensor:
    """VIMCO's baselines L̂_{−k}, [N, K, *batch], from log weights ℓ [N, K, *batch].

    log Σ_{j≠k} exp ℓ_j comes from exclusive prefix and suffix log-cumulative sums: no
    subtraction of w_k from the total, which cancels catastrophically when w_k dominates.
    """
    k = log_w.shape[1]
    empty = torch.full_like(log_w[:, :1], -math.inf)
    before = torch.cat([empty, torch.logcumsumexp(log_w, 1)[:, :-1]], 1)
    after = torch.cat([empty, torch.logcumsumexp(log_w.flip(1), 1)[:, :-1]], 1).flip(1)
    others = torch.logaddexp(before, after)  # log Σ_{j≠k} exp ℓ_j
    geometric = (log_w.sum(1, keepdim=True) - log_w) / (k - 1)  # ℓ̄_{−k}
    return torch.logaddexp(others, geometric) - math.log(k)
