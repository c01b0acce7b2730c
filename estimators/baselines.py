"""Control variates for the score-function estimator.

A baseline b is subtracted from the cost: (f(x) − b) ∇θ log p_θ(x). Since
E[∇θ log p_θ(x)] = 0, the estimate stays unbiased as long as b does not depend on the
sample x it multiplies. Each class here documents why that holds for it.

Every baseline is called as ``baseline(objective, theta, x, f)`` with the samples
x [N, *batch, *event] and their costs f [N, *batch], and returns either a scalar baseline
broadcastable to f, or, when ``per_coordinate`` is true, one baseline per coordinate of
theta, [*batch, D].
"""

from __future__ import annotations

import torch
from torch import Tensor

from estimators.base import NotApplicable, StochasticObjective
from estimators.scores import per_sample_scores, sample, score_square_sums, square_sums


class Baseline:
    """Base class. ``per_coordinate`` baselines give one constant per coordinate of θ."""

    per_coordinate: bool = False

    def check(self, n_samples: int) -> None:
        """Raise ``NotApplicable`` if this baseline cannot work with ``n_samples``."""

    def check_objective(self, objective: StochasticObjective) -> None:
        """Raise ``NotApplicable`` if this baseline cannot work with ``objective``."""

    def reset(self) -> None:
        """Forget state carried across calls."""

    def __call__(
        self, objective: StochasticObjective, theta: Tensor, x: Tensor, f: Tensor
    ) -> Tensor:
        raise NotImplementedError


class LeaveOneOut(Baseline):
    """b_i = mean_{j≠i} f(x_j): each sample is baselined by the others (RLOO).

    Unbiased because b_i is independent of x_i. Requires n_samples ≥ 2.
    Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!".
    """

    def check(self, n_samples: int) -> None:
        if n_samples < 2:
            raise NotApplicable(f"leave-one-out baseline needs n_samples >= 2, got {n_samples}")

    def __call__(self, objective, theta, x, f):
        n = f.shape[0]
        return (f.sum(0, keepdim=True) - f) / (n - 1)  # [N, *batch]


