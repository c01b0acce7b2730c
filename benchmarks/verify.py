"""``gradbench verify estimator=NAME``: certify an estimator on the exact-answer suite.

The same discipline the project's own tests apply to its estimators, for anyone's:

- every toy the estimator applies to, and two small models whose gradient is exact (a
  Bernoulli VAE small enough to enumerate its latent states, and Bayesian logistic
  regression, whose expectations are one-dimensional and done by quadrature), at two
  sample sizes and, except for the regression, two parameter points. A one-line
  ``skipped:`` reason where the estimator does not apply;
- unbiasedness: a z-test per coordinate of the mean of ``replicates`` estimates against the
  exact gradient (every weight of a model), Bonferroni over every coordinate of every cell,
  at the family-wise false-fail rate ``false_fail`` (default 1e-3). Each cell states its
  power: the smallest relative bias it detects with probability ``power`` (default 0.9).
  An estimator that declares itself biased (``unbiased = False``) has its bias measured
  and reported, never failed;
- its variance next to the closed-form variances of REINFORCE, the reparameterisation
  trick and the optimal constant baseline on the Gaussian quadratic toy (Mohamed et al.
  2020, Fig. 2), for context.

The result is a certificate (``Certificate``): a table per cell, ``verify.md`` and
``verify.json`` in the output folder, and the exit code 0 when every claim holds, 1 when one
fails (named on stderr).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import torch

from benchmarks.measure_model import replicate_moments
from benchmarks.objectives import (
    BernoulliLatent,
    BernoulliThreshold,
    CategoricalLinear,
    GaussianCosine,
    GaussianQuadratic,
    LinearGaussian,
)
from benchmarks.objectives.bayes_logreg import BayesLogReg
from benchmarks.objectives.data import synthetic
from benchmarks.objectives.model import ModelObjective
from benchmarks.objectives.toy import BernoulliShared
from benchmarks.objectives.vae import BernoulliVAE
from benchmarks.significance import bonferroni_z
from benchmarks.storage import write_atomic
from estimators import (
    Estimator,
    NotApplicable,
    bound_k,
    estimate_gradient,
    is_importance_weighted,
    replicate_gradients,
)

F64 = {"dtype": torch.float64}

# (label, objective factory): two points per toy, one near and one away from the easy case.
SUITE: list[tuple[str, Callable[[], object]]] = [
    ("gaussian_quadratic mu=1 sigma=1 target=0",
     lambda: GaussianQuadratic(mu=1.0, sigma=1.0, target=0.0, **F64)),
    ("gaussian_quadratic mu=0.5 sigma=2 target=1",
     lambda: GaussianQuadratic(mu=0.5, sigma=2.0, target=1.0, **F64)),
    ("gaussian_cosine mu=0.4 sigma=0.8 omega=1.5",
     lambda: GaussianCosine(mu=0.4, sigma=0.8, omega=1.5, **F64)),
    ("gaussian_cosine mu=1 sigma=0.5 omega=2",
     lambda: GaussianCosine(mu=1.0, sigma=0.5, omega=2.0, **F64)),
    ("bernoulli_threshold logit=-0.5 target=0.45",
     lambda: BernoulliThreshold(logit=-0.5, target=0.45, **F64)),
    ("bernoulli_threshold logit=1 target=0.499",
     lambda: BernoulliThreshold(logit=1.0, target=0.499, **F64)),
    ("categorical_linear logits=[0.5,-0.3,0.1]",
     lambda: CategoricalLinear(logits=[0.5, -0.3, 0.1], rewards=[1.0, 2.0, -1.0], **F64)),
    ("categorical_linear logits=[-1,0,1]",
     lambda: CategoricalLinear(logits=[-1.0, 0.0, 1.0], rewards=[0.5, -1.0, 2.0], **F64)),
    ("bernoulli_shared phi=0", lambda: BernoulliShared(phi=0.0, **F64)),
    ("bernoulli_shared phi=-1", lambda: BernoulliShared(phi=-1.0, **F64)),
    ("linear_gaussian x=1.4 mu=0.5 sigma=0.89",
     lambda: LinearGaussian(x=1.4, mu=0.5, sigma=0.8**0.5, **F64)),
    ("linear_gaussian x=-1 mu=0.3 sigma=1.2",
     lambda: LinearGaussian(x=-1.0, mu=0.3, sigma=1.2, **F64)),
    ("bernoulli_latent logits=[0,0,0]", lambda: BernoulliLatent(**F64)),
    ("bernoulli_latent logits=[0.5,-1,1.5] x=2",
     lambda: BernoulliLatent(x=2.0, logits=[0.5, -1.0, 1.5], **F64)),
    ("vae_bernoulli 6 px, 3 latents, init_seed=0", lambda: tiny_bernoulli_vae(0)),
    ("vae_bernoulli 6 px, 3 latents, init_seed=1", lambda: tiny_bernoulli_vae(1)),
    ("bayes_logreg batch_size=16", lambda: BayesLogReg(batch_size=16, **F64)),
]  # fmt: skip
SAMPLE_SIZES = (2, 8)
# Estimates that warm a stateful baseline before it is measured, as a variance cell does.
WARMUP_STEPS = 5


def tiny_bernoulli_vae(init_seed: int) -> BernoulliVAE:
    """A Bernoulli VAE whose ELBO gradient is exact by enumerating its 2³ latent states:
    6 pixels of generated data, 3 latents, one hidden layer of 4 units, a batch of 4 (89
    weights). Every weight is one tested coordinate, so a few thousand replicates test it
    in seconds."""
    data = synthetic(n_train=32, n_test=16, dim=6, seed=1)
    return BernoulliVAE(data, latent_dim=3, hidden_dim=4, batch_size=4, init_seed=init_seed, **F64)


def closed_form_variances(mu: float, sigma: float, target: float) -> dict[str, list[float]]:
    """Single-sample variances (mu, sigma coordinates) on the Gaussian quadratic toy,
    a = mu − target (Mohamed et al. 2020, Fig. 2)."""
    a, s = mu - target, sigma
    return {
        "reinforce": [(a**4 + 14 * a**2 * s**2 + 15 * s**4) / s**2,
                      2 * (a**4 + 30 * a**2 * s**2 + 37 * s**4) / s**2],
        "reparam": [4 * s**2, 4 * a**2 + 8 * s**2],
        "reinforce_optimal": [8 * a**2 + 6 * s**2, 40 * a**2 + 24 * s**2],
    }  # fmt: skip


@dataclass
class Cell:
    """One toy or model at one point and sample size: the measured claim and its test.

    ``detectable_relative_bias`` is the power statement: the smallest δ such that an
    estimate whose mean is (1 + δ) times the exact gradient fails the test with probability
    ``power``, i.e. the best over coordinates of (threshold + z_power) · se / |exact|.
    """

    toy: str
    n_samples: int
    status: str  # ok, skipped: <reason>, nonfinite, failed: <error>
    params: list[str] = field(default_factory=list)
    true_grad: list[float] = field(default_factory=list)
    mean_grad: list[float] = field(default_factory=list)
    var_grad: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    detectable_relative_bias: float = math.nan
    reference_variances: dict[str, list[float]] = field(default_factory=dict)
    passed: bool | None = None  # None: not tested (skipped, or a declared-biased estimator)


@dataclass
class Certificate:
    """What ``verify`` found, and whether every claim held."""

    estimator: str
    unbiased_claimed: bool
    replicates: int
    false_fail: float
    power: float
    z_threshold: float
    cells: list[Cell]
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        """One line per cell whose unbiasedness claim failed or whose estimates could not
        be made (an error, or non-finite values)."""
        lines = []
        for c in self.cells:
            if c.passed is False and c.status != "ok":
                lines.append(f"{c.toy} n_samples={c.n_samples}: {c.status}")
            elif c.passed is False:
                worst = max(range(len(c.z)), key=lambda k: abs(c.z[k]))
                lines.append(
                    f"{c.toy} n_samples={c.n_samples}: {c.params[worst]} mean "
                    f"{c.mean_grad[worst]:.5g} vs exact {c.true_grad[worst]:.5g} "
                    f"(z = {c.z[worst]:.1f}, threshold {self.z_threshold:.2f})"
                )
        return lines

    @property
    def ok(self) -> bool:
        return not self.failures and any(c.status == "ok" for c in self.cells)


def _toy_moments(estimator, objective, n_samples, replicates):
    """(coordinate names, exact gradient, mean, variance) of a toy's estimates."""
    for _ in range(WARMUP_STEPS):
        estimate_gradient(estimator, objective, objective.theta, n_samples)
    grads = replicate_gradients(estimator, objective, objective.theta, n_samples, replicates)
    grads = grads.detach().to(torch.float64)
    # An importance-weighted toy is exact for every K: the truth is that of the estimator's.
    at_k = {"k": bound_k(estimator)} if is_importance_weighted(objective) else {}
    true = objective.true_grad(**at_k).to(torch.float64)
    return list(objective.param_names), true, grads.mean(0), grads.var(0)


