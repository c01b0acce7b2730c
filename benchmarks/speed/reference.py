"""Hand-written references the library is timed against.

Two kinds, both written without any gradbench abstraction:

- ``plain_estimate``: one gradient estimate the straightforward way a user would write it
  (a ``torch.distributions`` object, a surrogate, ``torch.autograd.grad``). The library's
  ``estimate_gradient`` should cost no more.
- ``fused_replicates``: the floor. The same ``R`` replicate estimates that
  ``replicate_gradients`` computes, as one fused expression with the score function
  written out analytically (no autograd, no distribution objects). No generic
  implementation can beat it by much; the library should stay within a small factor.

Both are keyed by toy name and estimator name and use the toys' default settings
(conf/objective/*.yaml): they are checked against the library in ``test_references.py``.
Noise is drawn as [N, R] (sample dimension first), as ``torch.distributions`` draws it, so
the references see the very same numbers as the library under the same seed.

This module covers the REINFORCE family, ``reparam``, ARM and DisARM; the relaxations
(``reference_relaxed``), the measure-valued estimator (``reference_measure_valued``), the
multi-sample estimators (``reference_multisample``) and REBAR and RELAX
(``reference_control_variates``) have their own modules, dispatched from here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Normal

from benchmarks.speed import (
    reference_control_variates,
    reference_measure_valued,
    reference_multisample,
    reference_relaxed,
    reference_shared,
)

# --- the toys in plain torch -------------------------------------------------------------
# Each toy: its distribution from theta [*batch, D], its cost f(x), and (for Gaussians) f'(x).


REWARDS = torch.tensor([1.0, 0.0, -1.0])


def _gaussian(theta):
    return Normal(theta[..., 0], theta[..., 1])


# The costs are written as the toys write them (target 0, omega 1), so that the comparison
# measures the library's abstractions and nothing else.
PLAIN_TOYS = {
    "gaussian_quadratic": (_gaussian, lambda x: (lambda d: d * d)(x - 0.0)),
    "gaussian_cosine": (_gaussian, lambda x: torch.cos(1.0 * x)),
    "bernoulli_threshold": (lambda t: Bernoulli(logits=t[..., 0]), lambda b: (b - 0.45) ** 2),
    "categorical_linear": (lambda t: Categorical(logits=t), lambda z: REWARDS[z]),
}
GAUSSIAN_COSTS = {  # f and f' for the Gaussian toys, for the pathwise floor
    "gaussian_quadratic": (lambda x: x * x, lambda x: 2.0 * x),
    "gaussian_cosine": (torch.cos, lambda x: -torch.sin(x)),
}
REFERENCE_ESTIMATORS = (
    "reinforce", "reinforce_loo", "reinforce_ema", "reinforce_learned", "reinforce_optimal",
)  # fmt: skip
REFERENCE_ESTIMATORS_PATHWISE = ("reparam",)


# References written in their own modules: (toy, estimator) -> plain and floor functions.
# A plain reference is built per run (the stateful ones keep a baseline across calls).
OTHER_PLAIN = {
    **{key: (lambda fn=fn: fn) for key, fn in reference_relaxed.PLAIN.items()},
    **{key: (lambda fn=fn: fn) for key, fn in reference_measure_valued.PLAIN.items()},
    **{key: (lambda fn=fn: fn) for key, fn in reference_multisample.PLAIN.items()},
    **reference_control_variates.PLAIN,
    **{
        (reference_shared.TOY, e): (lambda e=e: reference_shared.SharedPlain(e))
        for e in reference_shared.ESTIMATORS
    },
}


def _baseline_free(floor):
    """A floor of an estimator without a baseline, called like the others."""
    return lambda theta, n, r, baseline: floor(theta, n, r)


OTHER_FLOOR = {
    **{key: _baseline_free(fn) for key, fn in reference_relaxed.FLOOR.items()},
    **{key: _baseline_free(fn) for key, fn in reference_measure_valued.FLOOR.items()},
    **{key: _baseline_free(fn) for key, fn in reference_multisample.FLOOR.items()},
    **reference_control_variates.FLOOR,
    **reference_shared.FLOOR,
}


def has_reference(toy: str, estimator: str) -> bool:
    """Whether this module has a plain implementation and a floor for the pair."""
    if (toy, estimator) in OTHER_PLAIN:
        return (toy, estimator) in OTHER_FLOOR
    if estimator in ANTITHETIC:
        return toy == "bernoulli_threshold"
    if estimator in REFERENCE_ESTIMATORS:
        return toy in PLAIN_TOYS
    return estimator in REFERENCE_ESTIMATORS_PATHWISE and toy in GAUSSIAN_COSTS


def baseline_value(estimator, theta: Tensor) -> float | dict[str, Tensor]:
    """The constant a moving-average or learned baseline subtracts in the next call at
    ``theta`` (0 for others): what the floor subtracts. The learned baseline's training
    step after it changes later calls, not this one. For REBAR and RELAX, the control
    variate's state instead (``reference_control_variates.control_variate_state``)."""
    if getattr(estimator, "control_variate", None) is not None:
        return reference_control_variates.control_variate_state(estimator)
    baseline = getattr(estimator, "baseline", None)
    if getattr(baseline, "net", None) is not None:
        with torch.no_grad():
            return float(baseline.net(theta))
    value = getattr(baseline, "value", None)
    return 0.0 if value is None else float(value)


