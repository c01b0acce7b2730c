"""The full-size VAEs: configurable depth, width and activation, learned Bernoulli priors,
the held-out importance-weighted bound, and the pictures a training run writes.

The models are built at tiny sizes on synthetic data; the sizes of the papers differ
only in the numbers (their configs are built by the config tests here, on data=digits).
"""

import math

import pandas as pd
import pytest
import torch
from hydra import compose

from benchmarks.cli import main
from benchmarks.config import ConfigError, build, build_cell
from benchmarks.objectives.data import synthetic
from benchmarks.objectives.vae import BernoulliVAE, GaussianVAE
from benchmarks.pictures import MANIFOLD, RECONSTRUCTIONS, SAMPLES
from benchmarks.settings import TrainSettings
from tests.stats import mean_z, power_margin, rate, z_threshold

F64 = {"dtype": torch.float64}


def widths(mlp):
    return [w.shape[0] for w in mlp.weights] + [mlp.weights[-1].shape[1]]


# -- configs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective, encoder, decoder",
    [
        ("vae_gaussian_full", [64, 400, 40], [20, 400, 64]),
        ("vae_sbn_linear", [64, 200], [200, 64]),
        ("vae_sbn_nonlinear", [64, 200, 200, 200], [200, 200, 200, 64]),
    ],
)
def test_paper_architectures_build_with_their_widths(hydra_conf, objective, encoder, decoder):
    _, model = build(compose("config", overrides=[f"objective={objective}", "data=digits"]))
    assert widths(model.encoder) == encoder
    assert widths(model.decoder) == decoder


def test_every_new_setting_instantiates(hydra_conf):
    overrides = [
        "objective=vae_bernoulli", "data=synthetic", "objective.hidden_dims=[5,3]",
        "objective.activation=leaky_relu", "objective.learn_prior=true", "task=train",
        "task.iwae_k=7",
    ]  # fmt: skip
    cell = build_cell(compose("config", overrides=overrides))
    assert widths(cell.objective.encoder) == [16, 5, 3, 8]
    assert widths(cell.objective.decoder) == [8, 3, 5, 16]
    assert cell.objective.prior_logits.shape == (8,)
    assert "prior_logits" in dict(cell.objective.named_parameters())
    assert cell.task.iwae_k == 7
    for activation in ("tanh", "relu"):
        cfg = compose("config", overrides=["objective=vae_gaussian", "data=synthetic",
                                           f"objective.activation={activation}"])  # fmt: skip
        assert build(cfg)[1].activation == activation


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective=vae_gaussian", "objective.activation=sigmoid"], "objective.activation"),
        (["objective=vae_gaussian", "objective.hidden_dims=[4,0]"], "objective.hidden_dims"),
        (["objective=vae_bernoulli", "objective.hidden_dims=4"], "objective.hidden_dims"),
        (["objective=vae_gaussian", "+objective.learn_prior=true"], "objective.learn_prior"),
        (["objective=vae_bernoulli", "objective.learn_prior=2"], "objective.learn_prior"),
        (["objective=vae_gaussian", "task=train", "task.iwae_k=0"], "task.iwae_k"),
    ],
)
def test_bad_new_settings_are_one_line_errors_naming_the_key(hydra_conf, overrides, message):
    cfg = compose("config", overrides=["data=synthetic", *overrides])
    with pytest.raises(ConfigError, match=message) as error:
        build_cell(cfg)
    assert "\n" not in str(error.value)


