"""Closed-form pieces that several objectives share: state enumeration and analytic KLs."""

from __future__ import annotations

import torch
from torch import Tensor


def binary_states(k: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """All 2^k states of k bits, [2^k, k]; row c holds the bits of c, lowest bit first."""
    codes = torch.arange(2**k, device=device)
    return ((codes.unsqueeze(-1) >> torch.arange(k, device=device)) & 1).to(dtype)


def kl_to_standard_normal(mean: Tensor, log_scale: Tensor) -> Tensor:
    """KL(N(mean, diag exp(log_scale)²) ‖ N(0, I)) over the last dimension, [*batch].

    Kingma & Welling (2014), appendix B: ½ Σ (μ² + σ² − 1 − log σ²).
    """
    return 0.5 * (mean.square() + (2 * log_scale).exp() - 1 - 2 * log_scale).sum(-1)