# --- one estimate, written plainly -------------------------------------------------------


class PlainEstimate:
    """One gradient estimate of ``estimator`` on ``toy``, the way one would write it inline.

    ``reinforce_ema`` keeps its moving average here, as the library does, and
    ``reinforce_learned`` its MLP baseline (conf/estimator/reinforce_learned.yaml: 32 tanh
    units, one Adam step at lr 0.01 per call).
    """

    def __init__(self, toy: str, estimator: str, decay: float = 0.9):
        if (toy, estimator) in OTHER_PLAIN:
            self.other = OTHER_PLAIN[toy, estimator]()
            return
        self.other = None
        self.dist_fn, self.cost_fn = PLAIN_TOYS[toy]
        self.toy, self.estimator = toy, estimator
        self.decay = decay
        self.average = None
        self.net = self.optimizer = None

    def __call__(self, theta: Tensor, n: int) -> Tensor:
        if self.other is not None:
            return self.other(theta, n)
        if self.estimator in ANTITHETIC:
            return plain_antithetic(self.estimator, theta, n)
        theta = theta.detach().requires_grad_(True)
        if self.estimator == "reparam":
            x = self.dist_fn(theta).rsample((n,))
            (grad,) = torch.autograd.grad(self.cost_fn(x).mean(), theta)
            return grad
        dist = self.dist_fn(theta)
        x = dist.sample((n,))
        f = self.cost_fn(x)
        if self.estimator == "reinforce_optimal":
            return self._optimal(theta, n, x, f)
        if self.estimator == "reinforce":
            weight = f
        elif self.estimator == "reinforce_loo":
            weight = f - (f.sum() - f) / (n - 1)
        elif self.estimator == "reinforce_ema":
            baseline = 0.0 if self.average is None else self.average
            mean = f.mean()
            self.average = (
                mean
                if self.average is None
                else self.decay * self.average + (1 - self.decay) * mean
            )
            weight = f - baseline
        elif self.estimator == "reinforce_learned":
            weight = f - self._learned(theta.detach(), f)
        else:
            raise ValueError(f"no plain implementation of {self.estimator}")
        (grad,) = torch.autograd.grad((weight * dist.log_prob(x)).mean(), theta)
        return grad

    def _learned(self, theta, f):
        """b = MLP(θ), then one Adam step on (mean f − MLP(θ))², which has the gradient of
        mean (f − MLP(θ))², as the library fits it."""
        if self.net is None:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(theta.shape[-1], 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
            ).to(device=theta.device, dtype=theta.dtype)
            with torch.no_grad():
                self.net[2].weight.zero_()
                self.net[2].bias.fill_(float(f.mean()))
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        with torch.no_grad():
            b = self.net(theta).squeeze(-1)
        self.optimizer.zero_grad()
        (f.mean(0) - self.net(theta).squeeze(-1)).square().mean().backward()
        self.optimizer.step()
        return b

    def _optimal(self, theta, n, x, f):
        # Per-sample scores from one backward over per-sample copies of theta, for the
        # estimate's samples and for n fresh ones that fit b_k = E[f s_k²] / E[s_k²].
        x_extra = self.dist_fn(theta.detach()).sample((n,))
        xs = torch.cat([x, x_extra])
        copies = theta.detach().expand(2 * n, *theta.shape).clone().requires_grad_(True)
        log_p = self.dist_fn(copies).log_prob(xs)  # [2N]
        (scores,) = torch.autograd.grad(log_p.sum(), copies)  # [2N, D]
        score, score_extra = scores[:n], scores[n:]
        sq = score_extra.square()
        b = (self.cost_fn(x_extra)[:, None] * sq).sum(0) / sq.sum(0)
        return ((f[:, None] - b) * score).mean(0)


