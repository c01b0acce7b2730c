"""The model contract (``ModelObjective``), and the pieces models share.

A model objective (``vae_bernoulli``, ``vae_gaussian``, ``bayes_logreg``) is a
``torch.nn.Module`` that implements ``estimators.StochasticObjective`` for its current
minibatch: ``theta`` is the stochastic node's parents (a VAE's encoder output for the
batch, [B, D_θ]; the variational parameters of Bayesian logistic regression, [D_θ]),
``distribution(theta)`` is q, and ``cost(z)`` is the part of the *negative* ELBO that is an
expectation under q (for the VAEs −log p(x | z), per data point). The rest of the negative
ELBO, KL(q ‖ prior), is computed analytically (``kl(theta)``) and its exact gradient is
added to every estimate: it changes the mean gradient, never the variance.

So every estimator in ``estimators/`` works unchanged: it estimates ∇θ E_q[cost], as on a
toy, and the chain rule carries that to the encoder's weights. Parameters of the cost (a
decoder) get their gradient pathwise, through the ``cost`` that each surrogate contains.
The loss is minimised (−ELBO), as the toys' E[f] is. ``ModelObjective`` states the methods
a model adds for ``benchmarks.measure_model`` and ``benchmarks.train``, and implements the
tasks' interface (``benchmarks.objectives.base.Objective``) from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from benchmarks.measure_model import measure_model_variance, true_gradient
from benchmarks.objectives.base import Objective
from benchmarks.settings import MeasureSettings

TRUE_GRAD = ("auto", "exact", "reference", "none")


class ModelObjective(nn.Module, Objective):
    """A model as a stochastic objective: trained with Adam on all its parameters, one
    fresh minibatch per step, measured on a fixed minibatch.

    Attributes:
        param_groups: names of the parameter groups whose gradients are measured.
        true_grad_method: how ``benchmarks.measure_model.true_gradient`` gets the truth:
            ``exact`` (``exact_gradient``), ``reference`` (reparam from
            ``reference_samples`` draws per data point) or ``none``.
        reference_samples: draws per data point of the reference gradient.
    """

    param_groups: tuple[str, ...] = ()
    true_grad_method: str = "none"
    reference_samples: int = 10000
    optimizer_class = torch.optim.Adam

    # -- what each model implements -----------------------------------------------------
    @property
    def theta(self) -> Tensor:
        """The stochastic node's parents for the current minibatch, detached."""
        raise NotImplementedError

    def kl(self, theta: Tensor) -> Tensor:
        """KL(q_θ ‖ prior), analytic; its exact gradient is added to every estimate."""
        raise NotImplementedError

    def replicate_gradients(self, estimator, n_samples: int, replicates: int) -> dict[str, Tensor]:
        """Independent estimates of the gradient of the minibatch loss, batched:
        ``{group: [replicates, P_group]}`` for each of ``param_groups``."""
        raise NotImplementedError

    def loss(self, estimator, n_samples: int) -> Tensor:
        """The minibatch −ELBO; its gradient w.r.t. ``parameters()`` is one estimate."""
        raise NotImplementedError

    def exact_gradient(self) -> dict[str, Tensor]:
        """``{group: [P_group]}`` at the current parameters, where ``true_grad_method`` is
        ``exact`` (by enumeration or quadrature)."""
        raise NotImplementedError

    def batch_loss(self, n_samples: int, k: int = 1) -> Tensor:
        """The −ELBO of the current minibatch (exact where it can be, else Monte Carlo);
        −L_K with ``k`` > 1, for models with a ``log_joint`` (the VAEs)."""
        raise NotImplementedError

    def elbo(self, split: str = "test", n_samples: int = 16) -> float:
        """Mean ELBO on a data split (NaN where the model has no such split)."""
        raise NotImplementedError

    # -- the tasks' interface (benchmarks.objectives.base.Objective) ----------------------
    def step_row(self, n_samples: int, k: int = 1) -> dict[str, float]:
        with torch.no_grad():
            elbo = -float(self.batch_loss(n_samples))
            loss = -elbo if k == 1 else float(self.batch_loss(n_samples, k))
        return {"loss": loss, "train_elbo": elbo}

    def iwae(self, split: str = "test", k: int = 100) -> float:
        """Mean importance-weighted bound with ``k`` samples on a data split (NaN where the
        model has none)."""
        return math.nan

    def evaluation_row(self, eval_samples: int, iwae_k: int = 100) -> dict[str, float]:
        return {
            "heldout_elbo": self.elbo("test", eval_samples),
            "heldout_iwae": self.iwae("test", iwae_k),
        }

    def checkpoint(self) -> dict:
        return self.state_dict()

    def truth(self):
        return true_gradient(self)

    def measure(self, estimator, settings: MeasureSettings, **options) -> pd.DataFrame:
        return measure_model_variance(estimator, self, **options, **settings.measure_kwargs())


