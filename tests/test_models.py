"""Models (VAEs, Bayesian logistic regression), their data, and task=train.

Statistical tests run in float64 with fixed seeds; each states its false-fail rate (the
chance, over seeds, that it fails a correct implementation), Bonferroni over coordinates.
"""

import gzip
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra

from benchmarks.cli import main
from benchmarks.config import build
from benchmarks.measure_model import (
    Moments,
    measure_model_variance,
    replicate_moments,
    true_gradient,
)
from benchmarks.objectives import GaussianQuadratic
from benchmarks.objectives.bayes_logreg import BayesLogReg
from benchmarks.objectives.data import digits, mnist, synthetic, write_idx
from benchmarks.objectives.vae import BernoulliVAE, GaussianVAE
from estimators import (
    DisARM,
    Estimator,
    GumbelSoftmax,
    Learned,
    LeaveOneOut,
    NotApplicable,
    Reinforce,
    Reparameterization,
    estimate_gradient,
)
from tests.stats import power_margin, rate, z_threshold

F64 = {"dtype": torch.float64}
MODELS = ("vae_bernoulli", "vae_gaussian", "bayes_logreg")
SMALL = ["data=synthetic", "objective.latent_dim=3", "objective.hidden_dim=8",
         "objective.batch_size=4", "dtype=float64"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny and latency-bound: a second torch thread only adds
    # synchronisation. Results do not depend on it.
    torch.set_num_threads(1)


def tiny_bernoulli_vae(**kwargs):
    data = synthetic(n_train=32, n_test=16, dim=6, seed=1)
    sizes = {"latent_dim": 3, "hidden_dim": 4, "batch_size": 4, **kwargs}
    return BernoulliVAE(data, **sizes, **F64)


# -- shapes and configs -----------------------------------------------------------------


def test_every_model_and_estimator_composes_and_gives_gradients_of_the_right_shape(hydra_conf):
    loader = GlobalHydra.instance().config_loader()
    names = sorted(loader.get_group_options("estimator"))
    assert set(MODELS) <= set(loader.get_group_options("objective"))
    # Composing is the slow part: one config per estimator and one per model, then every
    # pair is built from them.
    estimators = {n: compose("config", overrides=[f"estimator={n}"]).estimator for n in names}
    for model in MODELS:
        overrides = [f"objective={model}", *SMALL]
        if model == "bayes_logreg":
            overrides = [o for o in overrides if not o.startswith("objective.")]
        cfg = compose("config", overrides=overrides)
        for name, node in estimators.items():
            cfg.estimator = node
            estimator, objective = build(cfg)
            assert isinstance(estimator, Estimator)
            try:
                estimator.check(objective, objective.theta, 4)
            except NotApplicable as reason:
                assert str(reason) and "\n" not in str(reason)
                continue
            torch.manual_seed(0)
            grads = objective.replicate_gradients(estimator, 4, 3)
            assert set(grads) == set(objective.param_groups)
            sizes = {g: sum(p.numel() for p in ps) for g, ps in _groups(objective).items()}
            for group, g in grads.items():
                assert g.shape == (3, sizes[group]), (model, name, group)
                assert g.dtype == torch.float64 and torch.isfinite(g).all(), (model, name)


def _groups(objective):
    if isinstance(objective, BayesLogReg):
        return {"mean": [objective.variational[: objective.dim]],
                "log_scale": [objective.variational[objective.dim :]]}  # fmt: skip
    return objective.group_parameters()


def test_reparam_applies_to_gaussian_models_only(hydra_conf):
    for model, applies in (("vae_gaussian", True), ("bayes_logreg", True),
                           ("vae_bernoulli", False)):  # fmt: skip
        _, objective = build(compose("config", overrides=[f"objective={model}"]))
        try:
            Reparameterization().check(objective, objective.theta, 2)
            assert applies, model
        except NotApplicable:
            assert not applies, model


@pytest.mark.parametrize("model", [BernoulliVAE, GaussianVAE])
@pytest.mark.parametrize("estimator", [Reinforce(), Reparameterization()])
def test_one_batched_replicate_equals_the_training_gradient(model, estimator):
    """Same random numbers: replicate_gradients (θ copies, decoder copies, vmap of the
    encoder's vjp) gives exactly the gradient that backward() on the loss gives."""
    data = synthetic(n_train=32, n_test=8, dim=6, seed=2)
    vae = model(data, latent_dim=3, hidden_dim=5, batch_size=4, **F64)
    if model is BernoulliVAE and isinstance(estimator, Reparameterization):
        pytest.skip("reparam does not apply to Bernoulli latents")
    torch.manual_seed(3)
    batched = vae.replicate_gradients(estimator, 5, 1)
    torch.manual_seed(3)
    vae.zero_grad()
    vae.loss(estimator, 5).backward()
    for group, params in vae.group_parameters().items():
        expected = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(batched[group][0], expected, rtol=1e-10, atol=1e-12)


def test_exact_gradient_by_enumeration_is_refused_beyond_the_limit():
    data = synthetic(n_train=8, n_test=4, dim=6)
    with pytest.raises(ValueError, match="enumerate_limit"):
        BernoulliVAE(data, latent_dim=5, enumerate_limit=4, true_grad="exact")
    assert BernoulliVAE(data, latent_dim=5, enumerate_limit=4).true_grad_method == "none"
    with pytest.raises(ValueError, match="no exact gradient"):
        GaussianVAE(data, true_grad="exact")


def test_chunked_moments_equal_the_moments_of_all_replicates():
    grads = torch.randn(50, 7, **F64) * 3 + 10
    moments = Moments()
    for chunk in grads.split([1, 20, 4, 25]):
        moments.add(chunk)
    torch.testing.assert_close(moments.mean, grads.mean(0))
    torch.testing.assert_close(moments.var, grads.var(0))


# -- unbiasedness against enumeration ---------------------------------------------------

# Per estimator (four of them), Bonferroni over the model's coordinates.
FALSE_FAIL = rate("models: unbiased against enumeration") / 5


def _z_scores(estimator, vae, n_samples, replicates, seed):
    torch.manual_seed(seed)
    moments, _ = replicate_moments(estimator, vae, n_samples, replicates)
    exact = vae.exact_gradient()
    z = []
    for group, m in moments.items():
        se = (m.var / m.count).sqrt()
        diff = m.mean - exact[group]
        keep = se > 0  # coordinates with no gradient at all (e.g. unused inputs)
        assert diff[~keep].abs().sum() < 1e-12
        z.append(diff[keep] / se[keep])
    return torch.cat(z)


class Scaled(Estimator):
    """Negative control: an unbiased estimator whose θ-gradient is 10% too large."""

    def __init__(self, inner, scale):
        self.inner, self.scale = inner, scale

    def check(self, objective, theta, n_samples):
        self.inner.check(objective, theta, n_samples)

    def surrogate(self, objective, theta, n_samples):
        scaled = theta.detach() + self.scale * (theta - theta.detach())
        return self.inner.surrogate(objective, scaled, n_samples)


@pytest.mark.parametrize(
    "estimator",
    [
        Reinforce(),
        Reinforce(LeaveOneOut()),
        DisARM(),
        Reinforce(Learned()),
        Reinforce(Learned(inputs="x")),
    ],
    ids=["reinforce", "loo", "disarm", "learned", "learned_on_x"],
)
def test_unbiased_against_enumeration_on_a_tiny_bernoulli_vae(estimator):
    vae = tiny_bernoulli_vae()
    z = _z_scores(estimator, vae, n_samples=4, replicates=4000, seed=11)
    rate_logreg = rate("models: Bayesian logistic regression quadrature gradient")
    assert z.abs().max() < z_threshold(rate_logreg, len(z)), float(z.abs().max())


def test_negative_controls_fail_the_same_test():
    """The test has teeth: 10% too much encoder gradient, and the Concrete relaxation at a
    high temperature (biased), are both rejected."""
    vae = tiny_bernoulli_vae()
    margin = power_margin(rate("miss: models: scaled and relaxed estimators rejected") / 2)
    for biased in (Scaled(Reinforce(LeaveOneOut()), 1.1), GumbelSoftmax(temperature=2.0)):
        z = _z_scores(biased, vae, n_samples=4, replicates=4000, seed=12)
        threshold = z_threshold(FALSE_FAIL, len(z))
        # Power, judged from this draw: the largest |z| (an estimate of its expectation, with
        # standard error 1) lies above the threshold by the margin and one more for its noise.
        assert z.abs().max() > threshold + margin + 1, type(biased).__name__


def test_group_rows_report_bias_against_enumeration():
    vae = tiny_bernoulli_vae()
    rows = {}
    for name, estimator in (("loo", Reinforce(LeaveOneOut())), ("gumbel", GumbelSoftmax(2.0))):
        frame = measure_model_variance(
            estimator, vae, estimator_name=name, objective_name="vae_bernoulli", n_samples=4,
            replicates=2000, seed=5, warmup_steps=0, timing_min_run_time=0.001,
        )  # fmt: skip
        assert list(frame["param"]) == ["encoder", "decoder", "all"]
        assert (frame["status"] == "ok").all() and (frame["true_grad_method"] == "exact").all()
        rows[name] = frame.set_index("param").loc["encoder"]
    # chi² per coordinate ≈ 1 when unbiased; the relaxation's bias is many standard errors.
    # (Correlated coordinates make it noisy: the encoder has few independent directions.)
    assert rows["loo"]["bias_chi2"] < 3.0
    assert rows["gumbel"]["bias_chi2"] > 20
    assert rows["gumbel"]["bias"] > 3 * rows["gumbel"]["bias_se"]


def test_quadrature_gradient_of_bayes_logreg_matches_reparam():
    model = BayesLogReg(**F64)
    torch.manual_seed(4)
    moments, _ = replicate_moments(Reparameterization(), model, 10, 500)
    exact, _ = true_gradient(model)
    z = torch.cat([(moments[g].mean - exact[g]) / (moments[g].var / 500).sqrt() for g in exact])
    rate_logreg = rate("models: Bayesian logistic regression quadrature gradient")
    assert z.abs().max() < z_threshold(rate_logreg, len(z))


@pytest.mark.parametrize("inputs", ["theta", "x"])
def test_learned_baseline_cuts_reinforce_variance_after_warm_up(inputs):
    """The learned baseline, of θ or of the data point x (NVIL's b(x)), fitted over 200
    calls: encoder variance falls by orders of magnitude; 100x is asserted."""
    vae = tiny_bernoulli_vae()
    learned = Reinforce(Learned(inputs=inputs))
    torch.manual_seed(8)
    params = list(vae.parameters())
    for _ in range(200):
        torch.autograd.grad(vae.loss(learned, 4), params)
    var = {}
    for name, estimator in (("reinforce", Reinforce()), ("learned", learned)):
        moments, _ = replicate_moments(estimator, vae, 4, 300)
        var[name] = float(moments["encoder"].var.mean())
    assert var["learned"] * 100 < var["reinforce"], var


def test_learned_baseline_on_x_sees_the_data_and_needs_it():
    vae = tiny_bernoulli_vae()
    baseline = Learned(inputs="x")
    Reinforce(baseline).check(vae, vae.theta, 4)
    estimate_gradient(Reinforce(baseline), vae, vae.theta, 4)
    assert baseline.net[0].in_features == vae.baseline_inputs.shape[-1]
    toy = GaussianQuadratic()
    with pytest.raises(NotApplicable, match="inputs=x needs an objective with data inputs"):
        Reinforce(Learned(inputs="x")).check(toy, toy.theta, 4)
    with pytest.raises(ValueError, match="estimator.baseline.inputs must be one of theta, x"):
        Learned(inputs="z")


# -- variance ordering ------------------------------------------------------------------


def test_variance_ordering_on_the_gaussian_vae():
    """reparam < reinforce_loo < reinforce on the encoder (digits, at initialisation).

    The ratios are large (two orders of magnitude and one), so 300 replicates leave no
    doubt."""
    vae = GaussianVAE(digits(), latent_dim=4, hidden_dim=16, batch_size=8, **F64)
    var = {}
    for name, estimator in (("reparam", Reparameterization()), ("reinforce", Reinforce()),
                            ("loo", Reinforce(LeaveOneOut()))):  # fmt: skip
        torch.manual_seed(6)
        moments, _ = replicate_moments(estimator, vae, 10, 300)
        var[name] = float(moments["encoder"].var.mean())
    assert var["reparam"] * 3 < var["loo"] < var["reinforce"] / 3, var


# -- training -----------------------------------------------------------------------------


def test_train_on_digits_improves_heldout_elbo_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "train"
    code = main([
        "run", "objective=vae_gaussian", "estimator=reparam", "task=train", "task.steps=60",
        "task.eval_every=30", "task.lr=0.01", "task.track=[reinforce_loo]", "replicates=20",
        "objective.hidden_dim=32", "objective.latent_dim=4", "objective.true_grad=none",
        "task.timing_min_run_time=0.001", "threads=1",
        f"hydra.run.dir={out}",
    ])  # fmt: skip
    assert code == 0
    log = pd.read_parquet(out / "train.parquet")
    assert list(log["step"]) == list(range(61))
    evaluated = log.dropna(subset=["heldout_elbo"])
    assert list(evaluated["step"]) == [0, 30, 60]
    assert evaluated["heldout_elbo"].iloc[-1] > evaluated["heldout_elbo"].iloc[0] + 5
    assert log["wall_time_s"].is_monotonic_increasing
    records = pd.read_parquet(out / "records.parquet")
    assert set(records["estimator"]) == {"reparam", "reinforce_loo"}
    assert set(records["step"]) == {0, 30, 60} and (records["status"] == "ok").all()
    assert "step 60/60" in capsys.readouterr().err

    again = tmp_path / "variance"
    code = main([
        "run", "objective=vae_gaussian", "estimator=reparam", "replicates=20",
        "objective.hidden_dim=32", "objective.latent_dim=4", "objective.true_grad=none",
        "threads=1", f"objective.checkpoint={out / 'checkpoint.pt'}", f"hydra.run.dir={again}",
    ])  # fmt: skip
    assert code == 0
    loaded = pd.read_parquet(again / "records.parquet").set_index("param")
    final = records[(records["step"] == 60) & (records["estimator"] == "reparam")]
    # Same parameters, same seed and sizes as the step-60 measurement except the seed
    # offset: the same mean gradient up to noise, far from the initial one.
    assert loaded.loc["all", "status"] == "ok"
    assert loaded.loc["all", "mean_grad"] == pytest.approx(
        final.set_index("param").loc["all", "mean_grad"], rel=0.3
    )


def test_train_on_a_toy_reduces_the_optimality_gap(tmp_path):
    out = tmp_path / "toy"
    code = main(["run", "objective=gaussian_quadratic", "estimator=reparam", "task=train",
                 "task.steps=50", "task.eval_every=25", "task.lr=0.05", "replicates=50",
                 "threads=1", f"hydra.run.dir={out}"])  # fmt: skip
    assert code == 0
    log = pd.read_parquet(out / "train.parquet")
    assert log["optimality_gap"].iloc[-1] < 0.1 * log["optimality_gap"].iloc[0]


# torch 2.13's compile stack calls its own deprecated APIs (torch.jit.script_method, and
# instantiating the custom autograd Function of estimators.scores).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_train_with_compile_runs_through_torch_compile_and_still_learns(tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = tmp_path / "compiled"
    code = main([
        "run", "objective=vae_bernoulli", "estimator=reinforce_loo", "task=train",
        "task.compile=true", "task.steps=40", "task.eval_every=40", "task.lr=0.01",
        "replicates=10", "objective.true_grad=none", "task.timing_min_run_time=0.001",
        "threads=1", *SMALL, f"hydra.run.dir={out}",
    ])  # fmt: skip
    assert code == 0
    # The steps ran compiled: dynamo captured a graph (and compiled it only once).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    log = pd.read_parquet(out / "train.parquet")
    assert list(log["step"]) == list(range(41)) and log["loss"].notna().all()
    evaluated = log.dropna(subset=["heldout_elbo"])
    assert evaluated["heldout_elbo"].iloc[-1] > evaluated["heldout_elbo"].iloc[0]
    torch._dynamo.reset()


# -- data -------------------------------------------------------------------------------


def test_digits_is_binary_with_a_fixed_split():
    a, b = digits(), digits()
    assert a.train.shape == (1438, 64) and a.test.shape == (359, 64)
    assert torch.equal(a.test, b.test) and set(a.train.unique().tolist()) == {0.0, 1.0}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(
        0, 256, (10, 28, 28), dtype=np.uint8
    )


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_from_a_folder_of_idx_files(tmp_path, images, suffix):
    train, test = images
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test)
    data = mnist(str(tmp_path))
    assert data.train.shape == (30, 784) and data.test.shape == (10, 784)
    assert torch.equal(data.train, torch.tensor(train.reshape(30, -1) > 127.5).float())