# --- antithetic pairs (ARM, DisARM) on bernoulli_threshold ---------------------------------
# Both draw one uniform per pair, u [pairs, *batch], as the library does, so plain, floor
# and library see the same numbers under one seed.


def _pair_weights(estimator, phi, u, f, f_tilde):
    """The per-pair gradient with respect to the logit, before averaging over pairs."""
    if estimator == "arm":
        return (f_tilde - f) * (u - 0.5)
    b, b_tilde = u < torch.sigmoid(phi), u > torch.sigmoid(-phi)
    sign = 1.0 - 2.0 * b_tilde.to(phi.dtype)
    return 0.5 * (f - f_tilde) * sign * (b != b_tilde).to(phi.dtype) * torch.sigmoid(phi.abs())


def _antithetic_draw(phi, pairs):
    u = torch.rand((pairs, *phi.shape), dtype=phi.dtype, device=phi.device)
    b = (u < torch.sigmoid(phi)).to(phi.dtype)
    b_tilde = (u > torch.sigmoid(-phi)).to(phi.dtype)
    return u, (b - 0.45) ** 2, (b_tilde - 0.45) ** 2


def plain_antithetic(estimator: str, theta: Tensor, n: int) -> Tensor:
    """One ARM or DisARM estimate on ``bernoulli_threshold``, with a surrogate g · φ."""
    theta = theta.detach().requires_grad_(True)
    logits = Bernoulli(logits=theta[..., 0]).logits
    u, f, f_tilde = _antithetic_draw(logits.detach(), n // 2)
    g = _pair_weights(estimator, logits.detach(), u, f, f_tilde)
    (grad,) = torch.autograd.grad((g * logits).mean(), theta)
    return grad


def fused_antithetic(estimator: str, theta: Tensor, n: int, r: int) -> Tensor:
    """``r`` ARM or DisARM estimates [r, 1] from n / 2 pairs each: the mean pair weight."""
    phi = theta[0].expand(r)
    u, f, f_tilde = _antithetic_draw(phi, n // 2)
    return _pair_weights(estimator, phi, u, f, f_tilde).mean(0).unsqueeze(-1)


ANTITHETIC = ("arm", "disarm")


# --- the floor: R replicate estimates in one fused expression ---------------------------


def _combine(estimator, f, scores, extra, baseline):
    """Replicate estimates [R, D] from costs f [N, R] and per-coordinate scores [N, R] each.

    ``extra`` = (f_extra, squared scores of the extra draws), for the optimal baseline.
    """
    n = f.shape[0]
    if estimator == "reinforce":
        weight = f
    elif estimator == "reinforce_loo":
        weight = (n * f - f.sum(0)) / (n - 1)
    elif estimator in ("reinforce_ema", "reinforce_learned"):
        weight = f - baseline  # the moving average or the learned b(θ), one number
    elif estimator == "reinforce_optimal":
        f_extra, squares = extra
        grads = []
        for s, sq in zip(scores, squares, strict=True):
            b = (f_extra * sq).sum(0) / sq.sum(0)  # [R]
            grads.append((f * s).mean(0) - b * s.mean(0))
        return torch.stack(grads, -1)
    else:
        raise ValueError(f"no floor for {estimator}")
    return torch.stack([(weight * s).mean(0) for s in scores], -1)


def fused_replicates(
    toy: str, estimator: str, theta: Tensor, n: int, r: int, baseline: float = 0.0
) -> Tensor:
    """``r`` independent estimates [r, D] from ``n`` draws each, with analytic scores."""
    if (toy, estimator) in OTHER_FLOOR:
        return OTHER_FLOOR[toy, estimator](theta, n, r, baseline)
    if estimator in ANTITHETIC:
        return fused_antithetic(estimator, theta, n, r)
    shape = (n, r)
    if toy in GAUSSIAN_COSTS:
        mu, sigma = float(theta[0]), float(theta[1])
        cost, dcost = GAUSSIAN_COSTS[toy]
        eps = torch.randn(shape, dtype=theta.dtype, device=theta.device)
        x = torch.add(mu, eps, alpha=sigma)
        if estimator == "reparam":
            slope = dcost(x)
            return torch.stack([slope.mean(0), (slope * eps).mean(0)], -1)
        f = cost(x)
        # Scores of N(mu, sigma²): eps / sigma and (eps² − 1) / sigma.
        scores = (eps / sigma, (eps * eps - 1) / sigma)
        extra = None
        if estimator == "reinforce_optimal":
            eps_e = torch.randn(shape, dtype=theta.dtype, device=theta.device)
            sq = eps_e * eps_e
            extra = (cost(torch.add(mu, eps_e, alpha=sigma)), (sq, (sq - 1) ** 2))
        return _combine(estimator, f, scores, extra, baseline)
    if toy == "bernoulli_threshold":
        p = torch.sigmoid(theta[0])
        b = (torch.rand(shape, dtype=theta.dtype, device=theta.device) < p).to(theta.dtype)
        f = (b - 0.45) ** 2
        extra = None
        if estimator == "reinforce_optimal":
            b_e = (torch.rand(shape, dtype=theta.dtype, device=theta.device) < p).to(theta.dtype)
            extra = ((b_e - 0.45) ** 2, ((b_e - p) ** 2,))
        return _combine(estimator, f, (b - p,), extra, baseline)
    if toy == "categorical_linear":
        return _categorical(estimator, theta, n, r, baseline)
    raise ValueError(f"no floor for {toy}")


def _categorical(estimator, logits, n, r, baseline):
    # Score of z for logit k: 1[z = k] − p_k. Sums of f·1[z = k] are scatter-adds, so the
    # one-hot [N, R, K] is never built.
    rewards = REWARDS.to(logits.device, logits.dtype)
    p = torch.softmax(logits, -1)
    k = p.shape[-1]

    def draw():
        z = torch.multinomial(p.expand(r, k), n, replacement=True)  # [R, N]
        return z, rewards[z]

    def per_category(z, w):  # Σ_i w_i 1[z_i = k] -> [R, K]
        return torch.zeros(r, k, dtype=w.dtype, device=w.device).scatter_add_(1, z, w)

    z, f = draw()
    if estimator == "reinforce_optimal":
        # Σ f s_k² = (1 − 2p_k) Σ_{z=k} f + p_k² Σ f;  Σ s_k² = (1 − 2p_k) #{z=k} + N p_k².
        z_e, f_e = draw()
        numerator = (1 - 2 * p) * per_category(z_e, f_e) + p**2 * f_e.sum(1, keepdim=True)
        denominator = (1 - 2 * p) * per_category(z_e, torch.ones_like(f_e)) + n * p**2
        b = numerator / denominator  # [R, K]
        counts = per_category(z, torch.ones_like(f))
        return (per_category(z, f) - p * f.sum(1, keepdim=True) - b * (counts - n * p)) / n
    if estimator == "reinforce":
        w = f
    elif estimator == "reinforce_loo":
        w = (n * f - f.sum(1, keepdim=True)) / (n - 1)
    elif estimator in ("reinforce_ema", "reinforce_learned"):
        w = f - baseline
    else:
        raise ValueError(f"no floor for {estimator}")
    return (per_category(z, w) - p * w.sum(1, keepdim=True)) / n