def _model_moments(estimator, model, n_samples, replicates):
    """(coordinate names, exact gradient, mean, variance) of a model's estimates, one
    coordinate per weight (``encoder[17]``), in the order of ``model.param_groups``."""
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(WARMUP_STEPS):
        torch.autograd.grad(model.loss(estimator, n_samples), params)
    moments, _ = replicate_moments(estimator, model, n_samples, replicates)
    # A multi-sample estimator's truth is the gradient of its own bound L_K.
    k = bound_k(estimator)
    exact = model.exact_gradient(k) if k > 1 else model.exact_gradient()
    groups = model.param_groups
    names = [f"{g}[{i}]" for g in groups for i in range(moments[g].mean.numel())]
    cat = lambda part: torch.cat([part(g).to(torch.float64) for g in groups])  # noqa: E731
    return (
        names, cat(lambda g: exact[g].detach()), cat(lambda g: moments[g].mean),
        cat(lambda g: moments[g].var),
    )  # fmt: skip


def _measure(estimator, objective, n_samples, replicates, seed):
    torch.manual_seed(seed)
    estimator.reset()
    moments = _model_moments if isinstance(objective, ModelObjective) else _toy_moments
    return moments(estimator, objective, n_samples, replicates)


def _measure_suite(estimator, suite, sample_sizes, replicates, seed, progress) -> list[Cell]:
    """Every cell of ``suite`` at every sample size, measured; the z-tests come after."""
    cells = []
    for label, make in suite:
        for n in sample_sizes:
            objective = make()
            try:
                estimator.check(objective, objective.theta, n)
            except NotApplicable as reason:
                cells.append(Cell(label, n, f"skipped: {reason}"))
                continue
            if progress:
                progress(f"{label} n_samples={n}")
            try:
                names, true, mean, var = _measure(estimator, objective, n, replicates, seed)
            except (RuntimeError, ValueError) as error:
                # E.g. a surrogate that leaves a model's parameters out of its graph: the
                # estimate does not exist, so whatever the estimator claims, it fails.
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                cells.append(Cell(label, n, f"failed: {type(error).__name__}: {reason}"))
                cells[-1].passed = False
                continue
            cell = Cell(label, n, "ok", names, true.tolist())
            if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
                cell.status, cell.passed = "nonfinite", False
                cells.append(cell)
                continue
            se = (var / replicates).sqrt()
            cell.mean_grad, cell.var_grad = mean.tolist(), var.tolist()
            # A zero-variance coordinate is exact or wrong: no z-test needed.
            close = torch.isclose(mean, true, rtol=1e-9, atol=1e-12)
            z = torch.where(se == 0, torch.where(close, 0.0, math.inf), (mean - true) / se)
            cell.z = z.tolist()
            if isinstance(objective, GaussianQuadratic):
                mu, sigma = objective.theta.tolist()
                refs = closed_form_variances(mu, sigma, objective.target)
                cell.reference_variances = {k: [v / n for v in vs] for k, vs in refs.items()}
            cells.append(cell)
    return cells


