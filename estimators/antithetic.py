"""Antithetic estimators for Bernoulli variables: ARM and DisARM.

Both spend n_samples evaluations of f on n_samples / 2 antithetic pairs. A pair comes from
one uniform vector u [*batch, *event]:

    b = 1[u < σ(φ)],    b̃ = 1[u > σ(−φ)] = 1[1 − u < σ(φ)],

so b and b̃ are each Bernoulli(σ(φ)) and negatively correlated. φ are the logits of the
distribution the objective returns for θ (a ``Bernoulli``, or an ``Independent`` wrapping
one, for vectors of bits), so the gradient reaches θ, and an encoder behind it, through
φ by the chain rule: the surrogate of a pair is Σ_event g.detach() · φ.

DisARM is ARM with the uniform integrated out given the pair (Rao-Blackwellised), so its
variance is never larger than ARM's on the same pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from estimators.base import Estimator, NotApplicable, StochasticObjective
from estimators.distributions import bernoulli_logits, sum_event


def _like_event(f: Tensor, u: Tensor) -> Tensor:
    """f [pairs, *batch] with singleton event dimensions appended, to broadcast with u."""
    return f.reshape(*f.shape, *[1] * (u.dim() - f.dim()))


class _AntitheticPairs(Estimator):
    """Shared machinery: checks, the antithetic draw, and the surrogate of a pair."""

    name = ""

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        if n_samples < 2 or n_samples % 2:
            raise NotApplicable(
                f"{self.name} evaluates f on antithetic pairs, so n_samples must be even "
                f"and at least 2, got {n_samples}"
            )
        bernoulli_logits(objective.distribution(theta.detach()))

    def pair_gradient(self, logits: Tensor, u: Tensor, f: Tensor, f_tilde: Tensor) -> Tensor:
        """The estimate of ∇φ L from one pair, [pairs, *batch, *event]."""
        raise NotImplementedError

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        if n_samples < 2 or n_samples % 2:
            raise NotApplicable(f"{self.name} needs an even n_samples >= 2, got {n_samples}")
        logits, event_dims = bernoulli_logits(objective.distribution(theta))
        pairs = n_samples // 2
        u = torch.rand((pairs, *logits.shape), dtype=logits.dtype, device=logits.device)
        phi = logits.detach()
        b = (u < torch.sigmoid(phi)).to(logits.dtype)  # [pairs, *batch, *event]
        b_tilde = (u > torch.sigmoid(-phi)).to(logits.dtype)
        f = objective.cost(torch.cat([b, b_tilde]))  # [2 * pairs, *batch]
        f, f_tilde = f[:pairs], f[pairs:]
        g = self.pair_gradient(phi, u, f.detach(), f_tilde.detach())
        # The mean of f over the pair keeps the pathwise gradient of parameters inside f
        # (a decoder); the samples themselves carry no gradient to θ.
        return 0.5 * (f + f_tilde) + sum_event(g.detach() * logits, event_dims)


class ARM(_AntitheticPairs):
    """Augment-REINFORCE-merge:

        ∇φ_k L ≈ (f(b̃) − f(b)) (u_k − ½),   b̃ = 1[u > σ(−φ)],  b = 1[u < σ(φ)],  u ~ U(0, 1)^K,

    averaged over n_samples / 2 independent pairs.

    Requires: Bernoulli variables (``Bernoulli`` or ``Independent(Bernoulli)``) with
    logits differentiable in θ; n_samples even (two evaluations of f per pair). f need not
    be differentiable. Unbiased.

    Shapes: theta [*batch, D] -> surrogate [n_samples / 2, *batch].
    Yin & Zhou (2019), "ARM: Augment-REINFORCE-merge gradient for stochastic binary
    networks", ICLR.
    """

    name = "arm"

    def pair_gradient(self, logits, u, f, f_tilde):
        return _like_event(f_tilde - f, u) * (u - 0.5)


class DisARM(_AntitheticPairs):
    """Discrete ARM, per dimension k of a vector of independent bits:

        ∇φ_k L ≈ ½ (f(b) − f(b̃)) (−1)^{b̃_k} 1[b_k ≠ b̃_k] σ(|φ_k|),

    with the antithetic pair b = 1[u < σ(φ)], b̃ = 1[u > σ(−φ)], u ~ U(0, 1)^K, averaged
    over n_samples / 2 independent pairs. In one dimension at φ = 0 the pair always
    differs and the estimate is exactly the gradient (variance 0).

    Requires: Bernoulli variables (``Bernoulli`` or ``Independent(Bernoulli)``) with
    logits differentiable in θ; n_samples even (two evaluations of f per pair). f need not
    be differentiable. Unbiased.

    Shapes: theta [*batch, D] -> surrogate [n_samples / 2, *batch].
    Dong, Mnih & Tucker (2020), "DisARM: An antithetic gradient estimator for binary
    latent variables", NeurIPS, eq. (9) (multivariate form).
    """

    name = "disarm"

    def pair_gradient(self, logits, u, f, f_tilde):
        b = u < torch.sigmoid(logits)
        b_tilde = u > torch.sigmoid(-logits)
        sign = 1.0 - 2.0 * b_tilde.to(logits.dtype)  # (−1)^{b̃}
        weight = sign * (b != b_tilde).to(logits.dtype) * torch.sigmoid(logits.abs())
        return 0.5 * _like_event(f - f_tilde, u) * weight
