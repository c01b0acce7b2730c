"""Hand-written references for the measure-valued estimator on the Gaussian toys.

The companions of ``reference.py`` for ``estimators.MeasureValued`` (coupled, its default):

- ``PLAIN``: one estimate written inline the straightforward way (torch ops, the weak
  derivatives of N(μ, σ²) with f evaluated on their positive and negative samples, a
  surrogate, ``torch.autograd.grad``).
- ``FLOOR``: the same ``r`` replicate estimates that ``replicate_gradients`` computes, as one
  fused expression (no autograd, no distribution objects).

Both draw the library's random numbers in the library's order: U for the Weibull W, then
ε [.., 3] for the double-sided Maxwell M, then the uniform U' that couples the Gaussian
point x⁰ = μ + σ M U' to M; the floor draws them as [N, R] (sample dimension first), so
under one seed both agree with the library to rounding. Keyed by (toy, "measure_valued")
and built on the toys' default settings (conf/objective/*.yaml).

For x ~ N(μ, σ²), W ~ Weibull(√2, 2), M double-sided Maxwell (Mohamed et al. 2020, §6):

    ∂L/∂μ ≈ (f(μ + σW) − f(μ − σW)) / (σ √(2π)),    ∂L/∂σ ≈ (f(μ + σM) − f(μ + σMU')) / σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.config import load_file

_OBJECTIVES = Path(__file__).resolve().parents[2] / "conf" / "objective"
TARGET = float(load_file(_OBJECTIVES / "gaussian_quadratic.yaml").target)
OMEGA = float(load_file(_OBJECTIVES / "gaussian_cosine.yaml").omega)
SQRT_2PI = math.sqrt(2 * math.pi)


# --- the costs, written as the toys write them -------------------------------------------


def quadratic(x: Tensor) -> Tensor:
    """f(x) = (x − target)² of ``gaussian_quadratic``."""
    d = x - TARGET
    return d * d


def cosine(x: Tensor) -> Tensor:
    """f(x) = cos(omega·x) of ``gaussian_cosine``."""
    return torch.cos(OMEGA * x)


COSTS = {"gaussian_quadratic": quadratic, "gaussian_cosine": cosine}


# --- the draws, in the library's order ---------------------------------------------------


def _draws(shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """W ~ Weibull(√2, 2), M ~ double-sided Maxwell and U' ~ U(0, 1), each ``shape``."""
    opts = {"dtype": like.dtype, "device": like.device}
    w = (-2.0 * torch.log1p(-torch.rand(shape, **opts))).sqrt()  # Rayleigh by inversion
    eps = torch.randn((*shape, 3), **opts)
    m = eps[..., 0].sign() * eps.norm(dim=-1)  # ±‖ε‖
    return w, m, torch.rand(shape, **opts)


# --- one estimate, written plainly -------------------------------------------------------


def _plain(cost: Callable[[Tensor], Tensor]) -> Callable[[Tensor, int], Tensor]:
    def plain(theta: Tensor, n: int) -> Tensor:
        """One measure-valued estimate [2] of ∇θ E_{N(θ₀, θ₁²)}[f] from ``n`` draws."""
        theta = theta.detach().requires_grad_(True)
        mu, sigma = theta.detach()
        w, m, u = _draws((n,), theta)
        x0 = mu + sigma * m * u  # N(μ, σ²), coupled to M
        g_mu = (cost(mu + sigma * w) - cost(mu - sigma * w)) / (sigma * SQRT_2PI)
        g_sigma = (cost(mu + sigma * m) - cost(x0)) / sigma
        surrogate = (g_mu * theta[0] + g_sigma * theta[1]).mean()
        (grad,) = torch.autograd.grad(surrogate, theta)
        return grad

    return plain


# --- the floor: R replicate estimates in one fused expression ---------------------------


def _floor(cost: Callable[[Tensor], Tensor]) -> Callable[[Tensor, int, int], Tensor]:
    def floor(theta: Tensor, n: int, r: int) -> Tensor:
        """``r`` independent estimates [r, 2] from ``n`` draws each, no autograd."""
        mu, sigma = float(theta[0]), float(theta[1])
        w, m, u = _draws((n, r), theta)  # each [N, R]
        sw = sigma * w
        g_mu = (cost(mu + sw) - cost(mu - sw)).mean(0) / (sigma * SQRT_2PI)
        sm = sigma * m
        g_sigma = (cost(mu + sm) - cost(mu + sm * u)).mean(0) / sigma
        return torch.stack([g_mu, g_sigma], -1)

    return floor


PLAIN: dict[tuple[str, str], Callable[[Tensor, int], Tensor]] = {
    (toy, "measure_valued"): _plain(cost) for toy, cost in COSTS.items()
}
FLOOR: dict[tuple[str, str], Callable[[Tensor, int, int], Tensor]] = {
    (toy, "measure_valued"): _floor(cost) for toy, cost in COSTS.items()
}
