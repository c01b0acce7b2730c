"""``bernoulli_latent``: an importance-weighted bound over a few Bernoulli latents, exact.

z ∈ {0, 1}^B with z_i ~ Bernoulli(½) independently, x | z ~ N(weights · z, 1) with x fixed;
q = ∏_i Bernoulli(sigmoid(θ_i)), θ = the logits. q is not reparameterisable, so of the
multi-sample estimators only VIMCO applies (and, at K = 1, any estimator of the ELBO that
needs only f; see ``benchmarks.objectives.linear_gaussian`` for that f). The loss −L_K is
exact for every K: the Frullani integral of ``linear_gaussian`` with φ a sum over the 2^B
states. ``tests/test_multisample.py`` checks it against a sum over all K-tuples of states.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent

from benchmarks.objectives.linear_gaussian import ImportanceWeightedToy, log_mean_bound
from benchmarks.objectives.toy import number, numbers

MAX_BITS = 12


class BernoulliLatent(ImportanceWeightedToy):
    """B Bernoulli latents, x | z ~ N(weights · z, 1), q = ∏ Bernoulli(sigmoid(logits))."""

    name = "bernoulli_latent"
    cost_is_differentiable = False

    def __init__(
        self, x=1.0, weights=(1.0, -0.5, 2.0), logits=(0.0, 0.0, 0.0), device="cpu",
        dtype=torch.float32,
    ):  # fmt: skip
        weights, logits = numbers("weights", weights), numbers("logits", logits)
        if not 1 <= len(logits) <= MAX_BITS:
            raise ValueError(f"objective.logits needs 1 to {MAX_BITS} entries, got {len(logits)}")
        if len(weights) != len(logits):
            raise ValueError(f"objective.weights needs one entry per logit, got {len(weights)}")
        super().__init__(logits, device, dtype)
        self.x = number("x", x)
        self.weights = torch.tensor(weights, device=device, dtype=dtype)
        self.param_names = [f"logits[{i}]" for i in range(len(logits))]

    def to(self, device):
        self.weights = self.weights.to(device)
        return super().to(device)

    def distribution(self, theta):
        return Independent(Bernoulli(logits=theta), 1)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x, z) = B log ½ + log N(x; weights · z, 1), [*sample, *batch]."""
        mean = z @ self.weights.to(z.dtype)
        bits = z.shape[-1]
        return -0.5 * (self.x - mean).square() - 0.5 * math.log(2 * math.pi) - bits * math.log(2)

    def states(self, dtype: torch.dtype) -> Tensor:
        """All 2^B states, [2^B, B]."""
        bits = len(self.param_names)
        codes = torch.arange(2**bits, device=self.weights.device)
        return ((codes.unsqueeze(-1) >> torch.arange(bits, device=codes.device)) & 1).to(dtype)

    def log_marginal(self) -> float:
        """log p(x) = log Σ_z p(x, z), the limit of L_K as K grows."""
        return float(torch.logsumexp(self.log_joint(self.states(torch.float64)), 0))

    def exact_value(self, theta: Tensor, k: int = 1) -> Tensor:
        """The loss −L_K(θ), [*batch] for ``theta`` [*batch, B], exact (float64 inside)."""
        dtype = theta.dtype
        theta = theta.to(torch.float64)
        states = self.states(theta.dtype)
        log_q = self.distribution(theta.unsqueeze(-2)).log_prob(states)  # [*batch, 2^B]
        log_joint = self.log_joint(states).expand_as(log_q)
        return -enumerated_bound(log_joint, log_q, k).to(dtype)


def enumerated_bound(log_joint: Tensor, log_q: Tensor, k: int) -> Tensor:
    """L_K of a discrete q, exact, from log p(x, z) and log q(z) at every state z:
    [*batch, S] -> [*batch]; differentiable in both.

    K = 1: Σ_z q(z) (log p(x, z) − log q(z)). K > 1: log p(x) plus the Frullani integral
    ``log_mean_bound`` of s = w / p(x), whose law is (s(z), q(z)) over the S states.
    """
    if k == 1:
        return (log_q.exp() * (log_joint - log_q)).sum(-1)
    log_p = torch.logsumexp(log_joint, -1, keepdim=True)  # log p(x)
    log_w = log_joint - log_q - log_p  # log w/p(x)
    # φ(u) ≤ exp(−u · min w/p(x)): past τ = log 35 − min log(w/p(x)) it is below e^{−35}.
    tau_max = max(40.0, 4.0 - float(log_w.detach().min()))
    return log_p.squeeze(-1) + log_mean_bound(log_w, log_q.exp(), k, tau_max)
