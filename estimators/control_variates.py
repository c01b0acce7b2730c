"""Learned control variates for Bernoulli variables: REBAR and RELAX.

Both write a Bernoulli bit as b = H(z), z = φ + logit(u), u ~ U(0, 1), with φ the logits
of the distribution the objective returns for θ (a ``Bernoulli``, or an ``Independent``
wrapping one, for vectors of bits), and use a control variate c evaluated at the
relaxed z and at a second relaxed draw z̃ ~ p(z | b), conditioned on the bit:

    z̃ = φ + logit(v′),  v′ = v (1 − p)          if b = 0,
                          v′ = v p + (1 − p)    if b = 1,    p = σ(φ), v ~ U(0, 1),

so that E[c(z̃) ∇ log p(b)] = E[∇c(z)] − E[∇c(z̃)] and, per sample,

    ĝ = [f(b) − c(z̃)] ∇φ log p(b) + ∇φ c(z) − ∇φ c(z̃)

is unbiased for ∇φ E[f(b)] for *any* c that does not depend on the current noise. z̃
depends on φ twice, directly and through p in v′, and ∇φ c(z̃) is the total derivative
(dropping the second path biases the estimate; duvenaud/relax issue 6). ∇φ log p(b) =
b − p per bit.

The estimate reaches θ, and an encoder behind it, only as ĝ: the surrogate of sample i is
f(b_i) + Σ_event ĝ_i.detach() · φ. The control variate is computed on a detached copy of φ,
so neither its value nor the variance loss that trains it sends gradient into θ
(pydrobert-pytorch PR 9). f(b_i) stays in the surrogate so parameters inside f (a decoder)
get their pathwise gradient from the exact samples.

The control variate's parameters (temperature λ, scale η, RELAX's network) are estimator
state carried across calls, like the moving-average baseline. When ``adapt`` is true,
every ``surrogate`` call (so every training step, every warm-up estimate, and every
batched measurement of replicates) first computes its estimates with the state it finds,
then takes one Adam step on the parameters of c down the gradient of ‖ĝ‖² (ĝ the call's
estimate, averaged over its samples; summed over logits and batch). Since ĝ is unbiased
for every c, ∇ E‖ĝ‖² = ∇ Var ĝ: the step lowers the variance (Tucker et al. 2017, sec. 3.3;
Grathwohl et al. 2018, sec. 3). The estimates a call returns never depend on that call's
own step, so they are unbiased and a measurement sees the state as it was before. With
``adapt=False`` the state is frozen, for measuring the variance in a given state.

For a model, θ is the encoder output per data point, and the variance minimised is that of
the estimates of ∇φ L (the logits), not of the encoder weights' gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from estimators.base import Estimator, NotApplicable, StochasticObjective
from estimators.distributions import bernoulli_logits, sum_event


def _number(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"estimator.{name} must be a number, got {value!r}") from None


def _positive(name: str, value) -> float:
    value = _number(name, value)
    if not value > 0:
        raise ValueError(f"estimator.{name} must be > 0, got {value}")
    return value


def _like_event(t: Tensor, event_dims: int) -> Tensor:
    """t [N, *batch] with ``event_dims`` singleton dimensions appended."""
    return t.reshape(*t.shape, *[1] * event_dims)


def logit(u: Tensor) -> Tensor:
    """log u − log(1 − u)."""
    return torch.log(u) - torch.log1p(-u)


def hard_threshold(phi: Tensor, u: Tensor) -> Tensor:
    """b = H(φ + logit u) = 1[u > 1 − σ(φ)], a Bernoulli(σ(φ)) draw, as φ's dtype."""
    return (phi.detach() + logit(u) > 0).to(phi.dtype)