def test_hidden_dim_is_shorthand_for_one_hidden_layer():
    data = synthetic()
    one = GaussianVAE(data, latent_dim=3, hidden_dim=6, **F64)
    listed = GaussianVAE(data, latent_dim=3, hidden_dim=99, hidden_dims=[6], **F64)
    for a, b in zip(one.state_dict().values(), listed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_linear_sbn_is_linear_in_its_input():
    vae = BernoulliVAE(synthetic(), latent_dim=4, hidden_dims=[], **F64)
    x = torch.rand(3, 16, dtype=torch.float64)
    bias = vae.encoder(torch.zeros(1, 16, dtype=torch.float64))
    assert torch.allclose(vae.encoder(2 * x) - bias, 2 * (vae.encoder(x) - bias))


def test_learned_prior_at_zero_is_the_fixed_prior_and_gets_a_gradient():
    data = synthetic()
    fixed = BernoulliVAE(data, latent_dim=3, hidden_dim=5, **F64)
    learned = BernoulliVAE(data, latent_dim=3, hidden_dim=5, learn_prior=True, **F64)
    theta = fixed.theta
    assert torch.allclose(learned.kl(theta), fixed.kl(theta))
    # KL against Bernoulli(p) by its definition, at non-zero prior logits.
    with torch.no_grad():
        learned.prior_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    q, p = torch.sigmoid(theta), torch.sigmoid(learned.prior_logits)
    kl = (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).sum(-1)
    assert torch.allclose(learned.kl(theta), kl)
    (grad,) = torch.autograd.grad(learned.batch_loss(1), [learned.prior_logits])
    assert grad.abs().min() > 0
    # Exact −ELBO = E_q[−log p(x|z) − log p(z) + log q(z|x)], by enumeration.
    states = learned.states().unsqueeze(1).expand(-1, len(learned.x), -1)
    with torch.no_grad():
        log_q = learned.distribution(theta).log_prob(states)
        direct = -(log_q.exp() * learned.log_weights(states)).sum(0)
        assert torch.allclose(learned.exact_loss(learned.x), direct)


# -- the importance-weighted bound ------------------------------------------------------


def tiny_bernoulli_vae():
    """Three latent bits: log p(x) and L_K (K ≤ 3) enumerate exactly."""
    data = synthetic(n_test=6, dim=6)
    vae = BernoulliVAE(data, latent_dim=3, hidden_dim=5, init_seed=1, **F64)
    vae.x = vae.data.test  # on the model's dtype
    return vae


@torch.no_grad()
def exact_iwae(vae, k):
    """L_K per data point by summing over all (2^L)^K tuples of latent states, [B]."""
    states = vae.states().unsqueeze(1).expand(-1, len(vae.x), -1)  # [S, B, L]
    log_w = vae.log_weights(states)  # [S, B]
    log_q = vae.distribution(vae.encoder(vae.x)).log_prob(states)  # [S, B]
    tuples = torch.cartesian_prod(*[torch.arange(len(states))] * k).reshape(-1, k)  # [S^K, K]
    bound = torch.logsumexp(log_w[tuples], dim=1) - math.log(k)  # [S^K, B]
    return (log_q[tuples].sum(1).exp() * bound).sum(0)


def test_exact_bounds_rise_with_k_from_the_elbo_to_log_p_x():
    vae = tiny_bernoulli_vae()
    with torch.no_grad():
        bounds = [exact_iwae(vae, k) for k in (1, 2, 3)]
        log_p = vae.log_marginal(vae.x)
        elbo = -vae.exact_loss(vae.x)
    assert torch.allclose(bounds[0], elbo)
    assert (bounds[1] > bounds[0]).all() and (bounds[2] > bounds[1]).all()
    assert (log_p > bounds[2]).all()


def test_iwae_is_at_least_the_elbo_of_the_same_draws():
    vae = tiny_bernoulli_vae()
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            bound = vae.iwae_terms(10)
        torch.manual_seed(seed)
        with torch.no_grad():
            z = vae.distribution(vae.encoder(vae.x)).sample((10,))
            elbo = vae.log_weights(z).mean(0)
        assert (bound >= elbo).all() and (bound > elbo).any()


def test_iwae_estimate_is_unbiased_for_its_exact_bound():
    """z-test of the Monte Carlo L_3 against L_3 by enumeration, per data point; the
    negative control (the mean log-weight, an ELBO estimate) must be rejected."""
    vae = tiny_bernoulli_vae()
    with torch.no_grad():
        exact = exact_iwae(vae, 3)
        elbo = exact_iwae(vae, 1)
        torch.manual_seed(0)
        replicates, n = 10000, len(vae.x)
        vae.x = vae.x.repeat(replicates, 1)  # every test point, replicates times, one pass
        draws = vae.iwae_terms(3).reshape(replicates, n)
        z = vae.distribution(vae.encoder(vae.x)).sample()
        elbos = vae.log_weights(z).reshape(replicates, n)  # single-draw ELBO estimates
    threshold = z_threshold(rate("models: held-out IWAE bound unbiased for its exact L_K"), n)
    assert mean_z(draws, exact).abs().max() < threshold
    # Power: the expected |z| of the ELBO's gap lies above the threshold by the margin.
    miss = rate("miss: models: the ELBO is rejected as an estimate of L_K")
    control = z_threshold(miss, n)
    gap = (exact - elbo) / (elbos.var(0) / replicates).sqrt()
    assert gap.max() > control + power_margin(miss)
    assert mean_z(elbos, exact).abs().max() > control


def test_iwae_approaches_log_p_x_for_large_k():
    """At K = 5000 the bound lies within 0.02 nats of the exact log p(x): the gap
    log p(x) − L_K is about Var(w)/(2K p(x)²) (Burda et al. 2016) and the Monte Carlo error
    (fixed seed) is of the same order, both far below the tolerance here."""
    vae = tiny_bernoulli_vae()
    torch.manual_seed(0)
    with torch.no_grad():
        log_p = vae.log_marginal(vae.x)
        small = vae.iwae_terms(1)
        large = vae.iwae_terms(5000)
    assert (log_p - large).abs().max() < 0.02
    assert (log_p - small).abs().mean() > 10 * (log_p - large).abs().mean()
    assert vae.iwae("test", 5000) == pytest.approx(float(log_p.mean()), abs=0.02)


# -- training writes the bound and the pictures -----------------------------------------


@pytest.mark.parametrize(
    "overrides, pictures",
    [
        (["objective=vae_gaussian", "estimator=reparam", "objective.latent_dim=2"],
         {SAMPLES, RECONSTRUCTIONS, MANIFOLD}),
        (["objective=vae_gaussian", "estimator=reparam", "objective.latent_dim=3"],
         {SAMPLES, RECONSTRUCTIONS}),
        (["objective=vae_bernoulli", "estimator=reinforce_loo", "objective.latent_dim=2"],
         {SAMPLES, RECONSTRUCTIONS}),
    ],
)  # fmt: skip
def test_training_a_vae_writes_the_iwae_column_and_its_pictures(tmp_path, overrides, pictures):
    out = tmp_path / "run"
    code = main([
        "run", *overrides, "task=train", "data=synthetic", "objective.hidden_dims=[8]",
        "task.steps=4", "task.eval_every=2", "task.iwae_k=5", "replicates=4", "n_samples=2",
        "objective.true_grad=none", f"hydra.run.dir={out}",
    ])  # fmt: skip
    assert code == 0
    log = pd.read_parquet(out / "train.parquet")
    evaluated = log.dropna(subset=["heldout_elbo"])
    assert list(evaluated["step"]) == [0, 2, 4]
    assert evaluated["heldout_iwae"].notna().all()
    assert log["heldout_iwae"].isna().sum() == len(log) - 3
    assert {p.name for p in out.glob("*.png")} == pictures
    for name in pictures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_refuse_a_bad_iwae_k():
    with pytest.raises(ConfigError, match="task.iwae_k"):
        TrainSettings(n_samples=1, replicates=2, iwae_k=0)
