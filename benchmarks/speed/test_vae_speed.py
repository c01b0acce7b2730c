"""A ``task=train`` step of the full-size Gaussian VAE against a plain torch step.

    train step vae_gaussian_full N=n   ``library``: what ``benchmarks.train`` times per step
                                       (fresh minibatch, ``objective.loss`` with the
                                       ``reparam`` estimator, backward, Adam);
                                       ``plain``: the same model (784-400-20, ReLU, Bernoulli
                                       pixels, analytic KL) written as PyTorch's VAE example
                                       writes it, ``nn.Linear`` layers and a hand-written
                                       loss, with the same Adam step

Batch 100, n_samples 1 and 10. The summary lists ``train / plain`` against its target
(``<= 1.3``). The pixels are synthetic (784 binary values from a random sigmoid belief
net): a step's cost does not depend on which binary images it sees.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.objectives.data import synthetic
from benchmarks.objectives.vae import GaussianVAE
from benchmarks.speed.cases import make_estimator, synchronized
from benchmarks.speed.conftest import DEVICE

PIXELS, HIDDEN, LATENT, BATCH = 784, 400, 20, 100
CASES = [(n, side) for n in (1, 10) for side in ("library", "plain")]


class PlainVAE(nn.Module):
    """784-400-20 with ReLU, as in PyTorch's ``examples/vae``, without the library."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, 2 * LATENT)
        self.fc3 = nn.Linear(LATENT, HIDDEN)
        self.fc4 = nn.Linear(HIDDEN, PIXELS)

    def loss(self, x, n_samples):
        mean, log_scale = self.fc2(torch.relu(self.fc1(x))).chunk(2, dim=-1)
        eps = torch.randn(n_samples, *mean.shape, device=x.device)
        z = mean + eps * log_scale.exp()
        logits = self.fc4(torch.relu(self.fc3(z)))
        reconstruction = F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        kl = 0.5 * (mean**2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum(-1)
        return (reconstruction.mean(0) + kl).mean()


@pytest.mark.parametrize(("n_samples", "side"), CASES, ids=[f"N{n}-{s}" for n, s in CASES])
def test_train_step(benchmark, n_samples, side):
    benchmark.group = f"train step vae_gaussian_full N={n_samples}"
    benchmark.extra_info.update(
        toy="vae_gaussian_full", estimator="reparam", role=side, comparison="train / plain",
        size=f"B={BATCH} N={n_samples}",
    )  # fmt: skip
    data = synthetic(n_train=4500, n_test=10, dim=PIXELS)
    generator = torch.Generator().manual_seed(0)
    if side == "library":
        model = GaussianVAE(
            data, latent_dim=LATENT, hidden_dims=[HIDDEN], activation="relu",
            batch_size=BATCH, true_grad="none", device=DEVICE,
        )  # fmt: skip
        estimator = make_estimator("reparam")

        def loss():
            model.next_batch(generator)
            return model.loss(estimator, n_samples)
    else:
        model = PlainVAE().to(DEVICE)
        train = data.train.to(DEVICE)

        def loss():
            index = torch.randperm(len(train), generator=generator)[:BATCH]
            return model.loss(train[index.to(DEVICE)], n_samples)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
        return value

    for _ in range(3):  # Adam's state and the allocator warmed before timing
        step()
    value = benchmark(synchronized(step, DEVICE))
    assert torch.isfinite(value)
