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

SCAN_BLOCK = 8
"""C: default block length of `selective_scan_ref`."""


def _doubling_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Inclusive scan along dim 1 from a zero state, in log2(T) doubling steps (Hillis-Steele).

    Forward: ``h_t = a_t h_{t-1} + b_t``. Reverse (the adjoint): ``h_t = b_t + a_{t+1} h_{t+1}``.
    Each step writes into the other of two buffers (``out=``), so nothing is allocated per step.

    Args:
        a: (B, T, ...) decays; left unchanged (with ``reverse``, ``a_0`` is not used).
        b: (B, T, ...) inputs; consumed (used as a buffer).

    Returns:
        (B, T, ...) the states.
    """
    length = a.shape[1]
    if reverse:
        a = a[:, 1:]  # a[t] now couples step t to step t + 1; the scan runs from the end
    b_next = torch.empty_like(b)
    a_bufs = (torch.empty_like(a), torch.empty_like(a)) if length > 2 else ()
    step, flip = 1, 0
    while step < length:
        n = length - step
        if reverse:  # h[:n] = b[:n] + a[:n] * b[step:]
            torch.addcmul(b[:, :n], a[:, :n], b[:, step:], out=b_next[:, :n])
            b_next[:, n:] = b[:, n:]
        else:  # h[step:] = b[step:] + a[step:] * b[:n]
            torch.addcmul(b[:, step:], a[:, step:], b[:, :n], out=b_next[:, step:])
            b_next[:, :step] = b[:, :step]
        b, b_next = b_next, b
        if 2 * step < length:  # decay products over 2 * step steps
            out, m = a_bufs[flip], a.shape[1] - step
            if reverse:
                torch.mul(a[:, :m], a[:, step:], out=out[:, :m])
                out[:, m:] = a[:, m:]
            else:
                torch.mul(a[:, step:], a[:, :m], out=out[:, step:])
                out[:, :step] = a[:, :step]
            a, flip = out, 1 - flip
        step *= 2
    return b


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
            h = states[:, -1].clone()  # not a view: the block's states are freed
        ctx.save_for_backward(u, delta, A, B, C, keep, torch.stack(entering))
        ctx.block = block
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_h):  # noqa: D102
        u, delta, A, B, C, keep, entering = ctx.saved_tensors
        block = ctx.block
        g_u, g_delta, g_B, g_C = (torch.empty_like(t) for t in (u, delta, B, C))  # every block writes its slice
        g_A = torch.zeros_like(A)  # summed over blocks
        carry = grad_h if grad_h is not None else torch.zeros_like(entering[0])
        for i in reversed(range(entering.shape[0])):
            sl = slice(i * block, (i + 1) * block)
            gy, Bk = grad_y[:, sl], B[:, sl]
            decay, drive, du = _block_terms(u[:, sl], delta[:, sl], A, Bk, None if keep is None else keep[:, sl])
            states = _block_states(decay, drive, entering[i])
            # adjoint: g_t = dL/dh_t + a_{t+1} g_{t+1}, scanned backwards through the block
            g = gy.unsqueeze(-1) * C[:, sl].unsqueeze(2)  # (B, C, D, N) dL/dh_t from y_t
            g[:, -1] += carry
            g = _doubling_scan(decay, g, reverse=True)
            carry = decay[:, 0] * g[:, 0]
            g_decay = g * decay  # d/d(delta A) of exp(delta A) * keep, times h_{t-1} below
            g_decay[:, 1:] *= states[:, :-1]
            g_decay[:, 0] *= entering[i]
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
    """`selective_scan_ref` as a Python loop over time: the definition the parallel scan is tested against.

    Each step discretizes only its own inputs, so the loop's memory and backward stay O(L).
    """
    keep = None if resets is None else 1.0 - resets.to(u.dtype)
    h = h0 if h0 is not None else u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t, (u_t, delta_t, B_t, C_t) in enumerate(zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1))):
        decay, drive, _ = _block_terms(
            u_t[:, None], delta_t[:, None], A, B_t[:, None], None if keep is None else keep[:, t, None]
        )
        h = decay[:, 0] * h + drive[:, 0]
        ys.append((h @ C_t.unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, dim=1) + u * D, h
