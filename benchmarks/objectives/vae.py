"""Variational autoencoders as stochastic objectives: ``vae_bernoulli`` and ``vae_gaussian``.

Both have an MLP encoder (hidden layers of widths ``hidden_dims``, or one of ``hidden_dim``
units; ``[]`` makes it linear; ``activation`` tanh, relu or leaky_relu) that maps a binary
image x [D] to θ, an MLP decoder with the same hidden widths in reverse that maps a latent
z [L] to the logits of Bernoulli pixels, and a prior. The configs ``vae_gaussian_full``
(D-400-20, ReLU: Kingma & Welling 2014 / PyTorch's example), ``vae_sbn_linear`` and
``vae_sbn_nonlinear`` (200 Bernoulli latents, linear or 200-200 LeakyReLU hidden layers:
Tucker et al. 2017, REBAR; Dong et al. 2020, DisARM) give the models of the
papers. Per data point the loss is the negative ELBO

    −ELBO(x) = E_{q(z|x)}[ −log p(x | z) ] + KL(q(z | x) ‖ p(z)),

with the KL term analytic (Kingma & Welling 2014, appendix B, for the Gaussian; the sum
of per-bit Bernoulli KLs for the binary latents). ``cost(z) = −log p(x | z)`` is what the
estimators see: they estimate ∇θ of its expectation, the KL gradient is added exactly. The
minibatch loss is the mean of −ELBO(x) over the batch. ``ModelObjective`` in
``benchmarks.objectives.model`` states the rest of the model contract.

``vae_bernoulli``: z ∈ {0,1}^L, q = ∏ Bernoulli(sigmoid(θ_l)) (a sigmoid belief layer),
prior Bernoulli(½)^L or, with ``learn_prior``, Bernoulli(sigmoid(η)) with learned logits η
(their gradient is exact: they enter the analytic KL only); θ [B, L] are the logits.
reparam does not apply. Its exact gradient sums over all 2^L latent states
(``latent_dim ≤ enumerate_limit``).

``vae_gaussian``: z ∈ R^L, q = N(μ, diag σ²), θ [B, 2L] = (μ, log σ), prior N(0, I). Its
reference gradient is reparam with many samples (``reference_samples`` draws per point).

Multi-sample estimators (IWAE, STL, DReG, VIMCO; ``estimators.multisample``) see each VAE
as an ``estimators.ImportanceWeightedObjective``: ``log_joint(z) = log p(x | z) + log p(z)``
for the current batch, q(z | x) as ``distribution(theta)``. Their surrogate is the whole
loss −L_K(x) per data point, so no KL is added to it; the minibatch loss is the mean of
−L_K(x), K the estimator's ``k``, and its gradient is measured and trained for encoder and
decoder alike (the decoder's through ``log_joint``). The truth for K > 1: exact for
``vae_bernoulli`` within ``enumerate_limit`` (the Frullani integral of
``benchmarks.objectives.bernoulli_latent`` over the 2^L states), and for ``vae_gaussian``
IWAE's own gradient from ``reference_samples`` draws per data point (``reference_samples / K``
estimates of K), with its standard error.

Held-out evaluation: ``elbo`` and ``iwae`` (the importance-weighted bound of Burda et al.
2016 with K draws, the literature's test log-likelihood estimate); pictures of a trained
model: ``write_pictures`` (``benchmarks.pictures``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from benchmarks.objectives.bernoulli_latent import enumerated_bound
from benchmarks.objectives.closed_form import binary_states, kl_to_standard_normal
from benchmarks.objectives.data import Dataset
from benchmarks.objectives.model import (
    MLP,
    ModelObjective,
    check_activation,
    choose_true_grad,
    flat,
    load_checkpoint,
)
from benchmarks.pictures import write_vae_pictures


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"objective.{name} must be a positive integer, got {value!r}")
    return value


def _hidden_dims(hidden_dim, hidden_dims) -> list[int]:
    """The hidden widths: ``hidden_dims`` when given (``[]``: linear maps), else one layer
    of ``hidden_dim`` units."""
    if hidden_dims is None:
        return [_positive_int("hidden_dim", hidden_dim)]
    if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
        raise ValueError(
            f"objective.hidden_dims must be a list of positive integers, got {hidden_dims!r}"
        )
    widths = list(hidden_dims)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(
            f"objective.hidden_dims must be a list of positive integers, got {widths!r}"
        )
    return widths


class VAE(ModelObjective):
    """Shared machinery of the two VAEs; subclasses set the latent family."""

    param_groups = ("encoder", "decoder")
    cost_is_differentiable = True
    gaussian_latents = False  # a standard-normal prior (what manifold.png needs)

    def __init__(
        self,
        data: Dataset,
        latent_dim: int = 8,
        hidden_dim: int = 64,
        hidden_dims: list[int] | None = None,
        activation: str = "tanh",
        batch_size: int = 32,
        init_seed: int = 0,
        checkpoint: str | None = None,
        true_grad: str = "auto",
        enumerate_limit: int = 12,
        reference_samples: int = 10000,
        learn_prior: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(data, Dataset):
            raise ValueError(f"objective.data must be a data set (data=digits ...), got {data!r}")
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.hidden_dims = _hidden_dims(hidden_dim, hidden_dims)
        self.activation = check_activation(activation)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.enumerate_limit = int(enumerate_limit)
        self.reference_samples = _positive_int("reference_samples", reference_samples)
        if not isinstance(learn_prior, bool):
            raise ValueError(f"objective.learn_prior must be true or false, got {learn_prior!r}")
        self.learn_prior = learn_prior
        self.data = data.to(device, dtype)
        generator = torch.Generator().manual_seed(int(init_seed))
        d, hidden = self.data.dim, self.hidden_dims
        self.encoder = MLP([d, *hidden, self.theta_dim], generator, device, dtype, activation)
        self.decoder = MLP(
            [self.latent_dim, *reversed(hidden), d], generator, device, dtype, activation
        )
        self._init_prior(device, dtype)
        load_checkpoint(self, checkpoint, device)
        self.true_grad_method = self._choose_true_grad(true_grad)
        # Per-replicate decoder copies while measuring; None means the module's own.
        self._decoder_params: dict[str, Tensor] | None = None
        # The measured minibatch: the first batch_size training images (a dynamically
        # binarised set gets one fixed draw), so every estimator sees the same batch.
        fixed = torch.Generator().manual_seed(0)
        n = min(self.batch_size, len(self.data.train))
        self.x = self.data.batch(torch.arange(n, device=self.data.train.device), fixed)
        self.fixed_x = self.x

    # -- the latent family (subclasses) -------------------------------------------------
    @property
    def theta_dim(self) -> int:
        raise NotImplementedError

    def distribution(self, theta: Tensor) -> Distribution:
        raise NotImplementedError

    def kl(self, theta: Tensor) -> Tensor:
        """KL(q_θ ‖ prior) per data point, [*batch]."""
        raise NotImplementedError

    def _choose_true_grad(self, setting: str) -> str:
        raise NotImplementedError

    def _init_prior(self, device, dtype) -> None:
        """Make the prior's parameters, if it has any (called before loading a checkpoint)."""
        if self.learn_prior:
            raise ValueError(
                f"objective.learn_prior applies to vae_bernoulli only, not {self.name}"
            )

    def prior(self) -> Distribution:
        """p(z), a distribution over [L] (batch shape [])."""
        raise NotImplementedError

    # -- the estimator contract ---------------------------------------------------------
    @property
    def baseline_inputs(self) -> Tensor:
        """The current minibatch [B, D]: what an input-dependent baseline b(x) sees."""
        return self.x

    @property
    def theta(self) -> Tensor:
        """Encoder output for the current minibatch, detached, [B, D_θ]."""
        with torch.no_grad():
            return self.encoder(self.x)

    def cost(self, z: Tensor) -> Tensor:
        """−log p(x | z) for the current batch x [B, D]: z [..., B, L] -> [..., B]."""
        logits = self.decoder(z, self._decoder_params)  # [..., B, D]
        # −log Bernoulli(x; sigmoid(l)) = softplus(l) − x·l, summed over pixels.
        return (F.softplus(logits) - self.x * logits).sum(-1)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x, z) = log p(x | z) + log p(z) for the current batch x [B, D]:
        z [..., B, L] -> [..., B] (the ``estimators.ImportanceWeightedObjective`` contract)."""
        return self.prior().log_prob(z) - self.cost(z)

    # -- training and measurement -------------------------------------------------------
    def measure_batch(self) -> None:
        """Go back to the fixed minibatch on which variances are measured."""
        self.x = self.fixed_x

    def batch_loss(self, n_samples: int, k: int = 1) -> Tensor:
        """Minibatch −L_K, −ELBO at K = 1 (exact where the latents enumerate, else the
        mean of n_samples estimates)."""
        if k == 1:
            return self._elbo_terms(n_samples).mean()
        return -self._bound_terms(n_samples, k).mean()

    def next_batch(self, generator: torch.Generator) -> None:
        """Draw a fresh training minibatch (uniformly, without replacement)."""
        n = len(self.data.train)
        index = torch.randperm(n, generator=generator)[: min(self.batch_size, n)]
        self.x = self.data.batch(index.to(self.data.train.device), generator)

    def loss(self, estimator, n_samples: int) -> Tensor:
        """Minibatch −ELBO (−L_K for a multi-sample estimator) whose gradient w.r.t. every
        parameter is one estimate."""
        theta = self.encoder(self.x)
        surrogate = estimator.surrogate(self, theta, n_samples).mean(0)  # [B]
        if not estimator.importance_weighted:
            surrogate = surrogate + self.kl(theta)
        return surrogate.mean()

    def replicate_gradients(self, estimator, n_samples: int, replicates: int) -> dict[str, Tensor]:
        """``replicates`` independent gradient estimates of the minibatch loss, batched.

        θ (the encoder output) is copied once per replicate, as in
        ``estimators.replicate_gradients``, and so are the decoder's weights, so one
        backward pass gives each replicate's θ-gradient and decoder gradient. Each
        encoder-weight gradient is then the vector–Jacobian product of the encoder with
        that replicate's θ-gradient: one ``vmap`` over ``vjp``, with the encoder's forward
        pass done once for all replicates.

        Returns:
            ``{"encoder": [R, P_enc], "decoder": [R, P_dec]}``.
        """
        params = {k: v.detach() for k, v in self.encoder.named_parameters()}
        theta, encoder_vjp = torch.func.vjp(
            lambda p: torch.func.functional_call(self.encoder, (p,), (self.x,)), params
        )
        theta = theta.detach()
        copies = theta.expand(replicates, *theta.shape).clone().requires_grad_(True)
        decoder = self.decoder.replicated(replicates)
        batch = theta.shape[0]
        self._decoder_params = decoder
        try:
            surrogate = estimator.surrogate(self, copies, n_samples)  # [m, R, B]
            loss = surrogate.mean(0).sum() / batch
            grads = torch.autograd.grad(loss, [copies, *decoder.values()])
        finally:
            self._decoder_params = None
        theta_grad = grads[0]  # [R, B, D_θ]
        if not estimator.importance_weighted:  # −L_K's surrogate holds the KL already
            theta_grad = theta_grad + self._kl_theta_grad(theta)
        (encoder_grads,) = torch.func.vmap(encoder_vjp)(theta_grad)
        return {
            "encoder": flat(encoder_grads.values(), replicates),
            "decoder": flat(grads[1:], replicates),
        }

    def _kl_theta_grad(self, theta: Tensor) -> Tensor:
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.kl(theta).sum() / theta.shape[0], theta)
        return grad

    def group_parameters(self) -> dict[str, list[Tensor]]:
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": list(self.decoder.parameters()),
        }

    def exact_loss(self, x: Tensor, k: int = 1) -> Tensor:
        """−L_K per data point of x [B, D] (−ELBO at K = 1), exact, [B]."""
        raise NotImplementedError

    def exact_gradient(self, k: int = 1) -> dict[str, Tensor]:
        """The exact gradient of the minibatch loss −L_K (−ELBO at K = 1) per group,
        ``{group: [P_group]}``."""
        groups = self.group_parameters()
        params = [p for ps in groups.values() for p in ps]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.exact_loss(self.x, k).mean(), params)
        out, start = {}, 0
        for name, ps in groups.items():
            out[name] = flat(grads[start : start + len(ps)]).detach()
            start += len(ps)
        return out

    @torch.no_grad()
    def elbo(self, split: str = "test", n_samples: int = 16) -> float:
        """Mean ELBO per data point on ``split`` (exact where the latents enumerate)."""
        x = self.data.test if split == "test" else self.data.train
        saved = self.x
        try:
            values = []
            for start in range(0, len(x), 512):
                self.x = x[start : start + 512]
                values.append(-self._elbo_terms(n_samples))
            return float(torch.cat(values).mean())
        finally:
            self.x = saved

    def _elbo_terms(self, n_samples: int) -> Tensor:
        """−ELBO per data point of the current batch, [B]: MC over q unless overridden."""
        theta = self.encoder(self.x)
        z = self.distribution(theta).sample((n_samples,))
        return self.cost(z).mean(0) + self.kl(theta)

    def log_weights(self, z: Tensor) -> Tensor:
        """Importance log-weights log p(x, z) − log q(z | x) for the current batch x [B, D]:
        z [..., B, L] -> [..., B]."""
        return self.log_joint(z) - self.distribution(self.encoder(self.x)).log_prob(z)

    def _bound_terms(self, n_samples: int, k: int) -> Tensor:
        """L_K per data point of the current batch, [B]: the mean of ``n_samples``
        estimates from k fresh draws each (exact where the latents enumerate)."""
        z = self.distribution(self.encoder(self.x)).sample((k, n_samples))  # [k, n, B, L]
        return (torch.logsumexp(self.log_weights(z), dim=0) - math.log(k)).mean(0)

    def iwae_terms(self, k: int) -> Tensor:
        """The importance-weighted bound per data point of the current batch from ``k``
        fresh draws z_i ~ q(z | x), [B]:

            L_k(x) = log (1/k) Σ_i p(x, z_i) / q(z_i | x)   (Burda et al. 2016, eq. 8).

        Its expectation is ≤ log p(x), ≥ the ELBO (k = 1) and grows with k.
        """
        z = self.distribution(self.encoder(self.x)).sample((k,))  # [k, B, L]
        return torch.logsumexp(self.log_weights(z), dim=0) - math.log(k)

    @torch.no_grad()
    def iwae(self, split: str = "test", k: int = 100) -> float:
        """Mean importance-weighted bound ``iwae_terms(k)`` on ``split``: the literature's
        held-out log-likelihood estimate. Batched so that k × batch stays near 2^15 rows."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"task.iwae_k must be a positive integer, got {k!r}")
        x = self.data.test if split == "test" else self.data.train
        saved = self.x
        chunk = max(1, 2**15 // k)
        try:
            values = []
            for start in range(0, len(x), chunk):
                self.x = x[start : start + chunk]
                values.append(self.iwae_terms(k))
            return float(torch.cat(values).mean())
        finally:
            self.x = saved

    # -- pictures -----------------------------------------------------------------------
    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> Tensor:
        """The decoder's pixel probabilities, z [N, L] -> [N, D]."""
        return torch.sigmoid(self.decoder(z.to(self.data.test.device, self.data.test.dtype)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at a code of each image x [N, D] (see ``code``), [N, D]."""
        return self.decode_mean(self.code(self.encoder(x)))

    def code(self, theta: Tensor) -> Tensor:
        """The latent a reconstruction decodes, from q's parameters θ [N, D_θ]."""
        raise NotImplementedError

    def write_pictures(self, folder, n_images: int = 50, n_samples: int = 64) -> dict:
        """``samples.png``, ``reconstructions.png`` and, for two Gaussian latents,
        ``manifold.png`` (``benchmarks.pictures.write_vae_pictures``) in ``folder``.

        The prior draws come from a fixed seed, so pictures of runs compare draw for draw.
        """
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            draws = self.prior().sample((n_samples,))
            test = self.data.test[:n_images]
            return write_vae_pictures(
                folder,
                decode_mean=self.decode_mean,
                prior_draws=draws,
                test_images=test,
                reconstructions=self.reconstruct(test),
                image_shape=self.data.image_shape,
                gaussian_prior=self.gaussian_latents,
            )


class BernoulliVAE(VAE):
    """VAE with L binary latents (sigmoid belief layer) and a Bernoulli(½)^L prior.

    θ [B, L] are the logits of q(z | x). ``relaxed_cost`` evaluates the decoder at relaxed
    latents y ∈ [0, 1]^L, for the Concrete / straight-through estimators.
    """

    name = "vae_bernoulli"
    cost_is_differentiable = False

    @property
    def theta_dim(self) -> int:
        return self.latent_dim

    def distribution(self, theta):
        return Independent(Bernoulli(logits=theta), 1)

    def relaxed_cost(self, y: Tensor) -> Tensor:
        """−log p(x | y) with the decoder applied to y ∈ [0, 1]^L: y [..., B, L] -> [..., B]."""
        return self.cost(y)

    def _init_prior(self, device, dtype):
        # Learned prior logits start at 0, the Bernoulli(½) prior; a fixed prior keeps no
        # tensor, so checkpoints of either kind hold exactly their model's weights.
        if self.learn_prior:
            self.prior_logits = nn.Parameter(
                torch.zeros(self.latent_dim, device=device, dtype=dtype)
            )
        else:
            self.prior_logits = None

    def prior(self):
        logits = self.prior_logits
        if logits is None:
            logits = torch.zeros(self.latent_dim, device=self.x.device, dtype=self.x.dtype)
        return Independent(Bernoulli(logits=logits), 1)

    def kl(self, theta):
        # KL(Bern(q) ‖ Bern(p)) = q (log q − log p) + (1−q)(log(1−q) − log(1−p)), with
        # log sigmoid(θ) = −softplus(−θ); for p = ½ the prior terms are log 2 each.
        q = torch.sigmoid(theta)
        log_q, log_1mq = -F.softplus(-theta), -F.softplus(theta)
        if self.prior_logits is None:
            return (q * log_q + (1 - q) * log_1mq + math.log(2.0)).sum(-1)
        eta = self.prior_logits
        log_p, log_1mp = -F.softplus(-eta), -F.softplus(eta)
        return (q * (log_q - log_p) + (1 - q) * (log_1mq - log_1mp)).sum(-1)

    def code(self, theta):
        # The most probable latent state under q: decoding it shows what the code holds.
        return (theta > 0).to(theta.dtype)

    def log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) = log Σ_z p(x | z) p(z) by summing over all 2^L latent states, [B]."""
        saved = self.x
        self.x = x
        try:
            states = self.states().unsqueeze(1).expand(-1, len(x), -1)  # [2^L, B, L]
            return torch.logsumexp(-self.cost(states) + self.prior().log_prob(states), dim=0)
        finally:
            self.x = saved

    def _choose_true_grad(self, setting):
        ok = self.latent_dim <= self.enumerate_limit
        reason = (
            f"enumerating 2^{self.latent_dim} latent states needs latent_dim <= "
            f"objective.enumerate_limit ({self.enumerate_limit})"
        )
        # No estimator is exact beyond the limit; a noisy reference would pass for truth.
        return choose_true_grad(setting, ok, reason, fallback="none")

    def states(self) -> Tensor:
        """All 2^L latent states, [2^L, L]."""
        return binary_states(self.latent_dim, self.x.device, self.x.dtype)

    def exact_loss(self, x, k=1):
        """−L_K per data point (−ELBO at K = 1) by summing over all 2^L latent states, [B].

        K = 1 sums q(z) cost(z) and adds the analytic KL; K > 1 is ``enumerated_bound``.
        """
        saved = self.x
        self.x = x
        try:
            theta = self.encoder(x)
            states = self.states().unsqueeze(1).expand(-1, len(x), -1)  # [2^L, B, L]
            log_q = self.distribution(theta).log_prob(states)  # [2^L, B]
            if k == 1:
                return (log_q.exp() * self.cost(states)).sum(0) + self.kl(theta)
            return -enumerated_bound(self.log_joint(states).T, log_q.T, k)
        finally:
            self.x = saved

    def _elbo_terms(self, n_samples):
        if self.latent_dim <= self.enumerate_limit:
            return self.exact_loss(self.x)
        return super()._elbo_terms(n_samples)

    def _bound_terms(self, n_samples, k):
        if self.latent_dim <= self.enumerate_limit:
            return -self.exact_loss(self.x, k)
        return super()._bound_terms(n_samples, k)


class GaussianVAE(VAE):
    """VAE with L Gaussian latents, q = N(μ, diag σ²), prior N(0, I).

    θ [B, 2L] = (μ, log σ): the last dimension holds the means, then the log-scales.
    """

    name = "vae_gaussian"
    gaussian_latents = True

    @property
    def theta_dim(self) -> int:
        return 2 * self.latent_dim

    def distribution(self, theta):
        mean, log_scale = theta.split(self.latent_dim, dim=-1)
        return Independent(Normal(mean, log_scale.exp()), 1)

    def kl(self, theta):
        return kl_to_standard_normal(*theta.split(self.latent_dim, dim=-1))

    def prior(self):
        zeros = torch.zeros(self.latent_dim, device=self.x.device, dtype=self.x.dtype)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def code(self, theta):
        return theta[..., : self.latent_dim]  # the posterior mean μ

    def _choose_true_grad(self, setting):
        return choose_true_grad(
            setting,
            False,
            "vae_gaussian has no exact gradient; use true_grad=reference (reparam, many samples)",
            fallback="reference",
        )
