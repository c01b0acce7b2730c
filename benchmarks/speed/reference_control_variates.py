"""Hand-written references for REBAR and RELAX, timed against the library.

The counterpart of ``reference.py`` for ``rebar`` and ``relax`` on ``bernoulli_threshold``
(f(b) = (b − 0.45)², one logit φ), with their default settings (conf/estimator/*.yaml:
temperature λ = 0.5, η = 1, RELAX's network of 10 tanh units, Adam at lr 0.01, adapting):

- ``PlainRelaxed(estimator)(theta, n) -> [1]``: one estimate written inline, the way the
  papers' code writes it: per-sample copies of φ, the control variate
  c(z) = η (σ(z/λ) − t)² (+ r_ρ(2σ(z/λ) − 1) for RELAX) at z and at the conditional
  relaxation z̃, ∇φ c by ``torch.autograd.grad`` with ``create_graph``, then one Adam step
  on c's parameters down ∇‖mean ĝ‖². It keeps c's parameters across calls, as the library
  keeps its state.
- ``FLOOR[estimator](theta, n, r, state) -> [r, 1]``: the same ``r`` replicate estimates
  as one fused expression with every derivative in φ written out (no double backward), at
  the library's state ``state`` (``control_variate_state``), and the gradient of the
  variance loss ‖mean ĝ‖² with respect to c's parameters by one backward pass of that
  expression: the work of the library's adaptation step, without its (two-scalar, or for
  RELAX 33-parameter) Adam update. The library's call differentiates ĝ, itself a
  gradient, a second time.

Both draw the library's numbers in its order and shapes (u, then v, [N] or [N, R],
clamped to [ε, 1 − ε]); RELAX's network is built at the first call from torch's
generator, as the library builds it, so under one seed they agree with it to rounding.

The derivatives. z = φ + logit u, b = 1[z > 0], p = σ(φ), and z̃ = φ + logit v′ with
v′ = v(1 − p) (b = 0) or v p + 1 − p (b = 1), whose total derivative in φ is
J = (1 − p)(1 − v)/(1 − v(1 − p)) for b = 0 and p v/(1 − p(1 − v)) for b = 1. With
s = σ(z/λ), dc/dz = [2η(s − t) + 2 r′(2s − 1)] s(1 − s)/λ, and per sample

    ĝ = (f(b) − c(z̃))(b − p) + dc/dz(z) − dc/dz(z̃)·J.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

TARGET = 0.45  # conf/objective/bernoulli_threshold.yaml
TEMPERATURE, ETA, HIDDEN, LR = 0.5, 1.0, 10, 0.01  # conf/estimator/{rebar,relax}.yaml
ESTIMATORS = ("rebar", "relax")


def _uniforms(shape, like: Tensor) -> tuple[Tensor, Tensor]:
    eps = torch.finfo(like.dtype).eps
    u = torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(eps, 1 - eps)
    v = torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(eps, 1 - eps)
    return u, v


def _conditional(phi: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """z̃ = φ + logit v′, in log-sigmoids so that it stays finite where v′ rounds to 0 or 1."""
    p = torch.sigmoid(phi)
    zero = logsigmoid(phi) + torch.log(v) - torch.log1p(-v * (1 - p))
    one = torch.log1p(-p * (1 - v)) - logsigmoid(-phi) - torch.log1p(-v)
    return torch.where(b > 0, one, zero)


# --- one estimate, written plainly -------------------------------------------------------


class PlainRelaxed:
    """One REBAR or RELAX estimate on ``bernoulli_threshold``, adapting c at every call."""

    def __init__(self, estimator: str):
        self.relax = estimator == "relax"
        self.params: list[Tensor] | None = None

    def _build(self, like: Tensor) -> None:
        factory = {"dtype": like.dtype, "device": like.device}
        self.log_temperature = torch.tensor(math.log(TEMPERATURE), **factory).requires_grad_()
        self.eta = torch.tensor(ETA, **factory).requires_grad_()
        self.params = [self.log_temperature, self.eta]
        self.net = None
        if self.relax:
            self.net = nn.Sequential(nn.Linear(1, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))
            self.net = self.net.to(**factory)
            self.params += list(self.net.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=LR)

    def _c(self, z: Tensor) -> Tensor:
        y = torch.sigmoid(z / self.log_temperature.exp())
        c = self.eta * (y - TARGET) ** 2
        if self.net is not None:
            c = c + self.net((2 * y - 1).unsqueeze(-1)).squeeze(-1)
        return c

    def __call__(self, theta: Tensor, n: int) -> Tensor:
        if self.params is None:
            self._build(theta)
        u, v = _uniforms((n,), theta)
        phi = theta[0].detach().expand(n).clone().requires_grad_(True)
        z = phi + torch.log(u) - torch.log1p(-u)
        b = (z > 0).to(theta.dtype)
        f = (b - TARGET) ** 2
        z_tilde = _conditional(phi, b, v)
        c_tilde = self._c(z_tilde)
        (dc,) = torch.autograd.grad((self._c(z) - c_tilde).sum(), phi, create_graph=True)
        g = (f - c_tilde) * (b - torch.sigmoid(phi.detach())) + dc
        self.optimizer.zero_grad()
        grads = torch.autograd.grad(g.mean().square(), self.params, allow_unused=True)
        for p, grad in zip(self.params, grads, strict=True):
            p.grad = torch.zeros_like(p) if grad is None else grad
        self.optimizer.step()
        return g.mean().detach().unsqueeze(0)


# --- the floor: R replicate estimates in one fused expression ---------------------------


def control_variate_state(estimator) -> dict[str, Tensor]:
    """The library's control variate as it stands (λ, η and RELAX's network), detached:
    what the floor computes with."""
    cv = estimator.control_variate
    state = {"log_temperature": cv.log_temperature, "eta": cv.eta}
    if cv.net is not None:
        first, last = cv.net[0], cv.net[2]
        state.update(w1=first.weight[:, 0], b1=first.bias, w2=last.weight[0], b2=last.bias[0])
    # Copies: the library's next call steps its parameters in place.
    return {k: v.detach().clone() for k, v in state.items()}


def _floor(theta: Tensor, n: int, r: int, state: dict[str, Tensor]) -> Tensor:
    params = {k: v.detach().requires_grad_(True) for k, v in state.items()}
    phi = theta[0]
    p = torch.sigmoid(phi)
    u, v = _uniforms((n, r), theta)
    z = phi + torch.log(u) - torch.log1p(-u)
    b = (z > 0).to(theta.dtype)
    z_tilde = _conditional(phi, b, v)
    jacobian = torch.where(b > 0, p * v / (1 - p * (1 - v)), (1 - p) * (1 - v) / (1 - v * (1 - p)))
    with torch.enable_grad():
        lam = params["log_temperature"].exp()

        def value_and_slope(z):  # c(z) and dc/dz
            s = torch.sigmoid(z / lam)
            value, slope = params["eta"] * (s - TARGET) ** 2, 2 * params["eta"] * (s - TARGET)
            if "w1" in params:
                hidden = torch.tanh((2 * s - 1).unsqueeze(-1) * params["w1"] + params["b1"])
                value = value + hidden @ params["w2"] + params["b2"]
                slope = slope + 2 * ((1 - hidden.square()) * params["w1"]) @ params["w2"]
            return value, slope * s * (1 - s) / lam

        _, slope = value_and_slope(z)
        c_tilde, slope_tilde = value_and_slope(z_tilde)
        g = ((b - TARGET) ** 2 - c_tilde) * (b - p) + slope - slope_tilde * jacobian
        estimate = g.mean(0)  # [R]
        # The adaptation step's gradient: one backward pass, discarded here.
        torch.autograd.grad(estimate.square().sum(), list(params.values()))
    return estimate.detach().unsqueeze(-1)


PLAIN = {("bernoulli_threshold", e): (lambda e=e: PlainRelaxed(e)) for e in ESTIMATORS}
FLOOR = {("bernoulli_threshold", e): _floor for e in ESTIMATORS}
