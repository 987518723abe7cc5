"""Symlog two-hot regression (DreamerV3): a scalar target as a categorical over fixed bins, learned by cross-entropy.

Glossary: K bins, ``...`` any leading dims.

    symlog(x) = sign(x) · ln(1 + |x|)        symexp(y) = sign(y) · (e^|y| - 1)

The bins are K points of symlog space, ``linspace(-20, 20, K)`` (DreamerV3: K = 255; odd K so
that 0 is a bin). A target x is encoded as ``twohot_encode(symlog(x), bins)``: the weight goes to the
two bins around symlog(x), interpolated linearly so that ``Σ_k w_k · bins_k = symlog(x)``; targets
beyond the bins are clipped to the end bins. A prediction's value in env units is
``symexp(twohot_decode(logits, bins))``, the symexp of the expected bin under the softmax.

Why decode in symlog space (as DreamerV3) and not ``Σ_k p_k · symexp(bins_k)``, the expectation in
env units: the end bins are ±4.9e8 in env units, so the few 1e-4 of probability that a fitted head
leaves on far bins would swamp every reward of order 1. The price: an uncertain event is shrunk,
e.g. 30 % on +10 and 70 % on 0 decodes to symexp(0.3 · ln 11) = 1.05, not 3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wmenv.tensor_ops import log_softmax, softmax

SYMLOG_LIMIT = 20.0
"""`symlog_bins` spans symlog values [-20, 20] (DreamerV3), i.e. about ±4.9e8 in env units."""


def symlog(x: Tensor) -> Tensor:
    """sign(x) · ln(1 + |x|), elementwise, any shape."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(y: Tensor) -> Tensor:
    """sign(y) · (exp(|y|) - 1), elementwise, any shape: the inverse of `symlog`."""
    return torch.sign(y) * torch.expm1(y.abs())


def symlog_bins(num_bins: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(K,) bins of symlog space, evenly spaced over [-20, 20]; K odd and >= 3, so the middle bin is exactly 0."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 3 or num_bins % 2 == 0:
        raise ValueError(f"num_bins: expected an odd integer >= 3 (so that 0 is a bin), got {num_bins!r}")
    bins = torch.linspace(-SYMLOG_LIMIT, SYMLOG_LIMIT, num_bins, dtype=torch.float64)
    bins[num_bins // 2] = 0.0  # exactly 0, whatever linspace's rounding
    return bins.to(dtype)


def _check_bins(bins: Tensor) -> None:
    if bins.dim() != 1 or bins.shape[0] < 2:
        raise ValueError(f"bins: expected a 1-D tensor of at least 2 bin values, got shape {tuple(bins.shape)}")
    if not bool((bins[1:] > bins[:-1]).all()):
        raise ValueError("bins: expected strictly increasing bin values")


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot weights of targets x (...) over ``bins`` (K,): (..., K), each row summing to 1.

    The weight goes to the two bins around x, linearly interpolated (``Σ_k w_k · bins_k = x``); a
    target on a bin is one-hot there; targets below / above the bins are one-hot on the first / last bin.

    Raises:
        ValueError: non-finite targets, or bins that are not 1-D and strictly increasing.
    """
    _check_bins(bins)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x: expected finite targets, got {int((~torch.isfinite(x)).sum())} non-finite value(s)")
    num_bins = bins.shape[0]
    x = x.to(bins.dtype).clamp(bins[0], bins[-1])
    # (...) index of the first bin >= x, in [0, K-1] as x is clipped; 1 for x on the first bin, so that below >= 0
    above = torch.bucketize(x, bins).clamp(min=1)
    below = above - 1
    lo, hi = bins[below], bins[above]
    w_hi = (x - lo) / (hi - lo)  # (...) in [0, 1]; 1 for x on a bin (all weight on ``above``)
    weights = bins.new_zeros(*x.shape, num_bins)
    weights.scatter_(-1, below.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    weights.scatter_add_(-1, above.unsqueeze(-1), w_hi.unsqueeze(-1))
    return weights


def twohot_decode(logits: Tensor, bins: Tensor) -> Tensor:
    """Expected value of the categoricals with logits (..., K) over ``bins`` (K,): (...) = Σ_k softmax(logits)_k · bins_k."""
    _check_bins(bins)
    if logits.shape[-1] != bins.shape[0]:
        raise ValueError(f"logits: expected a last dim of {bins.shape[0]} (one per bin), got shape {tuple(logits.shape)}")
    return softmax(logits) @ bins.to(logits.dtype)


def twohot_loss(logits: Tensor, target: Tensor, bins: Tensor) -> Tensor:
    """Cross-entropy (...) of logits (..., K) against the two-hot encoding of targets (...) over ``bins`` (K,)."""
    weights = twohot_encode(target, bins).to(logits.dtype)  # (..., K)
    return -(weights * log_softmax(logits)).sum(-1)