def verify(
    estimator: Estimator,
    name: str,
    *,
    replicates: int = 20_000,
    false_fail: float = 1e-3,
    power: float = 0.9,
    seed: int = 0,
    suite: list[tuple[str, Callable[[], object]]] | None = None,
    sample_sizes: tuple[int, ...] = SAMPLE_SIZES,
    progress: Callable[[str], None] | None = None,
) -> Certificate:
    """Run the exact-answer suite on ``estimator`` and return its certificate."""
    if replicates < 2:
        raise ValueError(f"replicates must be at least 2, got {replicates}")
    if not 0 < false_fail < 1 or not 0 < power < 1:
        raise ValueError("false_fail and power must lie in (0, 1)")
    started = time.perf_counter()
    # The suite's objectives are tiny and latency-bound: more torch threads only add
    # synchronisation, and on a busy machine they wait for each other (several times slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cells = _measure_suite(estimator, suite or SUITE, sample_sizes, replicates, seed, progress)
    finally:
        torch.set_num_threads(threads)
    tested = sum(len(c.z) for c in cells)
    threshold = bonferroni_z(false_fail, tested)
    z_power = NormalDist().inv_cdf(power)
    for c in cells:
        if not c.z:
            continue
        se = [math.sqrt(v / replicates) for v in c.var_grad]
        # Power is a z-test's: coordinates without spread (tested for equality) are left out.
        relative = [
            (threshold + z_power) * s / abs(t)
            for s, t in zip(se, c.true_grad, strict=True)
            if t and s > 0
        ]
        c.detectable_relative_bias = min(relative) if relative else math.nan
        if estimator.unbiased:
            c.passed = all(abs(z) < threshold for z in c.z)
    return Certificate(
        name, bool(estimator.unbiased), replicates, false_fail, power, threshold, cells,
        time.perf_counter() - started,
    )  # fmt: skip


