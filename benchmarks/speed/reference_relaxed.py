"""Hand-written references for the relaxation estimators, timed against the library.

The counterpart of ``reference.py`` for ``gumbel_softmax`` and ``straight_through`` on the
toys ``bernoulli_threshold`` and ``categorical_linear``, with their default settings
(conf/objective/*.yaml, conf/estimator/*.yaml):

- ``PLAIN[toy, estimator](theta, n) -> [D]``: one estimate the straightforward way (a
  ``RelaxedBernoulli`` / ``RelaxedOneHotCategorical`` rsample, the relaxed cost,
  ``torch.autograd.grad``). The library's ``estimate_gradient`` should cost no more.
- ``FLOOR[toy, estimator](theta, n, r) -> [r, D]``: the same ``r`` replicate estimates
  that ``replicate_gradients`` computes, as one fused expression with the pathwise
  derivative written out (no autograd, no distribution objects).

Both draw the very numbers the library draws, in the same order and shapes (uniforms
[N], [N, R] or [N, R, K], sample dimension first, clamped to [eps, 1 − eps] as
``torch.distributions`` clamps them), so under one seed they agree with it to rounding.

The derivatives. Binary Concrete: y = σ((φ + L) / τ), L = logit(u), so dy/dφ = y(1 − y)/τ
and, with f̃(y) = (y − t)², the estimate is mean 2(y − t)·y(1 − y)/τ. Categorical:
y = softmax((φ + G) / τ), G = −log(−log u), whose Jacobian is (diag y − y yᵀ)/τ; applied to
∇f̃ = rewards it gives y_k (rewards_k − y·rewards)/τ. Straight-through takes the same
backward path through y, but f̃'s slope at the hard sample x: 2(x − t) for the Bernoulli
toy, and rewards again for the linear categorical toy, whose floor therefore never needs x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical
from torch.nn.functional import one_hot

# --- the toys' and estimators' default constants -----------------------------------------

TARGET = 0.45  # bernoulli_threshold: f(b) = (b − TARGET)²
REWARDS = torch.tensor([1.0, 0.0, -1.0])  # categorical_linear: f(z) = REWARDS[z]
TEMPERATURE = {"gumbel_softmax": 0.5, "straight_through": 1.0}


def _tau(estimator: str, theta: Tensor) -> Tensor:
    return torch.tensor(TEMPERATURE[estimator], dtype=theta.dtype, device=theta.device)


def _rewards(like: Tensor) -> Tensor:
    return REWARDS.to(like.device, like.dtype)


# --- one estimate, written plainly -------------------------------------------------------


def _plain_grad(cost: Tensor, theta: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(cost.mean(), theta)
    return grad


def _plain_bernoulli(estimator: str) -> Callable[[Tensor, int], Tensor]:
    """One estimate on ``bernoulli_threshold``: a binary Concrete y, hardened for ST."""

    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        y = RelaxedBernoulli(_tau(estimator, theta), logits=theta[0]).rsample((n,))  # [N]
        if estimator == "straight_through":
            y = (y > 0.5).to(y.dtype) + (y - y.detach())
        return _plain_grad((y - TARGET) ** 2, theta)

    return plain


def _plain_categorical(estimator: str) -> Callable[[Tensor, int], Tensor]:
    """One estimate on ``categorical_linear``: a relaxed one-hot y, hardened for ST."""

    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        y = RelaxedOneHotCategorical(_tau(estimator, theta), logits=theta).rsample((n,))
        if estimator == "straight_through":
            hard = one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
            y = hard + (y - y.detach())
        return _plain_grad(y @ _rewards(y), theta)

    return plain


# --- the floor: R replicate estimates in one fused expression ---------------------------


def _uniform(shape, like: Tensor) -> Tensor:
    """torch.distributions' uniforms: ``rand`` clamped to [eps, 1 − eps]."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(eps, 1 - eps)


def _floor_bernoulli(estimator: str) -> Callable[[Tensor, int, int], Tensor]:
    """``r`` estimates [r, 1] on ``bernoulli_threshold``: mean 2(h − t)·y(1 − y)/τ, with
    h = y (Gumbel-softmax) or h = 1[y > ½] (straight-through)."""
    tau = TEMPERATURE[estimator]

    def floor(theta: Tensor, n: int, r: int) -> Tensor:
        finfo = torch.finfo(theta.dtype)
        logistic = torch.logit(_uniform((n, r), theta))  # L = log u − log(1 − u)  [N, R]
        # σ clipped to [tiny, 1 − eps], as SigmoidTransform clips it.
        y = torch.sigmoid((logistic + theta[0]) / tau).clamp_(finfo.tiny, 1 - finfo.eps)
        hard = (y > 0.5).to(y.dtype) if estimator == "straight_through" else y
        slope = (hard - TARGET) * y * (1 - y)  # f̃'(h)·dy/dφ, up to the constant 2/τ
        return slope.sum(0).mul_(2 / (tau * n)).unsqueeze(-1)

    return floor


def _floor_categorical(estimator: str) -> Callable[[Tensor, int, int], Tensor]:
    """``r`` estimates [r, K] on ``categorical_linear``: mean y_k (rewards_k − y·rewards)/τ.

    Straight-through's slope at the hard sample is rewards as well (f̃ is linear), so its
    floor is Gumbel-softmax's at τ = 1 and the argmax is never taken.
    """
    tau = TEMPERATURE[estimator]

    def floor(theta: Tensor, n: int, r: int) -> Tensor:
        rewards = _rewards(theta)
        k = theta.shape[-1]
        gumbel = _uniform((n, r, k), theta).log_().neg_().log_().neg_()  # −log(−log u)
        # Categorical's normalised logits, then softmax: exactly the library's y to rounding.
        y = torch.softmax((torch.log_softmax(theta, -1) + gumbel) / tau, -1)  # [N, R, K]
        value = (y @ rewards).unsqueeze(-1)  # y·rewards  [N, R, 1]
        return (y * (rewards - value)).sum(0).div_(tau * n)

    return floor


# --- the tables ---------------------------------------------------------------------------

PLAIN: dict[tuple[str, str], Callable[[Tensor, int], Tensor]] = {
    **{("bernoulli_threshold", e): _plain_bernoulli(e) for e in TEMPERATURE},
    **{("categorical_linear", e): _plain_categorical(e) for e in TEMPERATURE},
}
FLOOR: dict[tuple[str, str], Callable[[Tensor, int, int], Tensor]] = {
    **{("bernoulli_threshold", e): _floor_bernoulli(e) for e in TEMPERATURE},
    **{("categorical_linear", e): _floor_categorical(e) for e in TEMPERATURE},
}