# Hidden-layer activations by config name. LeakyReLU has slope 0.3, as in the nonlinear
# sigmoid belief nets of REBAR, RELAX and DisARM.
ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.3),
}


def check_activation(name) -> str:
    """``name`` if it is a key of ``ACTIVATIONS``, else a one-line ``ValueError``."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"objective.activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}"
        )
    return name


class MLP(nn.Module):
    """MLP whose weights are stored [in, out], so that per-replicate copies
    [R, in, out] (biases [R, 1, out]) broadcast in ``torch.matmul`` over inputs
    [..., R, B, in]: one forward pass evaluates R different networks.

    ``sizes`` lists the widths from input to output (``[in, out]``: one linear map); every
    layer but the last is followed by ``activation`` (a key of ``ACTIVATIONS``).
    Initialised like ``torch.nn.Linear`` (uniform ±1/√in), from ``generator``.
    """

    def __init__(
        self,
        sizes: list[int],
        generator: torch.Generator,
        device,
        dtype,
        activation: str = "tanh",
    ):
        super().__init__()
        self.activation = ACTIVATIONS[check_activation(activation)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(n_in)
            w = (torch.rand(n_in, n_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(n_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w.to(device, dtype)))
            self.biases.append(nn.Parameter(b.to(device, dtype)))

    def forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """x [..., in] -> [..., out]; with per-replicate ``params``, x is [..., R, B, in]."""
        last = len(self.weights) - 1
        if params is None:
            for i in range(last + 1):
                x = torch.matmul(x, self.weights[i]) + self.biases[i]
                x = self.activation(x) if i < last else x
            return x
        # Replicate r's rows, from every leading index, as one matrix [R, rows, in], so
        # each layer is one batched matmul (broadcasting would copy the weights per row).
        replicates = params["weights.0"].shape[0]
        x = x.movedim(-3, 0)  # [R, ..., B, in]
        shape = x.shape[:-1]
        x = x.reshape(replicates, -1, x.shape[-1])
        for i in range(last + 1):
            x = torch.baddbmm(params[f"biases.{i}"], x, params[f"weights.{i}"])
            x = self.activation(x) if i < last else x
        return x.reshape(*shape, x.shape[-1]).movedim(0, -3)

    def replicated(self, replicates: int) -> dict[str, Tensor]:
        """Per-replicate copies of the parameters, each a leaf that requires grad."""
        copies = {}
        for name, p in self.named_parameters():
            p = p.detach()
            if name.startswith("biases."):
                p = p.unsqueeze(0)  # [1, out]: broadcasts over the batch dimension
            copies[name] = p.expand(replicates, *p.shape).clone().requires_grad_(True)
        return copies


def flat(tensors, replicates: int | None = None) -> Tensor:
    """Concatenate gradients into one vector [P] (or [R, P] with a leading replicate dim)."""
    if replicates is None:
        return torch.cat([t.reshape(-1) for t in tensors])
    return torch.cat([t.reshape(replicates, -1) for t in tensors], dim=1)


def choose_true_grad(setting: str, exact_ok: bool, reason: str, fallback: str) -> str:
    """Resolve ``objective.true_grad`` (auto | exact | reference | none) for one model.

    Args:
        exact_ok: whether this model, at these sizes, has an exact gradient.
        reason: one sentence saying why not, used when ``exact`` is asked for anyway.
        fallback: what ``auto`` gives when there is no exact gradient.
    """
    if setting not in TRUE_GRAD:
        choices = ", ".join(TRUE_GRAD)
        raise ValueError(f"objective.true_grad must be one of {choices}; got {setting!r}")
    if setting == "auto":
        return "exact" if exact_ok else fallback
    if setting == "exact" and not exact_ok:
        raise ValueError(f"objective.true_grad=exact: {reason}")
    return setting


def load_checkpoint(module: nn.Module, path: str | None, device) -> None:
    """Load a ``state_dict`` saved by ``task=train``; one-line errors naming the path."""
    if not path:
        return
    source = Path(path).expanduser()
    if not source.is_file():
        raise ValueError(f"objective.checkpoint: no such file: {source}")
    try:
        state = torch.load(source, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        reason = type(exc).__name__
        raise ValueError(f"objective.checkpoint: cannot read {source}: {reason}") from None
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        line = str(exc).strip().splitlines()
        detail = line[1].strip() if len(line) > 1 else (line[0] if line else "")
        raise ValueError(
            f"objective.checkpoint: {source} does not fit this model (same sizes and "
            f"objective as the training run?): {detail}"
        ) from None
