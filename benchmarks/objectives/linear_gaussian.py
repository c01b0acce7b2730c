"""``linear_gaussian``: an importance-weighted bound whose value and gradient are exact.

The model is z ~ N(0, 1), x | z ~ N(z, 1), with x fixed; the proposal is q = N(mu, sigma²),
θ = (mu, sigma). Then log p(x) = log N(x; 0, 2), the posterior is N(m, v) with m = x/2,
v = ½, and the ELBO is log p(x) − KL(q ‖ posterior). The loss is −L_K, the negative of the
bound L_K = E[log (1/K) Σ_k w_k], w = p(x, z)/q(z) (see ``estimators.base``); its K is the
estimator's, passed as ``exact_value(theta, k)`` and ``true_grad(k)``.

Exact for every K. K = 1 is the closed form. For K ≥ 2 the Frullani integral
log s = ∫_0^∞ (e^{−t} − e^{−ts}) dt/t, applied to s = (1/K) Σ_k w_k / p(x) and averaged,
turns the K-dimensional expectation into one dimension, because E[e^{−ts}] = φ(t/K)^K
factorises over the independent samples, φ(u) = E_q[exp(−u w/p(x))]:

    L_K = log p(x) + ∫_{−∞}^{∞} (exp(−e^τ) − φ(e^τ/K)^K) dτ,   t = e^τ.

Both integrals are trapezoid sums in float64 (φ over z = mu + sigma·ε on an ε grid with
the normal density as weight; the τ integrand is smooth and decays at both ends), so the
gradient is autograd's through them. ``tests/test_multisample.py`` checks the sum against
the closed form at K = 1 and a two-dimensional trapezoid rule at K = 2 (values to 1e-12,
gradients to 1e-11), against REFERENCE.md's large-K expansion at K = 500, and, through the
estimators' unbiasedness tests, against Monte Carlo at K = 5.

The single-sample estimators see f(z) = −log w(z), with q held at the objective's current
θ: the θ-dependence this leaves out has expected gradient E_q[∇θ log q_θ(z)] = 0, so
their gradient of E[f] is that of the ELBO's loss, K = 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Normal

from benchmarks.objectives.toy import GaussianToy, ToyObjective, number, positive

# The posterior's variance, v.
POSTERIOR_VAR = 0.5
# ε grid of the inner expectation φ: ±12 standard deviations (the normal tail beyond
# holds 4e-33). The trapezoid rule converges exponentially in 1/step on these smooth
# integrands: halving either step below changes L_K by under 1e-14.
EPS_HALF_WIDTH, EPS_STEP = 12.0, 0.04
# τ = log t grid of the outer integral: from e^{−40} (where the integrand is below
# t·Var(s) ≈ 1e-17) up to where φ^K has decayed (``_tau_max``).
TAU_MIN, TAU_STEP = -40.0, 0.1


def _normal_log_prob(value, loc, var):
    """log N(value; loc, var) for numbers or tensors (a tensor var: the log is torch's)."""
    log_var = torch.log(var) if isinstance(var, Tensor) else math.log(var)
    return -0.5 * ((value - loc) ** 2 / var + math.log(2 * math.pi) + log_var)


def _tau_max(sigma: float, k: int) -> float:
    """Where φ(t/K)^K < e^{−35} or so: it falls like t^{−αK}, α = v/(σ² − v) for σ² > v.

    A q narrower than the posterior has w bounded away from 0, and φ^K falls faster than
    exponentially in t.
    """
    if sigma**2 <= POSTERIOR_VAR * (1 + 1e-3):
        return 40.0
    alpha = POSTERIOR_VAR / (sigma**2 - POSTERIOR_VAR)
    return max(40.0, 35.0 / (alpha * k))


def log_mean_bound(log_w: Tensor, prob: Tensor, k: int, tau_max: float) -> Tensor:
    """E[log (1/K) Σ_k s_k] for K independent copies of s, by the Frullani integral.

    s takes the value exp(``log_w[..., i]``) with probability ``prob[..., i]`` (the states
    of a discrete q, or quadrature nodes and weights for a continuous one), with E[s] = 1;
    [*batch, E] -> [*batch]. ``tau_max``: where φ(e^τ/K)^K has decayed below e^{−35}.
    Differentiable in both arguments.
    """
    opts = {"dtype": log_w.dtype, "device": log_w.device}
    tau = torch.arange(TAU_MIN, tau_max + TAU_STEP / 2, TAU_STEP, **opts)  # [T]
    # φ(e^τ/K) for every τ: [*batch, T, E] -> [*batch, T]
    u = (tau - math.log(k)).unsqueeze(-1)
    phi = (torch.exp(-torch.exp(u + log_w.unsqueeze(-2))) * prob.unsqueeze(-2)).sum(-1)
    integrand = torch.exp(-torch.exp(tau)) - phi.pow(k)
    return integrand.sum(-1) * TAU_STEP


class ImportanceWeightedToy(ToyObjective):
    """A toy ``estimators.ImportanceWeightedObjective`` (``distribution``, ``log_joint``)
    whose loss −L_K is known exactly for every K (``exact_value(theta, k)``).

    It is an ``estimators.StochasticObjective`` too, for single-sample estimators, with
    the ELBO's integrand as f (see the module docstring).
    """

    def log_joint(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def log_marginal(self) -> float:
        """log p(x), the supremum of L_K over q for every K."""
        raise NotImplementedError

    @property
    def infimum(self) -> float:
        return -self.log_marginal()

    def exact_value(self, theta: Tensor, k: int = 1) -> Tensor:
        raise NotImplementedError

    def cost(self, z):
        return self.distribution(self.theta).log_prob(z) - self.log_joint(z)

    def true_grad(self, k: int = 1) -> Tensor:
        """∇θ(−L_K) at ``self.theta``, exact, [D]."""
        theta = self.theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.exact_value(theta, k).sum(), theta)
        return grad


class LinearGaussian(ImportanceWeightedToy, GaussianToy):
    """z ~ N(0, 1), x | z ~ N(z, 1), q = N(mu, sigma²); loss −L_K (−ELBO at K = 1)."""

    name = "linear_gaussian"
    param_names = ["mu", "sigma"]

    def __init__(self, x=1.4, mu=0.5, sigma=0.8**0.5, device="cpu", dtype=torch.float32):
        super().__init__([number("mu", mu), positive("sigma", sigma)], device, dtype)
        self.x = number("x", x)

    @property
    def posterior(self) -> tuple[float, float]:
        """(mean, standard deviation) of p(z | x), the q at which ∇L_K = 0 for every K."""
        return self.x / 2, POSTERIOR_VAR**0.5

    def log_marginal(self) -> float:
        """log p(x) = log N(x; 0, 2), the limit of L_K as K grows."""
        return _normal_log_prob(self.x, 0.0, 2.0)

    def distribution(self, theta):
        return Normal(theta[..., 0], theta[..., 1])

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x, z) = log N(z; 0, 1) + log N(x; z, 1), elementwise."""
        return -0.5 * (z.square() + (self.x - z).square()) - math.log(2 * math.pi)

    def exact_value(self, theta: Tensor, k: int = 1) -> Tensor:
        """The loss −L_K(θ), [*batch] for ``theta`` [*batch, 2], exact."""
        if k == 1:
            mu, sigma = theta[..., 0], theta[..., 1]
            m, v = self.posterior[0], POSTERIOR_VAR
            kl = torch.log(v**0.5 / sigma) + (sigma**2 + (mu - m) ** 2) / (2 * v) - 0.5
            return kl - self.log_marginal()
        return -self.bound_by_quadrature(theta, k)

    def bound_by_quadrature(self, theta: Tensor, k: int) -> Tensor:
        """L_K(θ) by the Frullani integral of the module docstring, [*batch], any k ≥ 1."""
        dtype = theta.dtype
        theta = theta.to(torch.float64)
        mu, sigma = theta[..., :1], theta[..., 1:]  # [*batch, 1]
        opts = {"dtype": torch.float64, "device": theta.device}
        eps = torch.arange(-EPS_HALF_WIDTH, EPS_HALF_WIDTH + EPS_STEP / 2, EPS_STEP, **opts)
        weight = torch.exp(-0.5 * eps.square()) * (EPS_STEP / math.sqrt(2 * math.pi))
        z = mu + sigma * eps  # [*batch, E]
        log_w = (
            self.log_joint(z) - _normal_log_prob(z, mu, sigma.square()) - self.log_marginal()
        )  # log w/p(x)
        tau_max = _tau_max(float(theta[..., 1].detach().max()), k)
        return (self.log_marginal() + log_mean_bound(log_w, weight, k, tau_max)).to(dtype)
