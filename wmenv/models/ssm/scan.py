"""Mamba-1's selective scan in pure PyTorch: a blocked parallel scan, the plain loop, and the loop compiled.

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

On one CPU core the doubling scan's extra work (log2(C) passes instead of one) outweighs its shorter
Python loop at the short sequences MAPPO trains on: the plain step loop under autograd
(`selective_scan_naive`) is 1.5-4x faster at L = 10, and the same loop through `torch.compile`
(`selective_scan_compiled`), which fuses each step's elementwise work, 3-13x. `selective_scan`
chooses between the three (BENCHMARKS.md, "Mamba-1 training path").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from wmenv.checks import check_choice
from wmenv.tensor_ops import compiled

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
    keep, h0 = _prepare(u, A, resets, h0)
    y, h_last = _SelectiveScan.apply(u, delta, A, B, C, keep, h0, block)
    return y + u * D, h_last


def _scan_steps(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    keep: torch.Tensor | None,
    h: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``C_t . h_t`` (B, T, D) and the last state (B, D, N), one step at a time from the state ``h`` (B, D, N).

    Each step discretizes only its own inputs, so its temporaries are (B, D, N); autograd keeps the states
    for the backward pass. Run eagerly by `selective_scan_naive` and through `torch.compile` (where the
    steps fuse into a few loops) by `selective_scan_compiled`.
    """
    ys = []
    for t in range(u.shape[1]):
        decay = torch.exp(delta[:, t, :, None] * A)  # (B, D, N)
        if keep is not None:
            decay = decay * keep[:, t, None, None]
        h = decay * h + (delta[:, t] * u[:, t]).unsqueeze(-1) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


def _prepare(
    u: torch.Tensor, A: torch.Tensor, resets: torch.Tensor | None, h0: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``keep`` (B, L) = 1 - resets (or ``None``) and the initial state (zeros when ``h0`` is ``None``)."""
    keep = None if resets is None else 1.0 - resets.to(u.dtype)
    h = h0 if h0 is not None else u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    return keep, h


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
    """`selective_scan_ref` as a Python loop over time: the definition the other scans are tested against.

    Each step discretizes only its own inputs, so the loop's memory and backward stay O(L).
    """
    keep, h = _prepare(u, A, resets, h0)
    y, h = _scan_steps(u, delta, A, B, C, keep, h)
    return y + u * D, h


COMPILE_CHUNK = 16
"""Steps per call of the compiled loop: longer sequences run in pieces of this length (the last one padded)."""


@functools.cache
def _compiled_steps() -> Callable:
    return compiled(_scan_steps)


def selective_scan_compiled(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk: int = COMPILE_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan_naive`'s loop through `torch.compile`, in pieces of at most ``chunk`` steps.

    The compiler unrolls the loop, so a piece's compile time grows with its length: a sequence of up to
    ``chunk`` steps is one piece (one compile per distinct length), a longer one runs in ``chunk``-step
    pieces with the last padded by steps that leave the state unchanged (delta 0, no reset), so every
    piece has one shape. Where compiling fails it warns once and runs the plain loop. Arguments and
    returns as in `selective_scan_ref`.
    """
    keep, h = _prepare(u, A, resets, h0)
    keep = torch.ones_like(u[..., 0]) if keep is None else keep  # one graph with and without resets
    steps, length = _compiled_steps(), u.shape[1]
    if length <= chunk:
        y, h = steps(u, delta, A, B, C, keep, h)
        return y + u * D, h
    pad = -length % chunk
    xs = [F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B, C)] + [F.pad(keep, (0, pad), value=1.0)]
    ys = []
    for start in range(0, length + pad, chunk):
        u_k, delta_k, B_k, C_k, keep_k = (t[:, start : start + chunk] for t in xs)
        y_k, h = steps(u_k, delta_k, A, B_k, C_k, keep_k, h)
        ys.append(y_k)
    return torch.cat(ys, dim=1)[:, :length] + u * D, h


ScanImpl = Literal["auto", "blocked", "loop", "compiled"]
"""How `selective_scan` runs the recurrence (see there)."""

COMPILE_MIN_WORK = 1 << 18
"""``"auto"`` compiles sequences whose states hold at least this many numbers (B·L·D·N)."""


def resolve_scan(impl: ScanImpl, work: int, device: torch.device) -> Literal["blocked", "loop", "compiled"]:
    """The formulation ``impl`` stands for, for a sequence on ``device`` whose states hold ``work`` = B·L·D·N numbers.

    ``"auto"`` on the CPU is ``"compiled"`` from `COMPILE_MIN_WORK` on (where the compile time pays back), else
    ``"loop"``; on other devices, where neither was measured, the blocked scan.

    Raises:
        ValueError: ``impl`` is not one of `ScanImpl`.
    """
    check_choice("impl", impl, get_args(ScanImpl))
    if impl == "auto":
        if device.type != "cpu":
            return "blocked"
        return "compiled" if work >= COMPILE_MIN_WORK else "loop"
    return impl


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    impl: ScanImpl = "auto",
    block: int = SCAN_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective SSM by one of the three equal formulations.

    - ``"blocked"``: `selective_scan_ref`, the doubling scan; keeps only one state per block for the
      backward pass (the least memory), but does several times the loop's elementwise work.
    - ``"loop"``: `selective_scan_naive`, autograd through the step loop (keeps every state).
    - ``"compiled"``: `selective_scan_compiled`, the loop fused by `torch.compile` (seconds to compile
      per shape, then several times faster than the loop on CPU).
    - ``"auto"``: see `resolve_scan` (on the CPU: compiled for large batches, else the loop).

    Arguments and returns as in `selective_scan_ref`; ``block`` is used by ``"blocked"`` only.
    """
    impl = resolve_scan(impl, u.shape[0] * u.shape[1] * A.numel(), u.device)
    if impl == "blocked":
        return selective_scan_ref(u, delta, A, B, C, D, resets, h0, block)
    if impl == "loop":
        return selective_scan_naive(u, delta, A, B, C, D, resets, h0)
    return selective_scan_compiled(u, delta, A, B, C, D, resets, h0)