def conditional_relaxation(phi: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """z̃ ~ p(z | b), reparameterised by v ~ U(0, 1): φ + logit(v′) with v′ = v (1 − p) for
    b = 0 and v p + (1 − p) for b = 1, p = σ(φ), differentiable in φ through p too.

    Written with log-sigmoids and log1p, which equal the formula and stay finite where
    v′ rounds to 0 or 1: for b = 0, φ + log(1 − p) = log p, and for b = 1,
    1 − v′ = p (1 − v).
    """
    log_p, log_q = logsigmoid(phi), logsigmoid(-phi)
    p, q = torch.sigmoid(phi), torch.sigmoid(-phi)
    zero = log_p + torch.log(v) - torch.log1p(-v * q)  # φ + logit(v q)
    one = torch.log1p(-p * (1 - v)) - log_q - torch.log1p(-v)  # φ + logit(v p + q)
    return torch.where(b > 0, one, zero)


class RelaxedControlVariate(nn.Module):
    """c(z) = η f̃(σ(z/λ)) + r_ρ(σ(z/λ)): the REBAR term (f̃ the objective's
    ``relaxed_cost``) and, for RELAX, a one-hidden-layer tanh network r_ρ of the relaxed
    bits (all bits of a sample together). λ = exp(log_temperature) > 0.
    """

    def __init__(
        self, temperature: float, eta: float | None, hidden: int, n_bits: int, like: Tensor
    ):
        super().__init__()
        factory = {"dtype": like.dtype, "device": like.device}
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature), **factory))
        self.eta = None if eta is None else nn.Parameter(torch.tensor(eta, **factory))
        self.net = None
        if hidden:
            self.net = nn.Sequential(nn.Linear(n_bits, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(
                **factory
            )

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, objective: StochasticObjective, z: Tensor, event_dims: int) -> Tensor:
        """c at z [N, *batch, *event] -> [N, *batch]."""
        y = torch.sigmoid(z / self.temperature)
        c = torch.zeros(z.shape[: z.dim() - event_dims], dtype=z.dtype, device=z.device)
        if self.eta is not None:
            c = c + self.eta * objective.relaxed_cost(y)
        if self.net is not None:
            bits = y.flatten(y.dim() - event_dims) if event_dims else y.unsqueeze(-1)
            # Inputs in (−1, 1), centred on the relaxation's midpoint.
            c = c + self.net(2 * bits - 1).squeeze(-1)
        return c


class _ConditionalRelaxation(Estimator):
    """Shared machinery: checks, the draws, the estimate ĝ and the adaptation step."""

    name = ""
    # How z̃ ~ p(z | b) is drawn; a class attribute so that a variant can replace it.
    conditional = staticmethod(conditional_relaxation)

    def __init__(self, temperature, eta, hidden, lr, adapt):
        self.temperature = _positive("temperature", temperature)
        self.eta = None if eta is None else _number("eta", eta)
        self.hidden = hidden
        self.lr = _positive("lr", lr)
        if not isinstance(adapt, bool):
            raise ValueError(f"estimator.adapt must be true or false, got {adapt!r}")
        self.adapt = adapt
        self.reset()

    def reset(self) -> None:
        self.control_variate: RelaxedControlVariate | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def check(self, objective, theta, n_samples):
        super().check(objective, theta, n_samples)
        bernoulli_logits(objective.distribution(theta.detach()))
        if self.eta is not None and not callable(getattr(objective, "relaxed_cost", None)):
            raise NotApplicable(
                f"{self.name} needs an objective with relaxed_cost(y), f on relaxed bits"
            )

    def build(self, logits: Tensor, event_dims: int) -> RelaxedControlVariate:
        """The control variate, made at the first call (the number of bits is known then)."""
        if self.control_variate is None:
            n_bits = math.prod(logits.shape[logits.dim() - event_dims :])
            self.control_variate = RelaxedControlVariate(
                self.temperature, self.eta, self.hidden, n_bits, logits
            )
            self.optimizer = torch.optim.Adam(self.control_variate.parameters(), lr=self.lr)
        return self.control_variate

    def draw_noise(self, logits: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        """u, v ~ U(0, 1) [N, *batch, *event], u drawn first, kept inside (ε, 1 − ε)."""
        eps = torch.finfo(logits.dtype).eps
        shape = (n_samples, *logits.shape)
        u = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp_(eps, 1 - eps)
        v = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp_(eps, 1 - eps)
        return u, v

    def per_sample_gradient(
        self,
        objective: StochasticObjective,
        phi: Tensor,
        event_dims: int,
        u: Tensor,
        v: Tensor,
        f: Tensor,
        create_graph: bool = False,
    ) -> Tensor:
        """ĝ_i, the estimate of ∇φ L from sample i, [N, *batch, *event].

        Args:
            phi: the logits the control variate is differentiated by, [N, *batch, *event],
                requiring grad (the surrogate passes a detached copy, so nothing reaches θ).
            u, v: the noise of z and z̃, shaped like ``phi``.
            f: f(b) [N, *batch] at b = H(φ + logit u), detached.
            create_graph: keep ĝ differentiable in the control variate's parameters.
        """
        cv = self.build(phi[0], event_dims)
        n = u.shape[0]
        with torch.enable_grad():
            z = phi + logit(u)
            b = hard_threshold(phi, u)
            z_tilde = self.conditional(phi, b, v)
            c = cv(objective, torch.cat([z, z_tilde]), event_dims)  # [2N, *batch]
            c_z, c_tilde = c[:n], c[n:]
            (dc,) = torch.autograd.grad(
                (c_z - c_tilde).sum(), phi, create_graph=create_graph
            )  # ∇c(z) − ∇c(z̃)
            score = b - torch.sigmoid(phi.detach())  # ∇φ log p(b)
            g = _like_event(f - c_tilde, event_dims) * score + dc
        return g if create_graph else g.detach()

    def gradient_from_noise(
        self, objective: StochasticObjective, theta: Tensor, u: Tensor, v: Tensor
    ) -> Tensor:
        """ĝ_i for given noise u, v [N, *batch, *event] at θ: the estimates of ∇φ L per
        sample, without touching the state (for exact tests and for sharing noise)."""
        logits, event_dims = bernoulli_logits(objective.distribution(theta.detach()))
        phi = logits.expand(u.shape).clone().requires_grad_(True)
        f = objective.cost(hard_threshold(phi, u)).detach()
        return self.per_sample_gradient(objective, phi, event_dims, u, v, f)

    def surrogate(self, objective: StochasticObjective, theta: Tensor, n_samples: int) -> Tensor:
        logits, event_dims = bernoulli_logits(objective.distribution(theta))
        self.build(logits.detach(), event_dims)
        u, v = self.draw_noise(logits, n_samples)
        phi = logits.detach().expand(u.shape).clone().requires_grad_(True)
        f = objective.cost(hard_threshold(phi, u))  # [N, *batch]
        g = self.per_sample_gradient(
            objective, phi, event_dims, u, v, f.detach(), create_graph=self.adapt
        )
        if self.adapt:
            self.step(g)
        return f + sum_event(g.detach() * logits, event_dims)

    def step(self, g: Tensor) -> None:
        """One Adam step on the control variate's parameters down ∇‖mean_i ĝ_i‖²."""
        params = [p for p in self.control_variate.parameters()]
        with torch.enable_grad():
            loss = g.mean(0).square().sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, grad in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if grad is None else grad.detach()
        self.optimizer.step()


class REBAR(_ConditionalRelaxation):
    """REBAR: REINFORCE with the Concrete relaxation as control variate, per sample

        ĝ = [f(b) − η f̃(σ_λ(z̃))] ∇φ log p(b) + η ∇φ f̃(σ_λ(z)) − η ∇φ f̃(σ_λ(z̃)),

    b = H(z), z = φ + logit u, z̃ ~ p(z | b) (module docstring), σ_λ(z) = σ(z/λ), f̃ the
    objective's ``relaxed_cost``; averaged over n_samples draws (two uniforms each, one
    evaluation of f and two of f̃). λ and η are tuned online to minimise the variance of
    ĝ (``adapt``; see the module docstring for when the state changes). Unbiased for any
    λ > 0 and η.

    Requires: Bernoulli variables (``Bernoulli`` or ``Independent(Bernoulli)``) with
    logits differentiable in θ; the objective's ``relaxed_cost(y)`` differentiable in
    y ∈ [0, 1]. f itself need not be differentiable.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR: Low-variance,
    unbiased gradient estimates for discrete latent variable models", NeurIPS.

    Args:
        temperature: initial λ > 0.
        eta: initial η.
        lr: Adam's learning rate for (log λ, η).
        adapt: tune λ and η at every call (false: frozen state).
    """

    name = "rebar"

    def __init__(self, temperature: float = 0.5, eta: float = 1.0, lr: float = 0.01,
                 adapt: bool = True):  # fmt: skip
        super().__init__(temperature, eta, 0, lr, adapt)


class RELAX(_ConditionalRelaxation):
    """RELAX: a learned control variate c, per sample

        ĝ = [f(b) − c(z̃)] ∇φ log p(b) + ∇φ c(z) − ∇φ c(z̃),
        c(z) = η f̃(σ_λ(z)) + r_ρ(σ_λ(z))   (the REBAR term is dropped with eta=None),

    b = H(z), z = φ + logit u, z̃ ~ p(z | b) (module docstring), r_ρ a small MLP (one tanh
    hidden layer) of the relaxed bits of a sample; averaged over n_samples draws. λ, η and
    ρ are trained online to minimise the variance of ĝ (``adapt``; see the module docstring
    for when the state changes). Unbiased for any c.

    Requires: Bernoulli variables (``Bernoulli`` or ``Independent(Bernoulli)``) with
    logits differentiable in θ; with the REBAR term, the objective's ``relaxed_cost(y)``
    differentiable in y ∈ [0, 1]. f itself need not be differentiable.

    Shapes: theta [*batch, D] -> surrogate [N, *batch].
    Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation through the void:
    Optimizing control variates for black-box gradient estimation", ICLR.

    Args:
        temperature: initial λ > 0.
        eta: initial η of the REBAR term, or None for c = r_ρ alone.
        hidden: width of r_ρ's hidden layer (≥ 1); its weights start at torch's default
            initialisation, drawn from torch's generator when the first call builds it.
        lr: Adam's learning rate for (log λ, η, ρ).
        adapt: train c at every call (false: frozen state).
    """

    name = "relax"

    def __init__(self, temperature: float = 0.5, eta: float | None = 1.0, hidden: int = 10,
                 lr: float = 0.01, adapt: bool = True):  # fmt: skip
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"estimator.hidden must be a positive integer, got {hidden!r}")
        super().__init__(temperature, eta, hidden, lr, adapt)
