"""Bayesian logistic regression with a diagonal-Gaussian posterior: ``bayes_logreg``.

The experiment of Mohamed et al. (2020), section 8.3: scikit-learn's bundled breast-cancer
data (569 points × 30 features), each feature standardised, plus a constant column for the
bias: X [569, 31], labels y ∈ {−1, +1}. Prior w ~ N(0, I); variational posterior
q(w) = N(μ, diag σ²), θ [62] = (μ [31], log σ [31]). The loss is the negative ELBO of the
whole data set (a sum over data points, as in the paper):

    −ELBO(θ) = E_q[ −Σ_n log sigmoid(y_n x_n·w) ] + KL(q ‖ N(0, I)),

``cost(w)`` is the expectation's integrand, the KL term is analytic. With ``batch_size``
set, the cost uses the first ``batch_size`` points scaled by N / batch_size (training draws
fresh batches); by default the full data set, as in the paper.

Exact gradient: x_n·w is Gaussian under q, N(x_n·μ, Σ_j x_nj² σ_j²), so each expectation is
one-dimensional; Gauss–Hermite quadrature with 64 nodes gives it (and by autograd its
gradient) to about machine precision for these data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from benchmarks.objectives.closed_form import kl_to_standard_normal
from benchmarks.objectives.model import ModelObjective, choose_true_grad, load_checkpoint


class BayesLogReg(ModelObjective):
    """Bayesian logistic regression on breast cancer; θ = (μ, log σ) of q(w)."""

    name = "bayes_logreg"
    param_groups = ("mean", "log_scale")
    cost_is_differentiable = True

    def __init__(
        self,
        batch_size: int | None = None,
        init_scale: float = 0.1,
        init_seed: int = 0,
        checkpoint: str | None = None,
        true_grad: str = "auto",
        quadrature_nodes: int = 64,
        reference_samples: int = 10000,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        features = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)
        features = np.hstack([features, np.ones((len(features), 1))])
        self.features = torch.tensor(features, device=device, dtype=dtype)  # [N, 31]
        self.labels = torch.tensor(2.0 * bunch.target - 1.0, device=device, dtype=dtype)  # [N]
        n, d = self.features.shape
        if batch_size is not None and not (isinstance(batch_size, int) and 1 <= batch_size <= n):
            raise ValueError(f"objective.batch_size must be null or in 1..{n}, got {batch_size!r}")
        if not float(init_scale) > 0:
            raise ValueError(f"objective.init_scale must be > 0, got {init_scale}")
        self.batch_size = batch_size or n
        self.dim = d
        self.reference_samples = int(reference_samples)
        generator = torch.Generator().manual_seed(int(init_seed))
        mean = 0.1 * torch.randn(d, generator=generator, dtype=torch.float64)
        log_scale = torch.full((d,), float(np.log(float(init_scale))), dtype=torch.float64)
        self.variational = nn.Parameter(torch.cat([mean, log_scale]).to(device, dtype))
        load_checkpoint(self, checkpoint, device)
        self.true_grad_method = choose_true_grad(true_grad, True, "", fallback="exact")
        nodes, weights = np.polynomial.hermite.hermgauss(int(quadrature_nodes))
        self._nodes = torch.tensor(nodes, device=device, dtype=dtype)
        self._weights = torch.tensor(weights / np.sqrt(np.pi), device=device, dtype=dtype)
        self._index = torch.arange(self.batch_size, device=device)

    # -- the estimator contract ---------------------------------------------------------
    @property
    def theta(self) -> Tensor:
        return self.variational.detach()

    def distribution(self, theta):
        mean, log_scale = theta.split(self.dim, dim=-1)
        return Independent(Normal(mean, log_scale.exp()), 1)

    def cost(self, w: Tensor) -> Tensor:
        """−log-likelihood of the batch, scaled to the data set: w [..., 31] -> [...]."""
        x, y = self.features[self._index], self.labels[self._index]
        logits = torch.matmul(w, x.T)  # [..., B]
        scale = len(self.features) / len(self._index)
        return -scale * F.logsigmoid(y * logits).sum(-1)

    def kl(self, theta: Tensor) -> Tensor:
        return kl_to_standard_normal(*theta.split(self.dim, dim=-1))

    # -- training and measurement -------------------------------------------------------
    def next_batch(self, generator: torch.Generator) -> None:
        n = len(self.features)
        if self.batch_size < n:
            self._index = torch.randperm(n, generator=generator)[: self.batch_size].to(
                self.features.device
            )

    def measure_batch(self) -> None:
        """Go back to the fixed batch (the first batch_size points) used for measuring."""
        self._index = torch.arange(self.batch_size, device=self.features.device)

    def batch_loss(self, n_samples: int = 0) -> Tensor:
        """−ELBO of the current batch (scaled to the data set), exact by quadrature."""
        return self.exact_loss(self.theta)

    def loss(self, estimator, n_samples: int) -> Tensor:
        theta = self.variational
        return estimator.surrogate(self, theta, n_samples).mean(0) + self.kl(theta)

    def replicate_gradients(self, estimator, n_samples: int, replicates: int) -> dict[str, Tensor]:
        """``{"mean": [R, 31], "log_scale": [R, 31]}``: independent estimates, one pass."""
        theta = self.theta
        copies = theta.expand(replicates, *theta.shape).clone().requires_grad_(True)
        surrogate = estimator.surrogate(self, copies, n_samples)  # [m, R]
        (grads,) = torch.autograd.grad(surrogate.mean(0).sum(), copies)
        theta = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            (kl_grad,) = torch.autograd.grad(self.kl(theta), theta)
        grads = grads + kl_grad
        return {"mean": grads[:, : self.dim], "log_scale": grads[:, self.dim :]}

    def group_parameters(self) -> dict[str, list[Tensor]]:
        return {"all": [self.variational]}

    def exact_loss(self, theta: Tensor) -> Tensor:
        """−ELBO of the current batch (scaled to the data set) by Gauss–Hermite quadrature."""
        mean, log_scale = theta.split(self.dim, dim=-1)
        x, y = self.features[self._index], self.labels[self._index]
        m = x @ mean  # [B]
        s = (x.square() @ (2 * log_scale).exp()).sqrt()  # [B]
        a = m.unsqueeze(-1) + np.sqrt(2.0) * s.unsqueeze(-1) * self._nodes  # [B, K]
        expected = (F.logsigmoid(y.unsqueeze(-1) * a) * self._weights).sum(-1)  # [B]
        scale = len(self.features) / len(self._index)
        return -scale * expected.sum() + self.kl(theta)

    def exact_gradient(self) -> dict[str, Tensor]:
        theta = self.theta.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.exact_loss(theta), theta)
        return {"mean": grad[: self.dim], "log_scale": grad[self.dim :]}

    @torch.no_grad()
    def elbo(self, split: str = "train", n_samples: int = 0) -> float:
        """ELBO of the whole data set, by quadrature (there is no held-out split)."""
        if split == "test":
            return float("nan")
        saved = self._index
        self._index = torch.arange(len(self.features), device=self.features.device)
        try:
            return -float(self.exact_loss(self.theta))
        finally:
            self._index = saved
