"""Mamba-2's state-space duality (SSD) in pure PyTorch: the chunked algorithm and the plain loop it must equal.

Glossary (one letter per dimension):
    B  batch
    L  sequence length (time)
    K  number of chunks, Q chunk length (L = K * Q after padding)
    H  heads, P head dim, G groups of B/C (H is a multiple of G), N state size

Per head the decay is a scalar, ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T`` (P x N) and
``y_t = h_t C_t + D x_t``. The chunked form (Dao & Gu 2024, the ``ssd_minimal_discrete`` listing):
within each chunk the outputs are one masked attention-like product, and only the chunk-end states
pass between chunks. Episode starts set the log-decay to -inf, so every decay product that crosses
one is exactly zero; products are built by cumulative sums of log-decays that never subtract two of
them (``segsum``), so -inf never meets -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Segment sums ``out[..., i, j] = sum_{j < k <= i} x[..., k]`` for ``i >= j``, ``-inf`` above the diagonal.

    Args:
        x: (..., T) log-decays (may hold -inf).

    Returns:
        (..., T, T) segment sums.
    """
    length = x.shape[-1]
    x = repeat(x, "... i -> ... i j", j=length)  # (..., T, T): column j holds x
    strict = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=-1)
    out = torch.cumsum(x.masked_fill(~strict, 0.0), dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~lower, -torch.inf)


def _heads(BC: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, G, N) group projections -> (B, L, H, N), head h reading group h // (H / G)."""
    return repeat(BC, "b l g n -> b l (g r) n", r=heads // BC.shape[2])


def _skip(D: torch.Tensor) -> torch.Tensor:
    """(H,) or (H, P) skip weights as (H, P)-broadcastable."""
    return D[:, None] if D.dim() == 1 else D


def _log_decay(dt: torch.Tensor, A: torch.Tensor, resets: torch.Tensor | None) -> torch.Tensor:
    """(B, L, H) ``dt * A``, -inf where an episode starts."""
    log_decay = dt * A
    if resets is not None:
        log_decay = log_decay.masked_fill(resets.bool().unsqueeze(-1), -torch.inf)
    return log_decay


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's SSD over a sequence by the chunked algorithm.

    Args:
        x: (B, L, H, P) input.
        dt: (B, L, H) step sizes (softplus already applied).
        A: (H,) scalar state decay per head (negative).
        B: (B, L, G, N) input projections.
        C: (B, L, G, N) output projections.
        D: (H,) or (H, P) skip connection.
        chunk_size: Q, the chunk length.
        resets: (B, L) 1 where an episode starts: the state entering that step is zeroed.
        h0: (B, H, P, N) state before the first step; zeros when ``None``.

    Returns:
        y: (B, L, H, P) outputs; h_last: (B, H, P, N) the state after the last step.
    """
    length, heads = x.shape[1], x.shape[2]
    log_decay = _log_decay(dt, A, resets)
    xdt = x * dt.unsqueeze(-1)
    Bh, Ch = _heads(B, heads), _heads(C, heads)
    chunk = min(chunk_size, length)
    pad = -length % chunk
    if pad:  # padded steps: decay 1, input 0, so the last state is carried through unchanged
        xdt, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bh, Ch))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    xdt, Bh, Ch = (rearrange(t, "b (k q) h e -> b k q h e", q=chunk) for t in (xdt, Bh, Ch))  # (B, K, Q, H, .)
    log_decay = rearrange(log_decay, "b (k q) h -> b h k q", q=chunk)  # (B, H, K, Q)
    cum = torch.cumsum(log_decay, dim=-1)  # (B, H, K, Q): log-decay from each chunk's start

    # 1. outputs from inputs of the same chunk
    within = torch.exp(segsum(log_decay))  # (B, H, K, Q, Q)
    scores = einsum(Ch, Bh, "b k q h n, b k s h n -> b h k q s") * within
    y = einsum(scores, xdt, "b h k q s, b k s h p -> b k q h p")
    # 2. each chunk's end state from its own inputs
    to_end = within[..., -1, :]  # (B, H, K, Q): decay from step s to the chunk's end
    states = einsum(Bh, to_end, xdt, "b k q h n, b h k q, b k q h p -> b k h p n")
    # 3. pass states across chunks
    if h0 is None:
        h0 = x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1])
    states = torch.cat([h0.unsqueeze(1), states], dim=1)  # (B, K+1, H, P, N)
    across = torch.exp(segsum(F.pad(cum[..., -1], (1, 0))))  # (B, H, K+1, K+1)
    states = einsum(across, states, "b h z k, b k h p n -> b z h p n")
    entering, h_last = states[:, :-1], states[:, -1]
    # 4. outputs from the state entering each chunk
    y = y + einsum(Ch, entering, torch.exp(cum), "b k q h n, b k h p n, b h k q -> b k q h p")
    y = rearrange(y, "b k q h p -> b (k q) h p")[:, :length]
    return y + x * _skip(D), h_last


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ssd_chunked` as a Python loop over time: the definition the chunked algorithm is tested against."""
    heads = x.shape[2]
    decay = torch.exp(_log_decay(dt, A, resets))  # (B, L, H)
    Bh, Ch = _heads(B, heads), _heads(C, heads)
    h = h0 if h0 is not None else x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1])
    ys = []
    for x_t, dt_t, decay_t, B_t, C_t in zip(*(t.unbind(1) for t in (x, dt, decay, Bh, Ch))):  # unbind: O(L) backward
        h = h * decay_t[:, :, None, None] + einsum(x_t * dt_t[..., None], B_t, "b h p, b h n -> b h p n")
        ys.append(einsum(h, C_t, "b h p n, b h n -> b h p"))
    return torch.stack(ys, dim=1) + x * _skip(D), h
