"""Continuous relaxations of discrete variables: Gumbel-softmax (Concrete) and
straight-through.

A Bernoulli bit b = 1[φ + L > 0], L ~ Logistic(0, 1), is relaxed to the binary Concrete
variable y = σ((φ + L) / τ) in (0, 1); a categorical index z = argmax_k (φ_k + G_k),
G_k ~ Gumbel(0, 1), is relaxed to the probability vector y = softmax((φ + G) / τ). Both are
reparameterised, so f can be differentiated through y, but only f extended to relaxed
values makes sense there: these estimators call the objective's ``relaxed_cost(y)``
(see ``estimators.base``) and refuse objectives without one. The gradient is that of a
different objective, E[f(y)], so both are biased; the bias vanishes as τ → 0 while the
variance grows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    RelaxedOneHotCategorical,
)
from torch.nn.functional import one_hot

from estimators.base import Estimator, NotApplicable, StochasticObjective
from estimators.distributions import unwrap_independent


def _temperature(value, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"estimator.temperature must be a number, got {value!r}") from None
    if not value > 0:
        raise ValueError(f"estimator.temperature must be > 0, got {value}")
    return value


def _discrete_base(dist: Distribution) -> Distribution:
    base, _ = unwrap_independent(dist)
    if not isinstance(base, (Bernoulli, Categorical)):
        raise NotApplicable(
            f"needs Bernoulli or Categorical variables; the objective's distribution is "
            f"{type(base).__name__}"
        )
    return base


def _check_relaxable(objective: StochasticObjective, theta: Tensor) -> None:
    if not callable(getattr(objective, "relaxed_cost", None)):
        raise NotApplicable("needs an objective with relaxed_cost(y), f on relaxed samples")
    _discrete_base(objective.distribution(theta.detach()))


def _relaxed_sample(base: Distribution, temperature: float, n_samples: int) -> Tensor:
    """n_samples reparameterised Concrete draws: [N, *batch, *event] for Bernoulli,
    [N, *batch, *event, K] (probability vectors) for Categorical."""
    logits = base.logits
    if isinstance(base, Bernoulli):
        return relaxed_bernoulli(logits, temperature, n_samples)
    tau = torch.tensor(temperature, dtype=logits.dtype, device=logits.device)
    return RelaxedOneHotCategorical(tau, logits=logits).rsample((n_samples,))


def relaxed_bernoulli(logits: Tensor, temperature: float, n_samples: int) -> Tensor:
    """``RelaxedBernoulli(temperature, logits=logits).rsample((n_samples,))``, the same
    draw (same uniforms, same clamping, equal up to rounding) with a third of the autograd
    graph: y = σ((φ + L)/τ), L = log u − log(1 − u).

    torch.distributions builds y from the clamped probability p = σ(φ) through
    log p − log(1 − p), every step over the expanded [N, *batch] samples and recorded for
    the backward pass; here φ is clamped where that clamping would bite (|φ| ≥ logit(1 −
    ε)) and enters once. On bernoulli_threshold with 10⁶ samples the estimate took 2.6× a
    hand-fused floor through torch.distributions.
    """
    eps = torch.finfo(logits.dtype).eps
    shape = (n_samples, *logits.shape)
    with torch.no_grad():
        u = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp_(eps, 1 - eps)
        noise = torch.log(u).sub_(torch.log1p(u.neg_()))  # logistic L = logit(u)
        noise.div_(temperature)  # L/τ, so that φ/τ is divided on [*batch] only
    bound = math.log1p(-eps) - math.log(eps)  # logit(1 − ε): where σ(φ) gets clamped
    y = torch.sigmoid(logits.clamp(-bound, bound) / temperature + noise)
    return y.clamp(eps, 1 - eps)


class GumbelSoftmax(Estimator):
    """Concrete / Gumbel-softmax relaxation:

        ∇θ E_{p_θ}[f(x)] ≈ (1/N) Σ_i ∇θ f̃(y_i),   y_i = σ((φ + L_i) / τ)  (Bernoulli)
                                                    y_i = softmax((φ + G_i) / τ)  (Categorical)

    with f̃ the objective's ``relaxed_cost`` and φ the logits of p_θ. Biased: it is the
    exact gradient of E[f̃(y)], not of E[f(x)].

    Requires: p_θ a Bernoulli or Categorical (possibly inside ``Independent``) with logits
    differentiable in θ; the objective's ``relaxed_cost(y)`` differentiable in y.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Maddison, Mnih & Teh (2017), "The Concrete distribution"; Jang, Gu & Poole (2017),
    "Categorical reparameterization with Gumbel-softmax", both ICLR.

    Args:
        temperature: τ > 0; small τ gives less bias and more variance.
    """

    unbiased = False

    def __init__(self, temperature: float = 0.5):
        self.temperature = _temperature(temperature)

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        _check_relaxable(objective, theta)

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        base = _discrete_base(objective.distribution(theta))
        y = _relaxed_sample(base, self.temperature, n_samples)
        return objective.relaxed_cost(y)


class StraightThrough(Estimator):
    """Straight-through: the exact discrete sample x forward, a relaxed gradient backward.

        z = x + y − stop_gradient(y),   ∇θ E_{p_θ}[f(x)] ≈ (1/N) Σ_i ∇θ f̃(z_i),

    where f̃ is the objective's ``relaxed_cost`` (so f̃(z) = f(x) in value) and y is

    * with a temperature τ (straight-through Gumbel-softmax, Jang et al. 2017): the
      Concrete sample whose hard version is x, i.e. x = 1[y > ½] for Bernoulli and
      x = one_hot(argmax y) for Categorical; x is then an exact draw from p_θ;
    * with ``temperature=None`` (the straight-through estimator of Bengio et al. 2013):
      the mean of p_θ, σ(φ) or softmax(φ), with x drawn from p_θ.

    Biased: the backward pass pretends f̃ is linear between the discrete values.

    Requires: p_θ a Bernoulli or Categorical (possibly inside ``Independent``) with logits
    differentiable in θ; the objective's ``relaxed_cost(y)`` differentiable in y.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Bengio, Léonard & Courville (2013), "Estimating or propagating gradients through
    stochastic neurons for conditional computation"; Jang, Gu & Poole (2017).

    Args:
        temperature: τ > 0 for straight-through Gumbel-softmax, or None for the plain
            straight-through estimator through the mean.
    """

    unbiased = False

    def __init__(self, temperature: float | None = 1.0):
        self.temperature = _temperature(temperature, allow_none=True)

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        _check_relaxable(objective, theta)

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        base = _discrete_base(objective.distribution(theta))
        bernoulli = isinstance(base, Bernoulli)
        if self.temperature is None:
            x = base.sample((n_samples,))  # [N, *batch, *event]
            y = base.probs.expand(n_samples, *base.probs.shape)
            if not bernoulli:
                x = one_hot(x, y.shape[-1]).to(y.dtype)  # [N, *batch, *event, K]
        else:
            y = _relaxed_sample(base, self.temperature, n_samples)
            if bernoulli:
                x = (y > 0.5).to(y.dtype)
            else:
                x = one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
        # x + (y − y) is exactly x in value; (x + y) − y would round.
        return objective.relaxed_cost(x + (y - y.detach()))
