"""Hand-written references for the multi-sample estimators, timed against the library.

The counterpart of ``reference.py`` for ``iwae``, ``stl``, ``dreg`` and ``vimco`` on the
importance-weighted toys with their default settings (conf/objective/*.yaml; K = 10, as
conf/estimator/*.yaml): ``linear_gaussian`` (z ~ N(0, 1), x | z ~ N(z, 1), x = 1.4,
q = N(mu, sigma²); all four) and ``bernoulli_latent`` (three bits, weights (1, −½, 2),
x = 1; ``vimco``, the one that takes discrete latents).

- ``PLAIN[toy, estimator](theta, n) -> [D]``: one estimate the straightforward way (a
  ``torch.distributions`` draw of [N, K], the log weights, a surrogate of −L_K,
  ``torch.autograd.grad``). The library's ``estimate_gradient`` should cost no more.
- ``FLOOR[toy, estimator](theta, n, r) -> [r, D]``: the same ``r`` replicate estimates
  ``replicate_gradients`` computes, as one fused expression with every derivative written
  out (no autograd, no distribution objects).

Both draw the library's numbers in its order and shapes (noise [N, K, R], sample
dimensions first), so under one seed they agree with it to rounding.

The derivatives (gradients of the loss −L_K), with w̃ the normalised weights. Gaussian:
z = mu + sigma·ε, g(z) = d log p(x, z)/dz = x − 2z, and the log weight with q's parameters
held fixed has slope g + ε/sigma in z:

    iwae  −Σ_k w̃_k (g_k, g_k ε_k + 1/sigma)
    stl   −Σ_k w̃_k (g_k + ε_k/sigma) (1, ε_k)
    dreg  −Σ_k w̃_k² (g_k + ε_k/sigma) (1, ε_k)
    vimco −Σ_k (L̂ − L̂_{−k} − w̃_k) s_k,   s = (ε/sigma, (ε² − 1)/sigma), the score of q;

for ``bernoulli_latent`` VIMCO's score is s_k = b_k − sigmoid(logits) per bit. L̂_{−k} is
VIMCO's leave-one-out bound; the floor takes log Σ_{j≠k} w_j as L̂ + log K + log(1 − w̃_k).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal

K = 10  # conf/estimator/{iwae,stl,dreg,vimco}.yaml
X_GAUSSIAN = 1.4  # conf/objective/linear_gaussian.yaml
X_BITS, WEIGHTS = 1.0, (1.0, -0.5, 2.0)  # conf/objective/bernoulli_latent.yaml
LOG_2PI = math.log(2 * math.pi)


def _log_joint_gaussian(z: Tensor) -> Tensor:
    """log N(z; 0, 1) + log N(x; z, 1)."""
    return -0.5 * (z.square() + (X_GAUSSIAN - z).square()) - LOG_2PI


def _log_joint_bits(b: Tensor) -> Tensor:
    """3 log ½ + log N(x; weights · b, 1), b [..., 3] -> [...]."""
    mean = b @ torch.tensor(WEIGHTS, dtype=b.dtype, device=b.device)
    return -0.5 * (X_BITS - mean).square() - 0.5 * LOG_2PI - 3 * math.log(2)


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, 1) - math.log(log_w.shape[1])


def _leave_one_out(log_w: Tensor) -> Tensor:
    """L̂_{−k} [N, K, *batch]: w_k replaced by the geometric mean of the others."""
    k = log_w.shape[1]
    others = log_w.unsqueeze(1).expand(-1, k, -1, *log_w.shape[2:]).clone()  # [N, K, K, ...]
    geometric = (log_w.sum(1, keepdim=True) - log_w) / (k - 1)
    index = torch.arange(k, device=log_w.device)
    others[:, index, index] = geometric
    return torch.logsumexp(others, 2) - math.log(k)


# --- one estimate, written plainly -------------------------------------------------------


def _plain_gaussian(estimator: str) -> Callable[[Tensor, int], Tensor]:
    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        q = Normal(theta[0], theta[1])
        if estimator == "vimco":
            z = q.sample((n, K))
            log_q = q.log_prob(z)
            log_w = _log_joint_gaussian(z) - log_q
            bound = _log_mean_exp(log_w)
            signal = bound.detach().unsqueeze(1) - _leave_one_out(log_w.detach())
            loss = -(bound + (signal * log_q).sum(1)).mean()
        else:
            z = q.rsample((n, K))
            fixed = Normal(theta[0].detach(), theta[1].detach())
            log_q = q.log_prob(z) if estimator == "iwae" else fixed.log_prob(z)
            log_w = _log_joint_gaussian(z) - log_q
            if estimator == "dreg":
                w = torch.softmax(log_w.detach(), 1)
                loss = -(w.square() * log_w).sum(1).mean()
            else:
                loss = -_log_mean_exp(log_w).mean()
        (grad,) = torch.autograd.grad(loss, theta)
        return grad

    return plain


def _plain_bits_vimco(theta: Tensor, n: int) -> Tensor:
    theta = theta.detach().requires_grad_(True)
    q = Independent(Bernoulli(logits=theta), 1)
    b = q.sample((n, K))  # [N, K, 3]
    log_q = q.log_prob(b)
    log_w = _log_joint_bits(b) - log_q
    bound = _log_mean_exp(log_w)
    signal = bound.detach().unsqueeze(1) - _leave_one_out(log_w.detach())
    (grad,) = torch.autograd.grad(-(bound + (signal * log_q).sum(1)).mean(), theta)
    return grad


# --- the floor: R replicate estimates in one fused expression ---------------------------


def _vimco_weight(log_w: Tensor) -> Tensor:
    """L̂ − L̂_{−k} − w̃_k [N, K, R], the factor of VIMCO's score s_k."""
    k = log_w.shape[1]
    total = torch.logsumexp(log_w, 1, keepdim=True)  # log Σ_j w_j
    w = torch.exp(log_w - total)
    others = total + torch.log1p(-w)  # log Σ_{j≠k} w_j
    geometric = (log_w.sum(1, keepdim=True) - log_w) / (k - 1)
    return total - torch.logaddexp(others, geometric) - w


