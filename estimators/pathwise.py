"""The pathwise estimator (reparameterisation trick)."""

from __future__ import annotations

from torch import Tensor

from estimators.base import Estimator, NotApplicable, StochasticObjective


class Reparameterization(Estimator):
    """∇θ E_{p_θ}[f(x)] ≈ (1/N) Σ_i ∇θ f(g_θ(ε_i)),  x = g_θ(ε), ε ~ p(ε).

    Requires: p_θ reparameterizable (``has_rsample``); f differentiable in x.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Kingma & Welling (2014), "Auto-encoding variational Bayes"; Rezende, Mohamed &
    Wierstra (2014); Glasserman (1991).
    """

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        dist = objective.distribution(theta.detach())
        if not dist.has_rsample:
            raise NotApplicable(
                f"reparameterization needs a reparameterizable distribution; "
                f"{type(dist).__name__} is not"
            )
        if not objective.cost_is_differentiable:
            raise NotApplicable("reparameterization needs a cost f differentiable in x")

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        x = objective.distribution(theta).rsample((n_samples,))  # [N, *batch, *event]
        return objective.cost(x)
