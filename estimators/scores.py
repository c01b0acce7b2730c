"""Score functions ∇ log p(x) written out for the families the objectives use.

The score-function estimators need the gradient of Σ_i w_i log p_θ(x_i) with respect to
θ. Differentiating ``Distribution.log_prob`` generically costs one forward and one
backward autograd node per elementwise operation inside ``log_prob``, over every sample:
for a Normal, about a dozen passes over the [N, *batch] samples, where the score itself,
(x − μ)/σ² and ((x − μ)²/σ² − 1)/σ, takes a few. ``with_score`` gives the same gradient
from the analytic score of the distribution's own parameters (``loc``/``scale``,
``logits``/``probs``), and autograd carries it from there to θ through whatever map the
objective built them with (θ ↦ exp, softplus, an encoder, ...).

Families with a written score: ``Normal``, ``Bernoulli``, ``Categorical``, and
``Independent`` wrappers of them. Any other distribution falls back to autograd through
``log_prob``, with the same result. ``tests/test_scores.py`` checks every family against
that fallback, first and second derivatives.

For the optimal baseline, ``per_sample_scores`` gives every sample's own score
∇θ log p_θ(x_i), and ``score_square_sums`` the two sums over samples of f·s² and s² that
the baseline is a ratio of.

``sample`` draws like ``Distribution.sample``. For ``Bernoulli`` it compares uniforms with
p, which is 2-3× faster on CPU than ``torch.bernoulli`` with a tensor of probabilities
(measured: 5.3 vs 12.1 ms for 10⁶ draws); the draws have the same distribution, but not
the same random numbers. For ``Normal`` it is ``rsample`` without gradient, μ + σ·ε,
which skips ``torch.normal``'s check of σ over every expanded sample.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Normal

from estimators.distributions import unwrap_independent


def with_score(value: Tensor, dist: Distribution, x: Tensor, weight) -> Tensor:
    """``value``, with ``weight · ∇ log p(x)`` added to its gradient.

    The result equals ``value`` (shape [*sample, *batch], the shape of ``log_p(x)``) and
    its gradient is ``value``'s own plus that of Σ weight · log p(x), as if ``weight``
    were a constant: the magic box of DiCE (Foerster et al. 2018) without computing
    log p. ``weight`` broadcasts against ``value``; no gradient flows into it.
    """
    family, params = _family(dist)
    weight = torch.as_tensor(weight, dtype=value.dtype, device=value.device).detach()
    if family is None:  # any other family: autograd through log_prob
        log_p = dist.log_prob(x)
        return value + weight * (log_p - log_p.detach())
    return _WithScore.apply(
        value, weight, x.detach(), (family, unwrap_independent(dist)[1]), *params
    )


def sample(dist: Distribution, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``dist.sample(shape)``, faster for Bernoulli variables (see the module docstring)."""
    base, _ = unwrap_independent(dist)
    if type(base) is Bernoulli:
        probs = base.probs.detach()
        u = torch.rand(dist._extended_shape(shape), dtype=probs.dtype, device=probs.device)
        return (u < probs).to(probs.dtype)
    if type(base) is Normal:
        with torch.no_grad():  # μ + σ·ε; Normal.sample's torch.normal also checks σ ≥ 0
            return dist.rsample(shape)
    return dist.sample(shape)


@contextlib.contextmanager
def revalidation_skipped():
    """Build distributions without checking their arguments (``validate_args=False``).

    For a distribution rebuilt from values the estimator has already checked (θ's
    replicate or per-sample copies): over 10⁶ copies the checks took about a third of the
    optimal baseline's fit. Sets torch's process-wide default for the duration.
    """
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


def _family(dist: Distribution) -> tuple[str | None, tuple[Tensor, ...]]:
    """The family's name and the parameter tensors its score is written for."""
    base, _ = unwrap_independent(dist)
    kind = type(base)
    # A parameter given at construction is in the instance dict; the other one is a lazy
    # property computed from it on first use. Either is connected to θ.
    if kind is Normal:
        return "normal", (base.loc, base.scale)
    if kind is Bernoulli:
        return (
            ("bernoulli_logits", (base.logits,))
            if "logits" in base.__dict__
            else ("bernoulli_probs", (base.probs,))
        )
    if kind is Categorical:
        return (
            ("categorical_logits", (base.logits,))
            if "logits" in base.__dict__
            else ("categorical_probs", (base.probs,))
        )
    return None, ()