def test_mnist_from_npz_and_a_single_idx_file(tmp_path, images):
    train, test = images
    np.savez(tmp_path / "mnist.npz", x_train=train, x_test=test)
    data = mnist(str(tmp_path / "mnist.npz"), binarize="dynamic")
    assert data.dynamic and data.test.shape == (10, 784)
    assert set(data.test.unique().tolist()) <= {0.0, 1.0}
    batch = data.batch(torch.arange(5), torch.Generator().manual_seed(0))
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    single = mnist(str(write_idx(tmp_path / "all.idx3-ubyte", train)), test_fraction=0.2)
    assert single.train.shape == (24, 784) and single.test.shape == (6, 784)


IDX_HEADER_2X2X2 = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2)  # then 8 pixels


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("short.idx", lambda p: p.write_bytes(IDX_HEADER_2X2X2 + bytes(3)), "truncated"),
        ("junk.idx", lambda p: p.write_bytes(b"not an idx file"), "not an IDX file"),
        ("empty.idx.gz", lambda p: gzip.open(p, "wb").close(), "not an IDX file"),
        ("keys.npz", lambda p: np.savez(p, images=np.zeros((2, 2))), "expected x_train"),
        ("junk.npz", lambda p: p.write_bytes(b"not a zip"), "cannot read"),
    ],
)
def test_malformed_mnist_files_are_one_line_errors_naming_the_path(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=message) as info:
        mnist(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_data_path_is_a_one_line_cli_error(tmp_path, capsys):
    missing = tmp_path / "nope" / "mnist.npz"
    code = main(["run", "objective=vae_bernoulli", "data=mnist", f"data.path={missing}",
                 f"hydra.run.dir={tmp_path}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(missing) in err and len(err.splitlines()) == 1, err
    assert main(["run", "objective=vae_bernoulli", "data=nope"]) == 2
    assert "unknown data 'nope'" in capsys.readouterr().err