def _floor_gaussian(estimator: str) -> Callable[[Tensor, int, int], Tensor]:
    def floor(theta: Tensor, n: int, r: int) -> Tensor:
        mu, sigma = float(theta[0]), float(theta[1])
        shape = (n, K, r)
        if estimator == "vimco":  # Normal.sample's draw
            z = torch.normal(theta[0].expand(shape), theta[1].expand(shape))
            eps = (z - mu) / sigma
        else:
            eps = torch.randn(shape, dtype=theta.dtype, device=theta.device)
            z = torch.add(mu, eps, alpha=sigma)
        # log w = log p(x, z) − log N(z; mu, sigma²)
        log_w = _log_joint_gaussian(z) + 0.5 * eps.square() + (math.log(sigma) + 0.5 * LOG_2PI)
        if estimator == "vimco":
            weight = _vimco_weight(log_w)
            grad_mu = (weight * eps).sum(1) / sigma
            grad_sigma = (weight * (eps.square() - 1)).sum(1) / sigma
            return -torch.stack([grad_mu.mean(0), grad_sigma.mean(0)], -1)
        w = torch.softmax(log_w, 1)
        slope = X_GAUSSIAN - 2 * z  # g(z)
        if estimator == "iwae":
            grad_mu = (w * slope).sum(1)
            grad_sigma = (w * slope * eps).sum(1) + 1 / sigma
        else:
            weight = w.square() if estimator == "dreg" else w
            path = weight * (slope + eps / sigma)
            grad_mu, grad_sigma = path.sum(1), (path * eps).sum(1)
        return -torch.stack([grad_mu.mean(0), grad_sigma.mean(0)], -1)

    return floor


def _floor_bits_vimco(theta: Tensor, n: int, r: int) -> Tensor:
    p = torch.sigmoid(theta)  # [3]
    b = torch.bernoulli(p.expand(n, K, r, len(p)))  # Bernoulli.sample's draw
    log_q = (b * torch.log(p) + (1 - b) * torch.log1p(-p)).sum(-1)
    weight = _vimco_weight(_log_joint_bits(b) - log_q)  # [N, K, R]
    return -(weight.unsqueeze(-1) * (b - p)).sum(1).mean(0)


# --- the tables ---------------------------------------------------------------------------

GAUSSIAN_ESTIMATORS = ("iwae", "stl", "dreg", "vimco")
PLAIN: dict[tuple[str, str], Callable[[Tensor, int], Tensor]] = {
    **{("linear_gaussian", e): _plain_gaussian(e) for e in GAUSSIAN_ESTIMATORS},
    ("bernoulli_latent", "vimco"): _plain_bits_vimco,
}
FLOOR: dict[tuple[str, str], Callable[[Tensor, int, int], Tensor]] = {
    **{("linear_gaussian", e): _floor_gaussian(e) for e in GAUSSIAN_ESTIMATORS},
    ("bernoulli_latent", "vimco"): _floor_bits_vimco,
}
