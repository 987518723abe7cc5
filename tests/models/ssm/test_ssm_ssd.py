"""The chunked SSD algorithm equals the plain recurrence, in values and gradients, across episode resets."""

import pytest
import torch

from wmenv.models.ssm.ssd import segsum, ssd_chunked, ssd_naive

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(dtype, batch=3, length=41, heads=4, p=3, groups=2, n=5, seed=0, d_per_channel=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, p, generator=g, dtype=dtype)
    dt = torch.rand(batch, length, heads, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(heads, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(batch, length, groups, n, generator=g, dtype=dtype)
    C = torch.randn(batch, length, groups, n, generator=g, dtype=dtype)
    D = torch.randn(heads, p, generator=g, dtype=dtype) if d_per_channel else torch.randn(heads, generator=g, dtype=dtype)
    resets = torch.rand(batch, length, generator=g) < 0.1
    resets[0, 0] = resets[1, 8] = resets[2, length - 1] = True  # first step, a chunk boundary, the last step
    h0 = torch.randn(batch, heads, p, n, generator=g, dtype=dtype)
    return [x, dt, A, B, C, D], resets, h0


def test_segsum_is_the_sum_over_each_segment():
    x = torch.tensor([1.0, 2.0, 4.0])
    expected = torch.tensor([[0.0, -torch.inf, -torch.inf], [2.0, 0.0, -torch.inf], [6.0, 4.0, 0.0]])
    assert torch.equal(segsum(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("d_per_channel", [False, True])
def test_chunked_equals_loop_with_resets_and_initial_state(dtype, chunk, d_per_channel):
    args, resets, h0 = _inputs(dtype, d_per_channel=d_per_channel)
    y, h = ssd_chunked(*args, chunk_size=chunk, resets=resets, h0=h0)
    y_loop, h_loop = ssd_naive(*args, resets=resets, h0=h0)
    torch.testing.assert_close(y, y_loop, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(h, h_loop, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("chunk", [4, 16])
def test_chunked_gradients_equal_loop_gradients_and_are_finite(chunk):
    args, resets, h0 = _inputs(torch.float64, length=29)
    leaves = [t.clone().requires_grad_(True) for t in [*args, h0]]
    w_y, w_h = torch.randn(3, 29, 4, 3, dtype=torch.float64), torch.randn(3, 4, 3, 5, dtype=torch.float64)

    def grads(fn, **kw):
        y, h = fn(*leaves[:6], resets=resets, h0=leaves[6], **kw)
        return torch.autograd.grad((y * w_y).sum() + (h * w_h).sum(), leaves)

    for g, g_loop, name in zip(grads(ssd_chunked, chunk_size=chunk), grads(ssd_naive), "x dt A B C D h0".split()):
        assert torch.isfinite(g).all(), f"grad of {name} is not finite (the -inf log-decays of resets leaked)"
        torch.testing.assert_close(g, g_loop, atol=1e-10, rtol=1e-10, msg=f"grad of {name}")


def test_same_inputs_same_bits():
    args, resets, h0 = _inputs(torch.float32, length=100)
    a = ssd_chunked(*args, chunk_size=16, resets=resets, h0=h0)
    b = ssd_chunked(*args, chunk_size=16, resets=resets, h0=h0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
