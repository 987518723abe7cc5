"""The blocked parallel and the compiled selective scans equal the plain recurrence, in values and gradients."""

import warnings

import pytest
import torch

from wmenv.models.ssm import scan
from wmenv.models.ssm.scan import (
    resolve_scan,
    selective_scan,
    selective_scan_compiled,
    selective_scan_naive,
    selective_scan_ref,
)

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


def _grads(fn, args, resets, h0, **kw):
    leaves = [t.clone().requires_grad_(True) for t in [*args, h0]]
    g = torch.Generator().manual_seed(5)
    y, h = fn(*leaves[:6], resets=resets, h0=leaves[6], **kw)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (
        h * torch.randn(h.shape, generator=g, dtype=h.dtype)
    ).sum()
    return (y, h, *torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("length", [4, 11])
def test_compiled_scan_equals_loop_in_values_and_gradients(length):
    """One piece (length <= chunk) and three pieces with the last padded by two steps that must leave the state alone."""
    args, resets, h0 = _inputs(torch.float32, batch=3, length=length)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")  # a fallback to the loop would pass unnoticed
        got = _grads(selective_scan_compiled, args, resets, h0, chunk=4)
    want = _grads(selective_scan_naive, args, resets, h0)
    for name, a, b in zip("y h_last u delta A B C D h0".split(), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"compiled vs loop: {name}")


def test_compiled_scan_warns_and_runs_the_loop_where_compiling_fails(monkeypatch):
    def broken(fn, **kwargs):
        def call(*a):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    scan._compiled_steps.cache_clear()
    try:
        args, resets, h0 = _inputs(torch.float64, length=9)
        with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
            y, h = selective_scan_compiled(*args, resets=resets, h0=h0, chunk=4)
        y_loop, h_loop = selective_scan_naive(*args, resets=resets, h0=h0)
        assert torch.equal(y, y_loop) and torch.equal(h, h_loop)
    finally:
        scan._compiled_steps.cache_clear()  # later tests get a real compiler again


@pytest.mark.parametrize("batch, expected", [(63, "loop"), (64, "compiled")])
def test_auto_compiles_only_where_the_states_are_large(monkeypatch, batch, expected):
    """B·L·D·N against COMPILE_MIN_WORK = 2^18: here L·D·N = 4·64·16 = 4096, so the boundary is B = 64."""
    called = []
    monkeypatch.setattr(scan, "selective_scan_compiled", lambda *a: called.append("compiled") or a[:2])
    monkeypatch.setattr(scan, "selective_scan_naive", lambda *a: called.append("loop") or a[:2])
    monkeypatch.setattr(scan, "selective_scan_ref", lambda *a: called.append("blocked") or a[:2])
    u, delta = torch.zeros(batch, 4, 64), torch.zeros(batch, 4, 64)
    A, BC = torch.zeros(64, 16), torch.zeros(batch, 4, 16)
    selective_scan(u, delta, A, BC, BC, torch.zeros(64))
    selective_scan(u, delta, A, BC, BC, torch.zeros(64), impl="blocked")
    assert called == [expected, "blocked"]
    # off the CPU, where no formulation was measured, "auto" keeps the blocked scan
    assert resolve_scan("auto", batch * 4 * 64 * 16, torch.device("cuda")) == "blocked"
    assert resolve_scan("compiled", 1, torch.device("cuda")) == "compiled"


@pytest.mark.parametrize("impl", ["blocked", "loop"])
def test_every_impl_gives_the_loop_result(impl):
    args, resets, h0 = _inputs(torch.float64, length=20)
    y, h = selective_scan(*args, resets=resets, h0=h0, impl=impl, block=4)
    y_loop, h_loop = selective_scan_naive(*args, resets=resets, h0=h0)
    torch.testing.assert_close(y, y_loop, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h, h_loop, atol=1e-10, rtol=1e-10)


def test_unknown_impl_is_named():
    args, _, _ = _inputs(torch.float64, length=3)
    with pytest.raises(ValueError, match="impl.*'fast'"):
        selective_scan(*args, impl="fast")