class MovingAverage(Baseline):
    """b_t = exponential moving average of the mean cost of earlier calls.

    Unbiased because b_t is fixed before the current samples are drawn. The first call
    has no history and uses b = 0; its mean cost then initialises the average (no decay
    from zero), so a few warm-up calls give a useful baseline.
    Williams (1992); the "moving average baseline" of Mnih & Gregor (2014).

    Args:
        decay: weight of the old average, in [0, 1).
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.value: Tensor | None = None

    def reset(self) -> None:
        self.value = None

    def __call__(self, objective, theta, x, f):
        b = torch.zeros((), dtype=f.dtype, device=f.device) if self.value is None else self.value
        mean = f.detach().mean()
        if self.value is None:
            self.value = mean
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * mean
        return b


class OptimalConstant(Baseline):
    """b_k = E[f s_k²] / E[s_k²] with s = ∇θ log p_θ(x): per coordinate, the constant that
    minimises the variance of (f − b_k) s_k.

    Both expectations are estimated from ``n_extra`` fresh samples drawn for the purpose
    (default: as many as the estimate uses), independent of the samples the baseline is
    applied to, so the estimate stays unbiased. Those extra draws are part of the cost.
    Greensmith, Bartlett & Baxter (2004); Mohamed et al. (2020), section 7.4.

    Args:
        n_extra: number of independent samples used to fit b, or None for n_samples.
    """

    per_coordinate = True

    def __init__(self, n_extra: int | None = None):
        if n_extra is not None and n_extra < 1:
            raise ValueError(f"n_extra must be at least 1, got {n_extra}")
        self.n_extra = n_extra

    def __call__(self, objective, theta, x, f):
        b, _ = self._fit(objective, objective.distribution(theta.detach()), theta, None, f)
        return b

    def with_scores(self, objective, dist, theta, x, f):
        """b as ``__call__`` gives it, and the score ∇θ log p_θ(x_i) of every sample,
        [N, *batch, D], from the same backward pass that scores the extra draws.

        ``Reinforce`` uses the scores to subtract b_k s_k directly, instead of a second
        pass through log p (half the work; the numbers are the same). ``dist`` is
        ``objective.distribution(theta)``, already built by the caller.
        """
        return self._fit(objective, dist, theta, x, f)

    def _fit(self, objective, dist, theta, x, f):
        m = self.n_extra or f.shape[0]
        theta = theta.detach()
        x_extra = sample(dist, (m,))  # [M, *batch, *event]
        f_extra = objective.cost(x_extra).detach()  # [M, *batch]
        if x is None:
            weighted, total = score_square_sums(objective, theta, x_extra, f_extra, dist)
            scores = None
        else:  # score both sets of samples in one go
            scores = per_sample_scores(objective, theta, torch.cat([x, x_extra]), dist)
            weighted, total = square_sums(scores[x.shape[0] :], f_extra)
            scores = scores[: x.shape[0]]  # [N, *batch, D]
        # A coordinate whose score is zero on every extra sample gets b = 0.
        return weighted / total.clamp_min(torch.finfo(f.dtype).tiny), scores


class Learned(Baseline):
    """b_ψ(θ) or b_ψ(x): a small MLP, fitted online to the costs.

    With ``inputs="theta"`` it sees the distribution's parameters: for a model θ is the
    encoder's output for a data point, a function of the input; on a toy it is a learned
    constant. With ``inputs="x"`` it sees the data point itself (the objective's
    ``baseline_inputs``, a VAE's minibatch [B, D]), as NVIL's input-dependent baseline is
    defined (Mnih & Gregor 2014, §3.1). Each call first computes b for the current
    samples, then takes ``steps`` Adam steps on mean_i (f(x_i) − b_ψ)² using them, so b
    never depends on the samples it multiplies: unbiased. Like the moving average it needs
    warm-up calls (a training run) to be useful; its output starts at the first call's mean
    cost.

    Args:
        hidden: width of the MLP's hidden layer.
        lr: Adam's learning rate for ψ.
        steps: optimisation steps per call.
        inputs: what the MLP sees: ``"theta"`` (the distribution's parameters) or ``"x"``
            (the objective's data inputs).
    """

    INPUTS = ("theta", "x")

    def __init__(self, hidden: int = 32, lr: float = 0.01, steps: int = 1, inputs: str = "theta"):
        if hidden < 1 or steps < 0 or not lr > 0:
            raise ValueError(
                f"learned baseline needs hidden >= 1, steps >= 0 and lr > 0; "
                f"got hidden={hidden}, steps={steps}, lr={lr}"
            )
        if inputs not in self.INPUTS:
            raise ValueError(
                f"estimator.baseline.inputs must be one of {', '.join(self.INPUTS)}; got {inputs!r}"
            )
        self.hidden, self.lr, self.steps, self.inputs = hidden, lr, steps, inputs
        self.reset()

    def check_objective(self, objective) -> None:
        if self.inputs == "x" and getattr(objective, "baseline_inputs", None) is None:
            raise NotApplicable(
                "a learned baseline with inputs=x needs an objective with data inputs "
                "(baseline_inputs, as the VAEs have)"
            )

    def _features(self, objective, theta: Tensor) -> Tensor:
        """What the MLP sees, [*batch, features]."""
        if self.inputs == "theta":
            return theta.detach()
        data = objective.baseline_inputs.to(theta.dtype)  # [B, D]
        return data.expand(*theta.shape[:-1], data.shape[-1])

    def reset(self) -> None:
        self.net: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def _build(self, theta: Tensor, f: Tensor) -> None:
        d = theta.shape[-1]
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d, self.hidden), torch.nn.Tanh(), torch.nn.Linear(self.hidden, 1)
        ).to(device=theta.device, dtype=theta.dtype)
        with torch.no_grad():
            self.net[2].weight.zero_()
            self.net[2].bias.fill_(float(f.detach().mean()))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def __call__(self, objective, theta, x, f):
        theta = self._features(objective, theta)
        if self.net is None:
            self._build(theta, f)
        with torch.enable_grad():
            out = self.net(theta).squeeze(-1)  # [*batch]; b, and the first step's forward
        b = out.detach()
        # mean_i (f_i − b)² and (mean_i f_i − b)² differ by the spread of f, which does not
        # depend on ψ: same gradients, so the same Adam steps, at the cost of one pass over
        # the samples instead of several (for 10⁶ samples, most of this baseline's cost).
        target = f.detach().mean(0)  # [*batch]
        with torch.enable_grad():
            for step in range(self.steps):
                if step:
                    out = self.net(theta).squeeze(-1)
                self.optimizer.zero_grad()
                (target - out).square().mean().backward()
                self.optimizer.step()
        return b
