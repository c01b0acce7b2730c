"""Toy objectives L(θ) = E_{x ~ p_θ}[f(x)] whose value and gradient are known exactly.

Each toy keeps its parameters as one vector ``theta`` [D] (names in ``param_names``)
and implements the ``estimators.StochasticObjective`` contract and the tasks' interface
(``benchmarks.objectives.base.Objective``). The exact objective is written in closed form
in torch and the exact gradient is its autograd gradient; the tests check those gradients
against the hand-derived formulas of Mohamed et al. (2020).

Gradients are taken in the parameterisation named (σ itself, not log σ; the logit, not
the probability).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal

from benchmarks.measure import measure_variance
from benchmarks.objectives.base import Objective
from benchmarks.objectives.closed_form import binary_states
from benchmarks.settings import MeasureSettings

# The smallest σ training leaves a Gaussian toy: at σ = 0 its distribution is undefined.
MIN_SIGMA = 1e-3


class ToyObjective(Objective):
    """Shared machinery: a parameter vector, its names, the exact gradient, and training
    by plain SGD on θ."""

    cost_is_differentiable: bool = True
    param_names: list[str]
    optimizer_class = torch.optim.SGD

    def __init__(self, values: Sequence[float], device: str | torch.device, dtype: torch.dtype):
        self.theta = torch.tensor(list(values), device=device, dtype=dtype)  # [D]
        self._trained: Tensor | None = None

    def distribution(self, theta: Tensor) -> Distribution:
        raise NotImplementedError

    def cost(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def exact_value(self, theta: Tensor) -> Tensor:
        """L(θ) in closed form, for ``theta`` [*batch, D] -> [*batch]."""
        raise NotImplementedError

    def true_grad(self) -> Tensor:
        """∇θ L at ``self.theta``, exact, [D]."""
        theta = self.theta.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.exact_value(theta), theta)
        return grad

    # -- training (benchmarks.objectives.base.Objective) --------------------------------
    def parameters(self) -> list[Tensor]:
        """A leaf copy of θ that training updates; ``constrain`` copies it back to θ."""
        self._trained = self.theta.detach().clone().requires_grad_(True)
        return [self._trained]

    def loss(self, estimator, n_samples: int) -> Tensor:
        return estimator.surrogate(self, self._trained, n_samples).mean(0).sum()

    def constrain(self) -> None:
        self.theta = self._trained.detach().clone()

    def step_row(self, n_samples: int, k: int = 1) -> dict[str, float]:
        loss = float(self.exact_value(self.theta, k) if k > 1 else self.exact_value(self.theta))
        return {"loss": loss, "optimality_gap": loss - self.infimum}

    def measure(
        self, estimator, settings: MeasureSettings, *, step=None, truth=None, **options
    ) -> pd.DataFrame:
        # The exact gradient is cheap here: measure_variance computes it, truth is unused.
        frame = measure_variance(
            estimator, self, max_batch_samples=settings.max_batch_samples, **options,
            **settings.measure_kwargs(),
        )  # fmt: skip
        if step is not None:
            frame["step"] = step
        return frame


def number(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"objective.{name} must be a number, got {value!r}") from None


def numbers(name: str, values) -> list[float]:
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise ValueError(f"objective.{name} must be a list of numbers, got {values!r}")
    return [number(name, v) for v in values]


def positive(name: str, value) -> float:
    value = number(name, value)
    if not value > 0:
        raise ValueError(f"objective.{name} must be > 0, got {value}")
    return value


class GaussianToy(ToyObjective):
    """x ~ N(mu, sigma²), θ = (mu, sigma); training keeps sigma ≥ ``MIN_SIGMA``."""

    param_names = ["mu", "sigma"]

    def distribution(self, theta):
        return Normal(theta[..., 0], theta[..., 1])

    def constrain(self) -> None:
        with torch.no_grad():
            self._trained[1] = self._trained[1].clamp_min(MIN_SIGMA)
        super().constrain()


class GaussianQuadratic(GaussianToy):
    """x ~ N(mu, sigma²), f(x) = (x − target)², L = (mu − target)² + sigma².

    The running example of Mohamed et al. (2020), Fig. 2.
    """

    name = "gaussian_quadratic"
    infimum = 0.0  # mu = target, sigma -> 0

    def __init__(self, mu=1.0, sigma=1.0, target=0.0, device="cpu", dtype=torch.float32):
        super().__init__([number("mu", mu), positive("sigma", sigma)], device, dtype)
        self.target = number("target", target)

    def cost(self, x):
        d = x - self.target
        return d * d  # its backward takes 2 passes fewer than (x − target)**2's

    def exact_value(self, theta):
        return (theta[..., 0] - self.target) ** 2 + theta[..., 1] ** 2


class GaussianCosine(GaussianToy):
    """x ~ N(mu, sigma²), f(x) = cos(omega·x), L = cos(omega·mu)·exp(−omega²·sigma²/2)."""

    name = "gaussian_cosine"

    def __init__(self, mu=1.0, sigma=1.0, omega=1.0, device="cpu", dtype=torch.float32):
        super().__init__([number("mu", mu), positive("sigma", sigma)], device, dtype)
        self.omega = number("omega", omega)

    @property
    def infimum(self) -> float:
        return -1.0 if self.omega != 0 else 1.0  # omega·mu = pi, sigma -> 0

    def cost(self, x):
        return torch.cos(self.omega * x)

    def exact_value(self, theta):
        mu, sigma = theta[..., 0], theta[..., 1]
        return torch.cos(self.omega * mu) * torch.exp(-0.5 * self.omega**2 * sigma**2)


class BernoulliThreshold(ToyObjective):
    """b ~ Bernoulli(sigmoid(logit)), f(b) = (b − target)², L = p(1−t)² + (1−p)t².

    The toy of REBAR (Tucker et al. 2017, t = 0.45) and RELAX (Grathwohl et al. 2018,
    t = 0.499): the gradient is tiny next to the noise.
    """

    name = "bernoulli_threshold"
    param_names = ["logit"]
    cost_is_differentiable = False

    def __init__(self, logit=0.0, target=0.45, device="cpu", dtype=torch.float32):
        super().__init__([number("logit", logit)], device, dtype)
        self.target = number("target", target)

    @property
    def infimum(self) -> float:
        return min(self.target**2, (1 - self.target) ** 2)  # p -> 0 or 1

    def distribution(self, theta):
        return Bernoulli(logits=theta[..., 0])

    def cost(self, x):
        return (x - self.target) ** 2

    def relaxed_cost(self, y):
        """f on relaxed bits y in [0, 1] (for the relaxation estimators)."""
        d = y - self.target
        return d * d  # as GaussianQuadratic.cost: a cheaper backward than d**2

    def exact_value(self, theta):
        p = torch.sigmoid(theta[..., 0])
        return p * (1 - self.target) ** 2 + (1 - p) * self.target**2


class CategoricalLinear(ToyObjective):
    """z ~ Categorical(softmax(logits)), f(z) = rewards[z], L = Σ_k softmax(logits)_k rewards_k."""

    name = "categorical_linear"
    cost_is_differentiable = False

    def __init__(
        self, logits=(0.0, 0.0, 0.0), rewards=(1.0, 0.0, -1.0), device="cpu", dtype=torch.float32
    ):
        logits, rewards = numbers("logits", logits), numbers("rewards", rewards)
        if len(logits) < 2:
            raise ValueError(f"objective.logits needs at least 2 entries, got {len(logits)}")
        if len(rewards) != len(logits):
            raise ValueError(
                f"objective.logits has {len(logits)} entries but objective.rewards has "
                f"{len(rewards)}; they must match"
            )
        super().__init__(logits, device, dtype)
        self.rewards = torch.tensor(rewards, device=device, dtype=dtype)
        self.param_names = [f"logits[{k}]" for k in range(len(logits))]

    @property
    def infimum(self) -> float:
        return float(self.rewards.min())  # all mass on the best reward

    def distribution(self, theta):
        return Categorical(logits=theta)

    def cost(self, x):
        return self.rewards[x]

    def relaxed_cost(self, y):
        """f on probability vectors y [..., K]: y @ rewards, rewards[z] at one_hot(z)."""
        return y @ self.rewards.to(y.dtype)

    def exact_value(self, theta):
        return (torch.softmax(theta, -1) * self.rewards).sum(-1)


class BernoulliShared(ToyObjective):
    """Bits sharing one logit: b_i ~ Bernoulli(sigmoid(phi)) independently, i = 1..K,
    f(b) = Σ_i (b_i − targets_i)², with K = len(targets).

    The toy of Liu et al. (2019) and Kool et al. (2020) (targets [0.6, 0.51, 0.48]): a
    multivariate Bernoulli whose dimensions pull the shared logit in different directions.
    L is computed by enumerating the 2^K states, so its gradient is exact.
    """

    name = "bernoulli_shared"
    param_names = ["phi"]
    cost_is_differentiable = False

    def __init__(self, phi=0.0, targets=(0.6, 0.51, 0.48), device="cpu", dtype=torch.float32):
        targets = numbers("targets", targets)
        if not 1 <= len(targets) <= 16:
            raise ValueError(f"objective.targets needs 1 to 16 entries, got {len(targets)}")
        super().__init__([number("phi", phi)], device, dtype)
        self.targets = torch.tensor(targets, device=device, dtype=dtype)

    @property
    def infimum(self) -> float:
        # L is linear in p = sigmoid(phi): the infimum is at p -> 0 or p -> 1.
        targets = self.targets
        return float(min(targets.square().sum(), (1 - targets).square().sum()))

    def distribution(self, theta):
        logits = theta[..., :1].expand(*theta.shape[:-1], len(self.targets))
        return Independent(Bernoulli(logits=logits), 1)

    def cost(self, x):
        return ((x - self.targets) ** 2).sum(-1)

    def relaxed_cost(self, y):
        """f on relaxed bits y in [0, 1]^K (for the relaxation estimators)."""
        return self.cost(y)

    def exact_value(self, theta):
        states = binary_states(len(self.targets), theta.device, theta.dtype)  # [2^K, K]
        log_p = self.distribution(theta.unsqueeze(-2)).log_prob(states)  # [*batch, 2^K]
        return (log_p.exp() * self.cost(states)).sum(-1)


TOYS = {
    cls.name: cls
    for cls in (
        GaussianQuadratic,
        GaussianCosine,
        BernoulliThreshold,
        CategoricalLinear,
        BernoulliShared,
    )
}
