"""The blocked parallel selective scan equals the plain recurrence, in values and gradients."""

import pytest
import torch

from wmenv.models.ssm.scan import selective_scan_naive, selective_scan_ref

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(dtype, batch=3, length=45, d=6, n=4, seed=0, p_reset=0.1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, d, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(batch, length, n, generator=g, dtype=dtype)
    C = torch.randn(batch, length, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    resets = torch.rand(batch, length, generator=g) < p_reset
    resets[0, 0] = resets[1, length // 2] = True  # an episode start first and one mid-sequence
    h0 = torch.randn(batch, d, n, generator=g, dtype=dtype)
    return [u, delta, A, B, C, D], resets, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block", [1, 3, 16, 64])
def test_scan_equals_loop_with_resets_and_initial_state(dtype, block):
    args, resets, h0 = _inputs(dtype)
    y, h = selective_scan_ref(*args, resets=resets, h0=h0, block=block)
    y_loop, h_loop = selective_scan_naive(*args, resets=resets, h0=h0)
    torch.testing.assert_close(y, y_loop, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(h, h_loop, atol=TOL[dtype], rtol=TOL[dtype])


def test_resets_cut_the_past_and_no_reset_keeps_it():
    args, _, h0 = _inputs(torch.float64, length=12)
    start = torch.zeros(3, 12, dtype=torch.bool)
    start[:, 5] = True
    y_cut, _ = selective_scan_ref(*args, resets=start, h0=h0)
    tail = [a[:, 5:] if a.dim() == 3 else a for a in args]
    y_tail, _ = selective_scan_ref(*tail)
    torch.testing.assert_close(y_cut[:, 5:], y_tail, atol=1e-12, rtol=0)
    y_kept, _ = selective_scan_ref(*args, h0=h0)
    assert (y_kept[:, 5:] - y_tail).abs().max() > 1e-3, "without a reset the state must carry over"


@pytest.mark.parametrize("block", [2, 16])
def test_scan_gradients_equal_loop_gradients(block):
    args, resets, h0 = _inputs(torch.float64, length=37)
    leaves = [t.clone().requires_grad_(True) for t in [*args, h0]]
    weights = torch.randn(3, 37, 6, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64)

    def grads(fn, **kw):
        y, h = fn(*leaves[:6], resets=resets, h0=leaves[6], **kw)
        return torch.autograd.grad((y * weights[0]).sum() + (h * weights[1]).sum(), leaves)

    names = "u delta A B C D h0".split()
    for g, g_loop, name in zip(grads(selective_scan_ref, block=block), grads(selective_scan_naive), names):
        torch.testing.assert_close(g, g_loop, atol=1e-10, rtol=1e-10, msg=f"grad of {name}")


def test_custom_backward_passes_gradcheck():
    args, resets, h0 = _inputs(torch.float64, batch=2, length=7, d=3, n=2)
    leaves = [t.clone().requires_grad_(True) for t in [*args, h0]]
    assert torch.autograd.gradcheck(lambda *t: selective_scan_ref(*t[:6], resets=resets, h0=t[6], block=3), leaves)


def test_same_inputs_same_bits():
    args, resets, h0 = _inputs(torch.float32, length=100)
    a = selective_scan_ref(*args, resets=resets, h0=h0)
    b = selective_scan_ref(*args, resets=resets, h0=h0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
