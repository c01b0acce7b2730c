"""The score-function estimator (REINFORCE, likelihood ratio), with optional baselines."""

from __future__ import annotations

from torch import Tensor

from estimators.base import Estimator, StochasticObjective
from estimators.baselines import Baseline
from estimators.scores import revalidation_skipped, sample, with_score

# Up to this many samples (N × batch), a per-coordinate baseline that can score the
# estimate's samples together with its own extra draws (one backward pass, then
# (f − b_k) s_k directly) is cheapest: fixed costs dominate. Beyond it, materialising the
# [N, *batch, D] per-sample scores costs more than a second pass through the score, whose
# gradient is reduced over samples as it goes. Both ways give the same estimate.
PER_SAMPLE_SCORE_LIMIT = 2**16


class Reinforce(Estimator):
    """∇θ E_{p_θ}[f(x)] ≈ (1/N) Σ_i (f(x_i) − b_i) ∇θ log p_θ(x_i),  x_i ~ p_θ.

    Requires: log p_θ(x) differentiable in θ. f need not be differentiable, nor x
    continuous. Unbiased for any baseline independent of the sample it multiplies.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Williams (1992), "Simple statistical gradient-following algorithms for connectionist
    reinforcement learning"; Glynn (1990).

    Args:
        baseline: a ``Baseline`` from ``estimators.baselines``, or None for plain REINFORCE.
    """

    def __init__(self, baseline: Baseline | None = None):
        if baseline is not None and not isinstance(baseline, Baseline):
            raise TypeError(f"baseline must be a Baseline or None, got {type(baseline).__name__}")
        self.baseline = baseline

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        if self.baseline is not None:
            self.baseline.check(n_samples)
            self.baseline.check_objective(objective)

    def reset(self):
        if self.baseline is not None:
            self.baseline.reset()

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        dist = objective.distribution(theta)
        x = sample(dist, (n_samples,))  # [N, *batch, *event]
        f = objective.cost(x)  # [N, *batch]
        # f itself stays in the surrogate (its value is f) so that parameters of f (a
        # decoder) get their pathwise gradient; x is a plain sample, so no gradient
        # reaches θ through f. ``with_score`` adds weight · ∇θ log p_θ(x) to the gradient.
        if hasattr(self.baseline, "with_scores") and f.numel() <= PER_SAMPLE_SCORE_LIMIT:
            # The baseline scored our samples along with its own: (f − b_k) s_k is known
            # per sample, and θ·that (detached) has exactly that gradient.
            b, score = self.baseline.with_scores(objective, dist, theta, x, f)
            weight = (f.detach().unsqueeze(-1) - b.detach()) * score  # [N, *batch, D]
            return f + (theta * weight.detach()).sum(-1)
        if self.baseline is None:
            return with_score(f, dist, x, f.detach())
        b = self.baseline(objective, theta, x, f).detach()
        if not self.baseline.per_coordinate:
            return with_score(f, dist, x, f.detach() - b)
        # b [*batch, D] holds one constant per coordinate. The score of p at
        # θ̄ + (θ − θ̄)·b (θ̄ = θ detached) is b_k ∂_k log p_θ(x) in coordinate k, which is
        # exactly the baseline term to subtract.
        scaled = theta.detach() + (theta - theta.detach()) * b
        with revalidation_skipped():  # the values of theta, already checked in dist
            scaled_dist = objective.distribution(scaled)
        return with_score(with_score(f, dist, x, f.detach()), scaled_dist, x, -1.0)