def format_certificate(cert: Certificate) -> str:
    """The terminal table: one line per cell."""
    claim = "unbiased (tested)" if cert.unbiased_claimed else "biased (declared; bias measured)"
    lines = [
        f"gradbench verify: {cert.estimator}, claims {claim}",
        f"replicates={cert.replicates}, family-wise false-fail rate {cert.false_fail:g} "
        f"(|z| < {cert.z_threshold:.2f}, Bonferroni over "
        f"{sum(len(c.z) for c in cert.cells)} coordinates); power {cert.power:g}",
        "",
        f"{'objective':<44} {'n':>2}  {'max |z|':>7}  {'detects bias ≥':>14}  result",
    ]
    for c in cert.cells:
        if c.status != "ok":
            lines.append(f"{c.toy:<44} {c.n_samples:>2}  {'':>7}  {'':>14}  {c.status}")
            continue
        worst = max(abs(z) for z in c.z)
        detect = (
            f"{100 * c.detectable_relative_bias:.3g}%"
            if math.isfinite(c.detectable_relative_bias)
            else "-"
        )
        result = {True: "pass", False: "FAIL", None: "measured"}[c.passed]
        lines.append(f"{c.toy:<44} {c.n_samples:>2}  {worst:>7.2f}  {detect:>14}  {result}")
    ok = sum(c.status == "ok" for c in cert.cells)
    verdict = (
        "every claim holds"
        if cert.ok
        else ("no cell applies" if not ok else f"{len(cert.failures)} claim(s) fail")
    )
    lines += ["", f"{ok} cells measured in {cert.seconds:.1f} s: {verdict}"]
    return "\n".join(lines)


def format_markdown(cert: Certificate) -> str:
    """``verify.md``: the table, then the variances beside the closed forms."""
    text = f"# Certificate: `{cert.estimator}`\n\n```\n{format_certificate(cert)}\n```\n"
    rows = [c for c in cert.cells if c.reference_variances]
    if rows:
        text += (
            "\n## Variance of one estimate next to the closed forms (Gaussian quadratic)\n\n"
            "| toy | n | param | this estimator | reinforce | reparam | optimal baseline |\n"
            "|---|---|---|---|---|---|---|\n"
        )
        for c in rows:
            refs = c.reference_variances
            for k, p in enumerate(c.params):
                text += (
                    f"| {c.toy} | {c.n_samples} | {p} | {c.var_grad[k]:.4g} | "
                    f"{refs['reinforce'][k]:.4g} | {refs['reparam'][k]:.4g} | "
                    f"{refs['reinforce_optimal'][k]:.4g} |\n"
                )
    for line in cert.failures:
        text += f"\nFAIL: {line}\n"
    return text


def write_certificate(cert: Certificate, folder: Path) -> tuple[Path, Path]:
    """Write ``verify.md`` and ``verify.json`` into ``folder``, each atomically."""
    payload = {**asdict(cert), "ok": cert.ok, "failures": cert.failures}
    paths = []
    for name, text in (
        ("verify.md", format_markdown(cert)),
        ("verify.json", json.dumps(payload, indent=1, allow_nan=True)),
    ):
        paths.append(write_atomic(folder / name, lambda handle, t=text: handle.write(t.encode())))
    return paths[0], paths[1]