class _WithScore(torch.autograd.Function):
    """Identity on ``value``; backward adds the analytic score term to the parameters.

    The backward is written with differentiable operations on the saved parameters, so
    second derivatives (``create_graph=True``) are right too.
    """

    @staticmethod
    def forward(ctx, value, weight, x, spec, *params):
        ctx.save_for_backward(weight, x, *params)
        ctx.spec = spec
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        weight, x, *params = ctx.saved_tensors
        family, event_dims = ctx.spec
        # A gradient that is one number broadcast (the backward of a sum, as in
        # ``replicate_gradients``) multiplies the parameters' gradients after the sums
        # over samples instead of every sample before them: one pass fewer.
        # A weight that is one number, too, joins the factor, and the family's sums run
        # over its scores alone (gw=None: a weight of one for every sample).
        constant = grad.numel() > 1 and not any(grad.stride())
        factor = grad.reshape(-1)[0] if constant else None
        if constant and weight.numel() == 1:
            gw, factor = None, factor * weight.reshape(())
        else:
            gw = (weight if constant else grad * weight).expand(grad.shape)  # [*sample, *batch]
            for _ in range(event_dims):
                gw = gw.unsqueeze(-1)  # against the base family's batch dims
        grads = _SCORES[family](gw, x, *params)
        if factor is not None:
            grads = tuple(g * factor for g in grads)
        return (grad, None, None, None, *grads)


def _times_weight(gw: Tensor | None, t: Tensor) -> Tensor:
    """gw · t, where gw=None stands for a weight of one."""
    return t if gw is None else gw * t


def _weight_sums(gw: Tensor | None, x: Tensor, shape: torch.Size) -> Tensor:
    """Σ gw over the samples, per parameter element (the sample count if gw is None)."""
    return _reduce(x.new_ones(()).expand(x.shape) if gw is None else gw, shape)


