"""Hand-written references on ``bernoulli_shared``, timed against the library.

The counterpart of ``reference.py`` (and ``reference_relaxed`` / ``reference_measure_valued``)
for the toy ``bernoulli_shared``: K bits b_k ~ Bernoulli(σ(φ)) sharing one logit φ
(θ = [φ], D = 1), an ``Independent(Bernoulli)`` over K, with cost
f(b) = Σ_k (b_k − t_k)² (conf/objective/bernoulli_shared.yaml: K = 3). Estimators, with
their default settings (conf/estimator/*.yaml): reinforce, reinforce_loo, reinforce_ema,
reinforce_learned, reinforce_optimal, arm, disarm, gumbel_softmax, straight_through.

Public names:

- ``PLAIN[("bernoulli_shared", estimator)](theta, n) -> [D]``: one estimate the
  straightforward way (a ``torch.distributions`` object, a surrogate,
  ``torch.autograd.grad``), for the STATELESS estimators only: reinforce, reinforce_loo,
  reinforce_optimal, arm, disarm, gumbel_softmax, straight_through.
- ``SharedPlain(estimator)``: a callable ``(theta, n) -> [D]`` that keeps state across
  calls, as ``reference.PlainEstimate`` does. It is THE plain reference for the STATEFUL
  estimators ``reinforce_ema`` (its moving average) and ``reinforce_learned`` (its MLP
  baseline and Adam optimiser), which have NO entry in ``PLAIN``: build one instance per
  run, next to a fresh library estimator, and call both in step. For the stateless
  estimators it simply calls ``PLAIN``.
- ``FLOOR[("bernoulli_shared", estimator)](theta, n, r, baseline=0.0) -> [r, D]``: the same
  ``r`` replicate estimates that ``replicate_gradients`` computes, as one fused expression
  (no autograd, no distribution objects), for all nine estimators. ``baseline`` is the
  constant a moving-average or learned baseline subtracts (``reference.baseline_value``),
  as ``reference.fused_replicates`` takes it; the other estimators ignore it.
- ``STATEFUL``: the estimators whose plain reference is ``SharedPlain`` only.

Random numbers. Every reference draws what the library draws, in the same order and
shapes, sample dimension first: the bits as ``rand([N, *batch, K]) < σ(φ)`` (the library's
``scores.sample``), the optimal baseline's extra bits after the estimate's, one uniform
``[N/2, *batch, K]`` per antithetic pair, and the Concrete uniforms ``[N, *batch, K]``,
clamped to [eps, 1 − eps] as ``torch.distributions`` clamps them. So under one seed, plain
agrees with ``estimate_gradient`` and the floor with ``replicate_gradients`` to rounding.

The floors. The score of b is Σ_k (b_k − p) = S − Kp (S = Σ_k b_k, p = σ(φ)). A draw is
one of the 2^K states, so the REINFORCE floors, ARM and DisARM tabulate f and S − Kp per
state, turn the K bits of each draw into its state's code, and count the codes of each
replicate (a scatter-add, [2^K, R]); the estimates are then small products of tables and
counts, the same sums the library forms sample by sample. DisARM's weight
Σ_k (−1)^{b̃_k} 1[b_k ≠ b̃_k] is S − S̃ (each differing bit contributes b_k − b̃_k = ±1),
so it needs the pair's two codes alone; ARM needs Σ_k u_k as well. The relaxations:
y = σ((φ + logit u)/τ), dy_k/dφ = y_k(1 − y_k)/τ, and the estimate is
mean_i Σ_k 2(h_k − t_k) y_k(1 − y_k)/τ with h = y (Gumbel-softmax) or h = 1[y > ½]
(straight-through).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, RelaxedBernoulli

from benchmarks.config import load_file

# --- the toy's and the estimators' default constants --------------------------------------

TOY = "bernoulli_shared"
_CONF = Path(__file__).resolve().parents[2] / "conf"
TARGETS = tuple(
    float(t) for t in load_file(_CONF / "objective" / f"{TOY}.yaml").targets
)  # t_k; K = len(TARGETS)
K = len(TARGETS)
TEMPERATURE = {
    e: float(load_file(_CONF / "estimator" / f"{e}.yaml").temperature)
    for e in ("gumbel_softmax", "straight_through")
}
_EMA = load_file(_CONF / "estimator" / "reinforce_ema.yaml").baseline
_LEARNED = load_file(_CONF / "estimator" / "reinforce_learned.yaml").baseline
DECAY = float(_EMA.decay)
HIDDEN, LR, STEPS = int(_LEARNED.hidden), float(_LEARNED.lr), int(_LEARNED.steps)

ESTIMATORS = (
    "reinforce", "reinforce_loo", "reinforce_ema", "reinforce_learned", "reinforce_optimal",
    "arm", "disarm", "gumbel_softmax", "straight_through",
)  # fmt: skip
STATEFUL = ("reinforce_ema", "reinforce_learned")


def _targets(like: Tensor) -> Tensor:
    return torch.tensor(TARGETS, dtype=like.dtype, device=like.device)


# --- one estimate, written plainly -------------------------------------------------------


def _dist(theta: Tensor) -> Independent:
    """K bits sharing the logit θ₀, as the toy builds them."""
    return Independent(Bernoulli(logits=theta[..., :1].expand(*theta.shape[:-1], K)), 1)


def _draw_bits(theta: Tensor, n: int) -> Tensor:
    """n draws [n, K] of the bits, as the library draws them: uniforms below p."""
    p = torch.sigmoid(theta.detach()[0])
    return (torch.rand((n, K), dtype=theta.dtype, device=theta.device) < p).to(theta.dtype)


def _cost(b: Tensor) -> Tensor:
    return ((b - _targets(b)) ** 2).sum(-1)


def _score_function(weight_of: Callable[[Tensor], Tensor]):
    """REINFORCE with the weight ``weight_of(f)``: mean weight · log p(b), differentiated."""

    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        dist = _dist(theta)
        b = _draw_bits(theta, n)
        weight = weight_of(_cost(b))
        (grad,) = torch.autograd.grad((weight * dist.log_prob(b)).mean(), theta)
        return grad

    return plain


def _plain_optimal(theta: Tensor, n: int) -> Tensor:
    """b = E[f s²] / E[s²] from n fresh draws (after the estimate's), scores by autograd
    over per-sample copies of θ, then mean (f − b) s."""
    theta = theta.detach()
    b = _draw_bits(theta, n)
    b_extra = _draw_bits(theta, n)
    copies = theta.expand(2 * n, *theta.shape).clone().requires_grad_(True)
    (scores,) = torch.autograd.grad(_dist(copies).log_prob(torch.cat([b, b_extra])).sum(), copies)
    score, sq = scores[:n], scores[n:].square()  # [N, D] each
    baseline = (_cost(b_extra)[:, None] * sq).sum(0) / sq.sum(0).clamp_min(
        torch.finfo(theta.dtype).tiny
    )
    return ((_cost(b)[:, None] - baseline) * score).mean(0)


def _plain_antithetic(estimator: str) -> Callable[[Tensor, int], Tensor]:
    """ARM or DisARM from n / 2 pairs, one uniform vector u [K] each, surrogate Σ_k g_k φ_k."""

    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        logits = _dist(theta).base_dist.logits  # [K]
        phi = logits.detach()
        u = torch.rand((n // 2, K), dtype=theta.dtype, device=theta.device)
        b = (u < torch.sigmoid(phi)).to(theta.dtype)
        b_tilde = (u > torch.sigmoid(-phi)).to(theta.dtype)
        f, f_tilde = _cost(b)[:, None], _cost(b_tilde)[:, None]
        if estimator == "arm":
            g = (f_tilde - f) * (u - 0.5)
        else:
            sign = 1.0 - 2.0 * b_tilde  # (−1)^{b̃}
            differ = (b != b_tilde).to(theta.dtype)
            g = 0.5 * (f - f_tilde) * sign * differ * torch.sigmoid(phi.abs())
        (grad,) = torch.autograd.grad((g * logits).sum(-1).mean(), theta)
        return grad

    return plain


def _plain_relaxed(estimator: str) -> Callable[[Tensor, int], Tensor]:
    """A binary Concrete y [N, K] (hardened for straight-through), f of it, differentiated."""

    def plain(theta: Tensor, n: int) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        tau = torch.tensor(TEMPERATURE[estimator], dtype=theta.dtype, device=theta.device)
        y = RelaxedBernoulli(tau, logits=theta[:1].expand(K)).rsample((n,))  # [N, K]
        if estimator == "straight_through":
            y = (y > 0.5).to(y.dtype) + (y - y.detach())
        (grad,) = torch.autograd.grad(_cost(y).mean(), theta)
        return grad

    return plain


class SharedPlain:
    """The plain reference of ``estimator`` on ``bernoulli_shared``, with its state.

    For ``reinforce_ema`` it keeps the moving average of earlier calls' mean cost (b = 0 on
    the first call, which then initialises it); for ``reinforce_learned`` an MLP b(θ)
    (HIDDEN tanh units, last layer zero with bias the first call's mean cost) and its Adam
    optimiser, stepped once per call on (mean f − b(θ))² after b is read. The first call
    builds the net after drawing the bits, as the library does, so its initialisation
    takes the same random numbers. Stateless estimators go to ``PLAIN``.
    """

    def __init__(self, estimator: str):
        if estimator not in ESTIMATORS:
            raise ValueError(f"no plain reference of {estimator} on {TOY}")
        self.estimator = estimator
        self.average: Tensor | None = None
        self.net: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def __call__(self, theta: Tensor, n: int) -> Tensor:
        if self.estimator not in STATEFUL:
            return PLAIN[TOY, self.estimator](theta, n)
        theta = theta.detach().requires_grad_(True)
        dist = _dist(theta)
        b = _draw_bits(theta, n)
        f = _cost(b)
        if self.estimator == "reinforce_ema":
            baseline = 0.0 if self.average is None else self.average
            mean = f.mean()
            self.average = (
                mean if self.average is None else DECAY * self.average + (1 - DECAY) * mean
            )
        else:
            baseline = self._learned(theta.detach(), f)
        (grad,) = torch.autograd.grad(((f - baseline) * dist.log_prob(b)).mean(), theta)
        return grad

    def _learned(self, theta: Tensor, f: Tensor) -> Tensor:
        if self.net is None:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(theta.shape[-1], HIDDEN),
                torch.nn.Tanh(),
                torch.nn.Linear(HIDDEN, 1),
            ).to(device=theta.device, dtype=theta.dtype)
            with torch.no_grad():
                self.net[2].weight.zero_()
                self.net[2].bias.fill_(float(f.mean()))
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LR)
        with torch.no_grad():
            b = self.net(theta).squeeze(-1)
        for _ in range(STEPS):
            self.optimizer.zero_grad()
            (f.mean(0) - self.net(theta).squeeze(-1)).square().mean().backward()
            self.optimizer.step()
        return b


# --- the floor: R replicate estimates in one fused expression ---------------------------


def _states(like: Tensor) -> Tensor:
    """The 2^K states [2^K, K]: bit k of state c is (c >> k) & 1."""
    codes = torch.arange(2**K, device=like.device)
    return ((codes.unsqueeze(-1) >> torch.arange(K, device=like.device)) & 1).to(like.dtype)


def _tables(theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per state: f [2^K] and the score S − Kp [2^K]; and p = σ(φ)."""
    states = _states(theta)
    p = torch.sigmoid(theta[0])
    return ((states - _targets(theta)) ** 2).sum(-1), states.sum(-1) - K * p, p


def _codes(bits: Tensor) -> Tensor:
    """Boolean bits [..., K] -> each draw's state code Σ_k 2^k b_k [...] (int64)."""
    b = bits.view(torch.uint8)
    code = b[..., 0].long()
    for k in range(1, K):
        code.add_(b[..., k], alpha=2**k)
    return code


def _counts(code: Tensor, states: int, dtype: torch.dtype) -> Tensor:
    """How many draws of each replicate fall in each state: code [N, R] -> [states, R]."""
    ones = torch.ones((), dtype=dtype, device=code.device)
    out = torch.zeros(states, code.shape[1], dtype=dtype, device=code.device)
    return out.scatter_add_(0, code, ones.expand(code.shape))


def _state_counts(theta: Tensor, p: Tensor, n: int, r: int) -> Tensor:
    """One [N, R, K] draw of the bits, as the library draws them, counted per state."""
    u = torch.rand((n, r, K), dtype=theta.dtype, device=theta.device)
    return _counts(_codes(u < p), 2**K, theta.dtype)


def _floor_reinforce(estimator: str) -> Callable[..., Tensor]:
    """``r`` REINFORCE estimates [r, 1] from state counts c [2^K, R]:
    Σ_c count · weight · score / n, the weight being f − b."""

    def floor(theta: Tensor, n: int, r: int, baseline: float = 0.0) -> Tensor:
        f, s, p = _tables(theta)
        counts = _state_counts(theta, p, n, r)  # [2^K, R]
        if estimator == "reinforce":
            grad = (f * s) @ counts / n
        elif estimator in STATEFUL:  # the moving average or the learned b(θ): one number
            grad = ((f - baseline) * s) @ counts / n
        elif estimator == "reinforce_loo":
            # mean_i (n f_i − Σ_j f_j)/(n − 1) · s_i = (n Σ f s − Σ f Σ s) / (n (n − 1))
            sums = torch.stack([f * s, f, s]) @ counts  # [3, R]
            grad = (n * sums[0] - sums[1] * sums[2]) / (n * (n - 1))
        elif estimator == "reinforce_optimal":
            extra = _state_counts(theta, p, n, r)  # the baseline's draws, after the estimate's
            sq = s * s
            weighted, total = torch.stack([f * sq, sq]) @ extra  # [R] each
            b = weighted / total.clamp_min(torch.finfo(theta.dtype).tiny)
            sums = torch.stack([f * s, s]) @ counts
            grad = (sums[0] - b * sums[1]) / n
        else:
            raise ValueError(f"no floor for {estimator}")
        return grad.unsqueeze(-1)

    return floor


def _floor_antithetic(estimator: str) -> Callable[..., Tensor]:
    """``r`` ARM or DisARM estimates [r, 1] from n / 2 pairs each, u [pairs, R, K]."""

    def floor(theta: Tensor, n: int, r: int, baseline: float = 0.0) -> Tensor:
        f, s, _ = _tables(theta)
        phi = theta[0]
        pairs = n // 2
        u = torch.rand((pairs, r, K), dtype=theta.dtype, device=theta.device)
        code, code_tilde = _codes(u < torch.sigmoid(phi)), _codes(u > torch.sigmoid(-phi))
        if estimator == "arm":
            # (f(b̃) − f(b)) Σ_k (u_k − ½), averaged over the pairs
            u_sum = u[..., 0].clone()
            for k in range(1, K):
                u_sum += u[..., k]
            return ((f[code_tilde] - f[code]) * (u_sum - 0.5 * K)).mean(0).unsqueeze(-1)
        # ½ (f(b) − f(b̃)) (S − S̃) σ(|φ|): a table over the 4^K pairs of states.
        table = (f[:, None] - f) * (s[:, None] - s) * (0.5 * torch.sigmoid(phi.abs()))
        counts = _counts(code.mul_(2**K).add_(code_tilde), 4**K, theta.dtype)  # [4^K, R]
        return (table.reshape(-1) @ counts / pairs).unsqueeze(-1)

    return floor


def _floor_relaxed(estimator: str) -> Callable[..., Tensor]:
    """``r`` estimates [r, 1]: mean_i Σ_k 2(h_k − t_k) y_k(1 − y_k)/τ, with y the binary
    Concrete draw and h = y (Gumbel-softmax) or h = 1[y > ½] (straight-through)."""
    tau = TEMPERATURE[estimator]

    def floor(theta: Tensor, n: int, r: int, baseline: float = 0.0) -> Tensor:
        finfo = torch.finfo(theta.dtype)
        u = torch.rand((n, r, K), dtype=theta.dtype, device=theta.device)
        logistic = torch.logit(u.clamp_(finfo.eps, 1 - finfo.eps))  # [N, R, K]
        # σ clipped to [tiny, 1 − eps], as SigmoidTransform clips it.
        y = torch.sigmoid(logistic.add_(theta[0]).div_(tau)).clamp_(finfo.tiny, 1 - finfo.eps)
        hard = (y > 0.5).to(y.dtype) if estimator == "straight_through" else y
        slope = (hard - _targets(theta)).mul_(y).mul_(1 - y)  # f̃'(h)·dy/dφ, up to 2/τ
        return slope.sum((0, 2)).mul_(2 / (tau * n)).unsqueeze(-1)

    return floor


# --- the tables ---------------------------------------------------------------------------

_REINFORCE = ("reinforce", "reinforce_loo", "reinforce_optimal")

PLAIN: dict[tuple[str, str], Callable[[Tensor, int], Tensor]] = {
    (TOY, "reinforce"): _score_function(lambda f: f),
    (TOY, "reinforce_loo"): _score_function(lambda f: f - (f.sum() - f) / (f.shape[0] - 1)),
    (TOY, "reinforce_optimal"): _plain_optimal,
    **{(TOY, e): _plain_antithetic(e) for e in ("arm", "disarm")},
    **{(TOY, e): _plain_relaxed(e) for e in TEMPERATURE},
}
FLOOR: dict[tuple[str, str], Callable[..., Tensor]] = {
    **{(TOY, e): _floor_reinforce(e) for e in (*_REINFORCE, *STATEFUL)},
    **{(TOY, e): _floor_antithetic(e) for e in ("arm", "disarm")},
    **{(TOY, e): _floor_relaxed(e) for e in TEMPERATURE},
}
