"""GAE: the vectorized version equals a plain per-element Python loop, including ends and truncation bootstrap."""

import pytest
import torch

from agents.gae import gae


def _loop_gae(rewards, values, dones, truncated, boot, last, gamma, lam):
    """Textbook GAE, one scalar sequence at a time."""
    T = rewards.shape[0]
    flat = [x.reshape(T, -1) for x in (rewards, values, dones, truncated, boot)]
    last = last.reshape(-1)
    adv = torch.zeros_like(flat[0])
    for j in range(flat[0].shape[1]):
        r, v, d, tr, b = (x[:, j].tolist() for x in flat)
        running = 0.0
        for t in reversed(range(T)):
            if d[t]:
                next_v = b[t] if tr[t] else 0.0
                running = r[t] + gamma * next_v - v[t]
            else:
                next_v = v[t + 1] if t + 1 < T else float(last[j])
                running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            adv[t, j] = running
    adv = adv.reshape(rewards.shape)
    return adv, adv + values


def _random_rollout(T=13, E=3, N=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, E, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, E, N, generator=g, dtype=torch.float64)
    dones = torch.rand(T, E, N, generator=g) < 0.25
    truncated = dones & (torch.rand(T, E, N, generator=g) < 0.5)
    boot = torch.randn(T, E, N, generator=g, dtype=torch.float64)
    last = torch.randn(E, N, generator=g, dtype=torch.float64)
    assert dones.any() and truncated.any() and (dones & ~truncated).any()
    return rewards, values, dones, truncated, boot, last


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 1.0), (1.0, 0.0)])
def test_vectorized_equals_python_loop(gamma, lam):
    """The vectorized GAE equals a per-sequence Python loop on a random rollout with ends and truncations."""
    data = _random_rollout()
    adv, ret = gae(*data, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _loop_gae(*data, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)


def test_termination_cuts_and_truncation_bootstraps():
    """One sequence of 3 steps ending after step 1, then a new trajectory; λ=1 gives Monte-Carlo returns."""
    rewards = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    values = torch.tensor([0.5, 0.25, 3.0], dtype=torch.float64)
    dones = torch.tensor([False, True, False])
    boot = torch.tensor([0.0, 10.0, 0.0], dtype=torch.float64)
    last = torch.tensor(8.0, dtype=torch.float64)
    g = 0.5
    # terminated: the bootstrap value is ignored
    _, ret = gae(rewards, values, dones, torch.zeros(3, dtype=torch.bool), boot, last, gamma=g, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([1 + g * 2, 2.0, 4 + g * 8], dtype=torch.float64))
    # truncated: V(final state) = 10 continues the return, never the next stored value 3.0
    _, ret = gae(rewards, values, dones, torch.tensor([False, True, False]), boot, last, gamma=g, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([1 + g * (2 + g * 10), 2 + g * 10, 4 + g * 8], dtype=torch.float64))
    # λ=0: one-step TD targets
    adv, _ = gae(rewards, values, dones, torch.tensor([False, True, False]), boot, last, gamma=g, lam=0.0)
    td = [1 + g * 0.25 - 0.5, 2 + g * 10 - 0.25, 4 + g * 8 - 3.0]
    torch.testing.assert_close(adv, torch.tensor(td, dtype=torch.float64))


def test_zero_discount_gives_one_step_rewards():
    """γ = 0 is allowed: every advantage is r_t - V_t and every return r_t, whatever λ and the ends."""
    r, v, d, tr, b, last = _random_rollout(T=4, E=2, N=1)
    adv, ret = gae(r, v, d, tr, b, last, gamma=0.0, lam=0.95)
    torch.testing.assert_close(adv, r - v)
    torch.testing.assert_close(ret, r)


@pytest.mark.parametrize("name", ["values", "dones", "truncated", "bootstrap_values"])
def test_bad_shape_names_the_argument(name):
    """Each per-step input must have the rewards' shape; the error names it and both shapes."""
    args = dict(
        zip(["rewards", "values", "dones", "truncated", "bootstrap_values", "last_values"], _random_rollout(T=4, E=2, N=1))
    )
    args[name] = args[name][:3]
    with pytest.raises(ValueError, match=rf"^{name}: expected shape \(4, 2, 1\) \(as rewards\), got \(3, 2, 1\)$"):
        gae(**args, gamma=0.99, lam=0.95)


def test_bad_input():
    """Scalar rewards, a wrong last_values shape, truncation without an end, γ or λ outside [0, 1]: anchored messages."""
    r, v, d, tr, b, last = _random_rollout(T=4, E=2, N=1)
    with pytest.raises(ValueError, match=r"^rewards: expected shape \(T, \.\.\.\), got \(\)$"):
        gae(r[0, 0, 0], v, d, tr, b, last, 0.99, 0.95)
    with pytest.raises(ValueError, match=r"^last_values: expected shape \(2, 1\), got \(1, 1\)$"):
        gae(r, v, d, tr, b, last[:1], 0.99, 0.95)
    with pytest.raises(
        ValueError, match=r"^truncated: expected truncated steps to be done as well, got truncated=True where dones=False$"
    ):
        gae(r, v, torch.zeros_like(d), torch.ones_like(tr), b, last, 0.99, 0.95)
    for gamma, lam, match in [
        (1.5, 0.95, r"^gamma: expected a value in \[0, 1\], got 1.5$"),
        (-0.1, 0.95, r"^gamma: expected a value in \[0, 1\], got -0.1$"),
        (0.99, -0.1, r"^lam: expected a value in \[0, 1\], got -0.1$"),
        (0.99, 1.5, r"^lam: expected a value in \[0, 1\], got 1.5$"),
    ]:
        with pytest.raises(ValueError, match=match):
            gae(r, v, d, tr, b, last, gamma, lam)


def test_discounts_weigh_each_step_as_mamba_and_mabl_lambda_returns():
    """Per-step discounts d_t (a predicted continuation): the returns are the λ-returns MAMBA's and MABL's code compute
    (``compute_return``: R_t = r_t + γ d_t ((1 - λ) V_{t+1} + λ R_{t+1}), R_T = V(s_T)); all-ones d is γ alone."""
    r, v, _, _, b, last = _random_rollout(T=6, E=2, N=3)
    never = torch.zeros_like(r, dtype=torch.bool)
    d = torch.rand(r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    _, ret = gae(r, v, never, never, b, last, gamma, lam, discounts=d)
    next_v = torch.cat([v[1:], last[None]])
    expected, running = torch.empty_like(r), last
    for t in reversed(range(6)):
        running = r[t] + gamma * d[t] * ((1 - lam) * next_v[t] + lam * running)
        expected[t] = running
    torch.testing.assert_close(ret, expected, rtol=0, atol=1e-12)
    # by hand, λ = 1, two steps: R_1 = r_1 + γ d_1 V(s_2), R_0 = r_0 + γ d_0 R_1
    one = torch.zeros(2, dtype=torch.bool)
    _, ret = gae(torch.tensor([1.0, 2.0]), torch.tensor([0.3, 0.7]), one, one, torch.zeros(2), torch.tensor(10.0), 0.5,
                 1.0, discounts=torch.tensor([0.5, 0.25]))  # fmt: skip
    torch.testing.assert_close(ret, torch.tensor([1 + 0.25 * (2 + 0.125 * 10), 2 + 0.125 * 10]))
    for dtype in (torch.float64, torch.float32):  # all-ones discounts change no bit
        data = [x.to(dtype) if x.is_floating_point() else x for x in _random_rollout()]
        plain = gae(*data, gamma=0.99, lam=0.95)
        ones = gae(*data, gamma=0.99, lam=0.95, discounts=torch.ones(13, 3, 2, dtype=dtype))
        assert all(torch.equal(a, o) for a, o in zip(plain, ones))


def test_bad_discounts():
    r, v, d, tr, b, last = _random_rollout(T=4, E=2, N=1)
    with pytest.raises(ValueError, match=r"^discounts: expected shape \(4, 2, 1\) \(as rewards\), got \(4, 2\)$"):
        gae(r, v, d, tr, b, last, 0.99, 0.95, discounts=torch.ones(4, 2))
    with pytest.raises(TypeError, match=r"^discounts: expected dtype torch.float64 \(as values\), got torch.float32$"):
        gae(r, v, d, tr, b, last, 0.99, 0.95, discounts=torch.ones(4, 2, 1))
    with pytest.raises(ValueError, match=r"^discounts: expected values in \[0, 1\], got 0.0 .. 1.5$"):
        gae(r, v, d, tr, b, last, 0.99, 0.95, discounts=torch.tensor([0.0, 1.5], dtype=torch.float64).repeat(4, 1)[..., None])
    # a continuation of exactly 0 is allowed: nothing after that step counts (one-step return r_t)
    never = torch.zeros_like(d)
    zero_at_1 = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)[:, None, None].expand(4, 2, 1)
    _, ret = gae(r, v, never, never, b, last, 0.99, 0.95, discounts=zero_at_1)
    torch.testing.assert_close(ret[1], r[1])