def _reduce(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``t`` over the sample dimensions and over dimensions ``shape`` broadcasts."""
    lead = t.dim() - len(shape)
    if lead > 0:
        t = t.sum(tuple(range(lead)))
    dims = tuple(i for i, (a, b) in enumerate(zip(t.shape, shape, strict=True)) if b == 1 < a)
    if dims:
        t = t.sum(dims, keepdim=True)
    return t.expand(shape)


def _normal(gw, x, loc, scale):
    # ∂/∂μ log N(x; μ, σ²) = z/σ and ∂/∂σ = (z² − 1)/σ, with z = (x − μ)/σ. The division
    # by σ waits until after the sums over samples; z comes first, so that weight · z
    # overflows no sooner than weight · score would.
    z = _temporary(x - loc, torch.div, scale)
    gwz = _times_weight(gw, z)
    grad_loc = _reduce(gwz, loc.shape) / scale
    grad_scale = (
        _reduce(_temporary(gwz, torch.mul, z), scale.shape) - _weight_sums(gw, x, scale.shape)
    ) / scale
    return grad_loc, grad_scale


def _temporary(temporary: Tensor, op, other: Tensor) -> Tensor:
    """``op(temporary, other)``, in place unless a second derivative is being recorded."""
    return op(temporary, other) if torch.is_grad_enabled() else op(temporary, other, out=temporary)


def _bernoulli_logits(gw, x, logits):
    # ∂/∂l log Bernoulli(x; sigmoid(l)) = x − sigmoid(l).
    total = _reduce(_times_weight(gw, x), logits.shape)
    return (total - torch.sigmoid(logits) * _weight_sums(gw, x, logits.shape),)


def _bernoulli_probs(gw, x, probs):
    # ∂/∂p log Bernoulli(x; p) = (x − p) / (p (1 − p)).
    total = _reduce(_times_weight(gw, x), probs.shape) - probs * _weight_sums(gw, x, probs.shape)
    return (total / (probs * (1 - probs)),)


def _categorical_logits(gw, x, logits):
    # Categorical keeps normalised logits l − logsumexp(l), and log p(x) = those logits
    # at x: the derivative with respect to them is the indicator 1[x = k]. Autograd
    # then applies the normalisation's Jacobian (−p_k Σ) on the way to θ.
    return (_reduce_categorical(gw, x, logits),)


def _categorical_probs(gw, x, probs):
    # log p(x) = log probs[x]: the derivative is 1[x = k] / p_k.
    return (_reduce_categorical(gw, x, probs) / probs,)


def _reduce_categorical(gw, x, param):
    ones = x.new_ones((), dtype=param.dtype)
    return _category_sums(ones if gw is None else gw, x, param.shape[:-1], param.shape[-1])


def _category_sums(w: Tensor, x: Tensor, batch: torch.Size, k: int) -> Tensor:
    """Σ over the sample dimensions of w · 1[x = j], as a scatter (no one-hot):
    x [*sample, *batch], w broadcastable to it -> [*batch, K]."""
    n = batch.numel()
    index = x.long().reshape(-1, n).T  # [batch, samples], sample dims flattened
    weights = w.expand(x.shape).reshape(-1, n).T
    out = torch.zeros(n, k, dtype=w.dtype, device=w.device).scatter_add(1, index, weights)
    return out.reshape(*batch, k)


_SCORES = {
    "normal": _normal,
    "bernoulli_logits": _bernoulli_logits,
    "bernoulli_probs": _bernoulli_probs,
    "categorical_logits": _categorical_logits,
    "categorical_probs": _categorical_probs,
}


# Above this many scored samples (N × batch), per-sample scores of a family with a written
# score and no event dimensions come from forward mode over θ, which never copies θ per
# sample; below it, or for other distributions, from one backward pass over per-sample
# copies of θ, whose fixed cost is lowest. Measured on the toys at 2 × 10⁴ samples: 0.67
# (copies) vs 0.75 ms (forward) for a Normal, 2.3 vs 1.7 ms for a Categorical; at 2 × 10⁶:
# 22 vs 29 ms (Normal), 100 vs 23 ms (Categorical), 7.4 vs 1.9 ms (Bernoulli). Forward
# mode would compute an ``Independent``'s every event element for every coordinate:
# ``vae_gaussian``'s optimal baseline (100 replicates) took 129 ms that way, 99 ms by copies.
FORWARD_MODE_ABOVE = 2**14


def per_sample_scores(
    objective, theta: Tensor, x: Tensor, dist: Distribution | None = None
) -> Tensor:
    """∇θ log p_θ(x_i) for every sample on its own: x [*sample, *batch, *event] ->
    [*sample, *batch, D], for ``theta`` [*batch, D] and p_θ = ``objective.distribution``.

    Two ways (see ``FORWARD_MODE_ABOVE``), with the same result:

    - θ is copied once per sample, and one backward pass of ``with_score`` gives every
      copy's score;
    - for the written families, the score with respect to the distribution's parameters
      is elementwise and the parameters depend on θ alone, not on the sample; so
      s_k(x_i) = Σ_p ∂_p log p(x_i) · ∂p/∂θ_k, with ∂p/∂θ_k from one forward-mode pass
      per coordinate over θ's [*batch] copies, never over the samples.

    ``dist``, if given, is ``objective.distribution(theta)``, already built by the caller.
    """
    theta = theta.detach()
    if dist is None:
        with revalidation_skipped():  # the values of theta, already checked by the caller
            dist = objective.distribution(theta)
    family, params = _family(dist)
    params = tuple(p.detach() for p in params)
    scored = x.shape[: x.dim() - len(dist.event_shape)]  # [*sample, *batch]
    if family is None or dist.event_shape or scored.numel() <= FORWARD_MODE_ABOVE:
        return _scores_by_copies(objective, theta, x, scored)
    tangents = _parameter_tangents(objective, theta)
    if tangents is None:
        return _scores_by_copies(objective, theta, x, scored)
    if family.startswith("categorical"):
        # s_k(x_i) is row x_i of ∂(log-probabilities)/∂θ_k: one lookup for every k.
        return _rows(_categorical_table(tangents, family, params[0]), x)
    terms = _ELEMENTWISE[family](x, *params)  # (u_p, c_p) per parameter p
    # Coordinate-major storage, so that each coordinate's scores are written in one pass.
    out = x.new_empty(len(tangents), *scored, dtype=terms[0][0].dtype)
    for k, tangent in enumerate(tangents):
        # ∂_p log p = u_p · c_p; a parameter that does not move with θ_k adds nothing.
        factors = [(u, dp * c) for (u, c), dp in zip(terms, tangent, strict=True) if dp.any()]
        if not factors:
            out[k].zero_()
            continue
        torch.mul(*factors[0], out=out[k])
        for u, f in factors[1:]:
            out[k].addcmul_(u, f)
    return out.movedim(0, -1)


def _scores_by_copies(objective, theta, x, scored):
    with torch.enable_grad():
        copies = theta.expand(*scored[: len(scored) - theta.dim() + 1], *theta.shape)
        copies = copies.clone().requires_grad_(True)
        with revalidation_skipped():
            dist = objective.distribution(copies)  # batch shape [*sample, *batch]
        anchor = copies.new_zeros(()).expand(scored)
        (scores,) = torch.autograd.grad(with_score(anchor, dist, x, 1.0).sum(), copies)
    return scores


def score_square_sums(
    objective, theta: Tensor, x: Tensor, f: Tensor, dist: Distribution | None = None
) -> tuple[Tensor, Tensor]:
    """(Σ_i f_i s_k(x_i)², Σ_i s_k(x_i)²) over the samples x [M, *batch, *event], with
    s = ∇θ log p_θ and f [M, *batch]: the two sums the optimal constant baseline is a
    ratio of, each [*batch, D].

    For a ``Categorical`` s_k(x_i) depends on the category x_i alone, so both sums are
    sums over categories of per-category totals: two scatter-adds instead of M·D scores.
    ``dist`` as for ``per_sample_scores``.
    """
    theta = theta.detach()
    if dist is None:
        with revalidation_skipped():
            dist = objective.distribution(theta)
    family, params = _family(dist)
    if family in ("categorical_logits", "categorical_probs") and not dist.event_shape:
        tangents = _parameter_tangents(objective, theta)
        if tangents is None:
            return square_sums(_scores_by_copies(objective, theta, x, x.shape), f, owned=True)
        table = _categorical_table(tangents, family, params[0].detach()) ** 2  # [*batch, K, D]
        k = table.shape[-2]
        batch = x.shape[1:]
        weighted = _category_sums(f, x, batch, k).unsqueeze(-1)  # [*batch, K, 1]
        counts = _category_sums(f.new_ones(()), x, batch, k).unsqueeze(-1)
        return (table * weighted).sum(-2), (table * counts).sum(-2)
    return square_sums(per_sample_scores(objective, theta, x, dist), f, owned=True)


def square_sums(scores: Tensor, f: Tensor, *, owned: bool = False) -> tuple[Tensor, Tensor]:
    """(Σ_i f_i s_ik², Σ_i s_ik²) from per-sample scores [M, *batch, D] and f [M, *batch].

    ``owned``: ``scores`` is a temporary of the caller's, to be squared in place.
    """
    squares = scores.movedim(-1, 0)  # [D, M, *batch]
    squares = squares.square_() if owned else squares.square()
    total = squares.sum(1)
    return squares.mul_(f).sum(1).movedim(0, -1), total.movedim(0, -1)


def _categorical_table(tangents, family, param):
    """∂ log p(x = j)/∂θ_k for every category j, [*batch, K, D], from the tangents of the
    Categorical's one parameter."""
    table = torch.stack([dp for (dp,) in tangents], -1)
    return table / param.unsqueeze(-1) if family == "categorical_probs" else table


def _parameter_tangents(objective, theta):
    """∂(distribution parameters)/∂θ_k for each coordinate k: forward mode over θ. None
    if ``objective.distribution`` cannot run under forward mode (say, it uses a custom
    autograd.Function without a forward rule); the callers then score by copies."""
    tangents = []
    with revalidation_skipped(), warnings.catch_warnings():
        # On first use torch 2.13's forward mode loads decompositions through its own
        # deprecated torch.jit.script.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        for k in range(theta.shape[-1]):
            direction = torch.zeros_like(theta)
            direction[..., k] = 1.0
            try:
                _, tangent = torch.func.jvp(
                    lambda t: _family(objective.distribution(t))[1], (theta,), (direction,)
                )
            except RuntimeError:
                return None
            tangents.append(tangent)
    return tangents


# Elementwise scores: for each parameter p, ∂_p log p(x_i) = u_p(x_i) · c_p, with u_p
# sample-shaped and c_p parameter-shaped.


def _normal_terms(x, loc, scale):
    z = (x - loc).div_(scale)
    return ((z, 1 / scale), ((z * z).sub_(1), 1 / scale))


def _bernoulli_logits_terms(x, logits):
    return ((x - torch.sigmoid(logits), 1.0),)


def _bernoulli_probs_terms(x, probs):
    return ((x - probs, 1 / (probs * (1 - probs))),)


def _rows(table: Tensor, x: Tensor) -> Tensor:
    """table [*batch, K, D] at the categories x [*sample, *batch] -> [*sample, *batch, D],
    stored coordinate-major like the other families' scores."""
    k, d = table.shape[-2:]
    batch = table.shape[:-2]
    offsets = torch.arange(batch.numel(), device=x.device).reshape(batch) * k
    index = (x.long() + offsets).reshape(-1)
    columns = table.reshape(-1, d).T.contiguous()  # [D, batch·K]
    out = columns.new_empty(d, index.numel())
    for column, row in zip(columns, out, strict=True):
        torch.index_select(column, 0, index, out=row)
    return out.reshape(d, *x.shape).movedim(0, -1)


_ELEMENTWISE = {
    "normal": _normal_terms,
    "bernoulli_logits": _bernoulli_logits_terms,
    "bernoulli_probs": _bernoulli_probs_terms,
}
