"""Mamba-1's selective scan in pure PyTorch: a blocked parallel scan, and the plain loop it must equal.

Glossary (one letter per dimension):
    B  batch
    L  sequence length (time)
    D  channels (``d_inner`` of the block)
    N  SSM state size (``d_state``)
    C  block length of the scan

The recurrence is ``h_t = a_t * h_{t-1} + b_t`` elementwise over ``(D, N)``, with
``a_t = exp(delta_t A)`` (zero where an episode starts) and ``b_t = delta_t B_t u_t``; the output is
``y_t = C_t . h_t + D u_t``. `selective_scan_ref` walks the sequence in blocks of C steps; inside a
block the recurrence is solved for all C steps at once by log2(C) doubling steps (Hillis-Steele),
so the Python loop runs L / C times, never once per step. Like the CUDA kernel, it never keeps the
(B, L, D, N) states: the forward pass stores only the state entering each block, and the backward
pass recomputes each block's states from it and runs the adjoint recurrence
``g_t = dL/dh_t + a_{t+1} g_{t+1}`` through the block backwards, with the same doubling scan.
Working on one block at a time keeps the (B, C, D, N) temporaries in cache.
"""

from __future__ import annotations

import torch
from einops import einsum

SCAN_BLOCK = 16
"""C: default block length of `selective_scan_ref`."""


def _doubling_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive scan ``h_t = a_t h_{t-1} + b_t`` along dim 1 from a zero state, in log2(T) doubling steps.

    Args:
        a: (B, T, ...) decays; left unchanged.
        b: (B, T, ...) inputs; left unchanged.

    Returns:
        (B, T, ...) the states.
    """
    step, length = 1, a.shape[1]
    while step < length:
        h = b.clone()
        torch.addcmul(b[:, step:], a[:, step:], b[:, :-step], out=h[:, step:])
        if 2 * step < length:
            a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        b, step = h, 2 * step
    return b


def _doubling_scan_reverse(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Adjoint scan ``g_t <- g_t + a_{t+1} g_{t+1}`` along dim 1, from the last step backwards.

    Args:
        a: (B, T, ...) the forward decays ``a_t`` (``a_0`` is not used).
        g: (B, T, ...) direct gradients ``dL/dh_t``; left unchanged.

    Returns:
        (B, T, ...) the total gradients ``dL/dh_t``.
    """
    step, length = 1, a.shape[1]
    a = a[:, 1:]  # a[t] now couples step t to step t + 1
    while step < length:
        out = g.clone()
        torch.addcmul(g[:, :-step], a[:, : length - step], g[:, step:], out=out[:, :-step])
        if 2 * step < length:
            a = torch.cat([a[:, : length - 2 * step] * a[:, step : length - step], a[:, length - 2 * step :]], dim=1)
        g, step = out, 2 * step
    return g


def _block_terms(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decays ``exp(delta A)`` (zeroed where ``keep`` is 0) and inputs ``delta B u`` of one block.

    Returns:
        decay: (B, C, D, N); drive: (B, C, D, N); du: (B, C, D) ``delta * u``.
    """
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (B, C, D, N)
    if keep is not None:
        decay = decay * keep[:, :, None, None]
    du = delta * u
    return decay, du.unsqueeze(-1) * B.unsqueeze(2), du


def _block_states(decay: torch.Tensor, drive: torch.Tensor, h_in: torch.Tensor) -> torch.Tensor:
    """(B, C, D, N) states of one block entered with state ``h_in`` (B, D, N); ``decay`` is kept."""
    drive[:, 0] += decay[:, 0] * h_in
    return _doubling_scan(decay, drive)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, keep, h0, block):  # noqa: D102
        y = torch.empty_like(u)
        h, entering = h0, []
        for start in range(0, u.shape[1], block):
            sl = slice(start, start + block)
            entering.append(h)
            decay, drive, _ = _block_terms(u[:, sl], delta[:, sl], A, B[:, sl], None if keep is None else keep[:, sl])
            states = _block_states(decay, drive, h)
            y[:, sl] = (states @ C[:, sl].unsqueeze(-1)).squeeze(-1)
            h = states[:, -1]
        ctx.save_for_backward(u, delta, A, B, C, keep, torch.stack(entering))
        ctx.block = block
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_h):  # noqa: D102
        u, delta, A, B, C, keep, entering = ctx.saved_tensors
        block = ctx.block
        grads = [torch.zeros_like(t) for t in (u, delta, A, B, C)]
        g_u, g_delta, g_A, g_B, g_C = grads
        carry = grad_h if grad_h is not None else torch.zeros_like(entering[0])
        for i in reversed(range(entering.shape[0])):
            sl = slice(i * block, (i + 1) * block)
            gy, Bk = grad_y[:, sl], B[:, sl]
            decay, drive, du = _block_terms(u[:, sl], delta[:, sl], A, Bk, None if keep is None else keep[:, sl])
            states = _block_states(decay, drive, entering[i])
            # adjoint: g_t = dL/dh_t + a_{t+1} g_{t+1}, scanned backwards through the block
            g = gy.unsqueeze(-1) * C[:, sl].unsqueeze(2)  # (B, C, D, N) dL/dh_t from y_t
            g[:, -1] += carry
            g = _doubling_scan_reverse(decay, g)
            carry = decay[:, 0] * g[:, 0]
            h_prev = torch.cat([entering[i].unsqueeze(1), states[:, :-1]], dim=1)
            g_decay = g * h_prev * decay  # d/d(delta A) of exp(delta A) * keep
            g_d = (g_decay * A).sum(-1)
            g_A += (g_decay * delta[:, sl].unsqueeze(-1)).sum((0, 1))
            g_du = (g @ Bk.unsqueeze(-1)).squeeze(-1)
            g_delta[:, sl] = g_d + g_du * u[:, sl]
            g_u[:, sl] = g_du * delta[:, sl]
            g_B[:, sl] = (du.unsqueeze(2) @ g).squeeze(2)
            g_C[:, sl] = (gy.unsqueeze(2) @ states).squeeze(2)
        return g_u, g_delta, g_A, g_B, g_C, None, carry, None


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    block: int = SCAN_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective SSM over a sequence, by the blocked parallel scan.

    ``delta`` is already positive (softplus applied); the gate ``silu(z)`` is applied by the caller.

    Args:
        u: (B, L, D) input.
        delta: (B, L, D) step sizes.
        A: (D, N) continuous-time state matrix (negative).
        B: (B, L, N) input projections.
        C: (B, L, N) output projections.
        D: (D,) skip connection.
        resets: (B, L) 1 where an episode starts: the state entering that step is zeroed.
        h0: (B, D, N) state before the first step; zeros when ``None``.
        block: C, steps solved at once (memory and cache use grow with it, Python steps shrink).

    Returns:
        y: (B, L, D) outputs; h_last: (B, D, N) the state after the last step.
    """
    if h0 is None:
        h0 = u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    keep = None if resets is None else 1.0 - resets.to(u.dtype)
    y, h_last = _SelectiveScan.apply(u, delta, A, B, C, keep, h0, block)
    return y + u * D, h_last


def _discretize(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, resets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = None if resets is None else 1.0 - resets.to(u.dtype)
    decay, drive, _ = _block_terms(u, delta, A, B, keep)
    return decay, drive


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan_ref` as a Python loop over time: the definition the parallel scan is tested against."""
    decay, drive = _discretize(u, delta, A, B, resets)
    h = h0 if h0 is not None else u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = decay[:, t] * h + drive[:, t]
        ys.append(einsum(h, C[:, t], "b d n, b n -> b d"))
    return torch.stack(ys, dim=1) + u * D, h
