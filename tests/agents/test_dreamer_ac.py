"""DRAMA's DreamerV3-style actor-critic: λ-returns, return scale and input normalization against hand-computed
cases; the slow critic's EMA; learning a bandit in a dream; determinism; bad configs."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agents.dreamer_ac import DreamerAC, DreamerACConfig, ReturnScale, RunningNorm, lambda_returns, return_range
from wmenv.dream import DreamVecEnv
from wmenv.envs.spec import EnvSpec
from wmenv.models.world_model import Prediction, WorldModel


def test_lambda_returns_by_hand():
    """γ = λ = 0.5. World 0 runs on; world 1 terminates at step 1; world 2 is truncated (restarted) after step 1."""
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    next_values = torch.tensor([[10.0, 1.0, 4.0], [20.0, 2.0, 8.0], [30.0, 3.0, 12.0]])
    terminated = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    restarted = torch.tensor([[False, False, False], [False, True, True], [False, False, False]])
    out = lambda_returns(rewards, next_values, terminated, restarted, 0.5, 0.5)
    expected = torch.tensor([[5.8125, 0.5, 2.0], [9.25, 1.0, 4.0], [17.0, 1.5, 6.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # λ = 1: discounted sums bootstrapped at the end; λ = 0: one-step targets
    mc = lambda_returns(rewards, next_values, torch.zeros_like(terminated), torch.zeros_like(restarted), 0.5, 1.0)
    discounted = [1 + 0.5 * 0 + 0.25 * 2 + 0.125 * 30, 0 + 0.5 * 2 + 0.25 * 30, 2 + 0.5 * 30]
    torch.testing.assert_close(mc[:, 0], torch.tensor(discounted))
    td = lambda_returns(rewards, next_values, terminated, restarted, 0.5, 0.0)
    torch.testing.assert_close(td, rewards + 0.5 * (~terminated) * next_values)
    with pytest.raises(ValueError, match=r"expected four \(H, B\) tensors"):
        lambda_returns(rewards, next_values[:2], terminated, restarted, 0.5, 0.5)


def test_return_scale_by_hand():
    returns = torch.arange(1.0, 101.0)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    lo, hi = return_range(returns, 0.05, 0.95)
    assert (float(lo), float(hi)) == (5.0, 95.0)  # the 5th and 95th smallest of 100
    scale = ReturnScale(0.99, (0.05, 0.95))
    assert scale.update(returns) == 1.0  # EMAs from 0: 0.05 and 0.95, a range below 1
    assert scale.update(returns) == pytest.approx((0.0199 * 95) - (0.0199 * 5))  # 1.791
    again = ReturnScale(0.99, (0.05, 0.95))
    again.load_state_dict(scale.state_dict())
    assert again.update(returns) == scale.update(returns)


def test_running_norm_matches_the_statistics_of_all_it_saw():
    norm = RunningNorm(3)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, 3, generator=g) * 3 + 1, torch.randn(7, 4, 3, generator=g) - 2
    norm(a), norm(b)
    seen = torch.cat([a, b.reshape(-1, 3)]).double()
    # the initial count (1e-4 of a unit-variance, zero-mean sample) shifts the statistics by about 1e-6
    torch.testing.assert_close(norm.mean.double(), seen.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.var.double(), seen.var(0, unbiased=False), atol=1e-4, rtol=1e-4)
    norm.eval()
    before = norm.mean.clone()
    out = norm(torch.full((2, 3), 1e6))
    assert torch.equal(norm.mean, before) and bool((out == 10).all())  # frozen in eval mode; clipped to ±10


class BanditModel(WorldModel):
    """One agent; every imagined step pays 1 for action 1 and 0 otherwise; features are noise; never ends."""

    def __init__(self) -> None:
        super().__init__()
        box = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.spec = EnvSpec("bandit:v0", ("agent",), {"agent": box}, {"agent": gym.spaces.Discrete(3)}, box, False, None)
        self.unused = nn.Parameter(torch.zeros(()))

    def loss(self, batch):
        raise NotImplementedError

    def observe(self, obs, actions, resets, state=None, generator=None, alive=None, *, global_state=None):
        raise NotImplementedError

    def initial(self, batch_size, generator=None):
        return {"x": torch.rand(batch_size, 1, 2, generator=generator), "r": torch.zeros(batch_size, 1)}

    def imagine(self, state, actions, generator=None, decode=False, present=None):
        nxt = {"x": torch.rand(state["x"].shape, generator=generator), "r": (actions == 1).float()}
        return nxt, self.predict(nxt, decode)

    def predict(self, state, decode=False):
        return Prediction(reward=state["r"], cont=torch.ones_like(state["r"]))

    def features(self, state):
        return state["x"]

    def critic_features(self, state):
        return state["x"][:, 0]


def _learner(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = DreamerACConfig(**{"lr": 1e-2, "horizon": 5, "layers": 1, "actor_hidden": 16, "critic_hidden": 16,
                             "gamma": 0.9, "entropy": 1e-3, **kw})  # fmt: skip
    return DreamerAC(2, 3, cfg)


def test_learns_the_paying_action_in_a_dream_and_runs_the_same_twice():
    def train():
        learner, dream = _learner(), DreamVecEnv(BanditModel(), 64, horizon=1000, seed=0)
        g, step, stats = torch.Generator().manual_seed(0), None, []
        for _ in range(60):
            traj, step = learner.imagine(dream, g, step)
            stats.append(learner.update(traj))
        return learner, stats

    learner, stats = train()
    probs = torch.softmax(learner.logits(torch.rand(100, 2)).detach(), -1)
    assert float(probs[:, 1].mean()) > 0.9, probs.mean(0)
    # λ-returns grow from about 5 steps of 1/3 (a uniform actor, values near 0) towards 1 / (1 - 0.9) = 10
    assert stats[0]["return_mean"] < 2 and stats[-1]["return_mean"] > 2 * stats[0]["return_mean"], (stats[0], stats[-1])
    assert train()[1] == stats


def test_slow_critic_follows_the_critic_by_ema_and_gets_no_gradient():
    learner, dream = _learner(slow_decay=0.9), DreamVecEnv(BanditModel(), 8, horizon=1000, seed=0)
    traj, _ = learner.imagine(dream, torch.Generator().manual_seed(0))
    slow = [p.clone() for p in learner.slow_critic.parameters()]
    learner.update(traj)
    for s_old, s_new, p in zip(slow, learner.slow_critic.parameters(), learner.critic.parameters()):
        assert s_new.grad is None and not s_new.requires_grad
        torch.testing.assert_close(s_new, 0.9 * s_old + 0.1 * p.detach())
    assert traj.features.shape == (5, 8, 2) and traj.actions.shape == traj.rewards.shape == (5, 8)


def test_bad_configs_and_dreams_are_named():
    for bad, match in (({"gamma": 1.5}, "gamma"), ({"percentiles": (0.9, 0.1)}, "percentiles"), ({"bins": 10}, "num_bins"),
                       ({"entropy": -1}, "entropy"), ({"horizon": 0}, "horizon")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DreamerACConfig(**bad)
