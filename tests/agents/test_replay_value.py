"""The critic's replay value loss: λ-returns of real windows by the recursion, read from the right rows, seeded, moving
the critic and nothing else, and in the loop (logged, resumed exactly)."""

import copy

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from toyvec import ToySpec, one_update_each, toy_rollout

from agents.critic import AttentionCritic, CriticConfig
from agents.model_based import ModelBasedConfig, run
from agents.replay_value import ValueTargets, replay_lambda_returns, replay_value_targets
from wmenv.data.collect import random_replay
from wmenv.fit import FitConfig
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

pytestmark = pytest.mark.usefixtures("one_thread")


def by_hand(reward, terminated, truncated, values, gamma, lam):
    """G_t = r_{t+1} + γ (1 - term_{t+1}) ((1 - λ) V_{t+1} + λ G_{t+1}); G_{t+1} = V_{t+1} on truncation and at the end."""
    W, T, N = reward.shape
    out = torch.zeros(W, T, N, dtype=torch.float64)
    for w in range(W):
        for n in range(N):
            out[w, T - 1, n] = values[w, T - 1, n]
            for t in range(T - 2, -1, -1):
                nxt = values[w, t + 1, n] if truncated[w, t + 1, n] else out[w, t + 1, n]
                cont = 0.0 if terminated[w, t + 1, n] else 1.0
                out[w, t, n] = reward[w, t + 1, n] + gamma * cont * ((1 - lam) * values[w, t + 1, n] + lam * nxt)
    return out


def test_lambda_returns_follow_the_recursion_ends_and_live_rows():
    g = torch.Generator().manual_seed(0)
    W, T, N = 3, 7, 2
    reward, values = torch.randn(W, T, N, generator=g), torch.randn(W, T, N, generator=g)
    terminated = torch.zeros(W, T, N, dtype=torch.bool)
    truncated = torch.zeros(W, T, N, dtype=torch.bool)
    terminated[0, 3, 1] = True  # agent 1 of window 0 terminates on arriving at row 3: absent afterwards
    truncated[1, 5, 0] = True  # agent 0 of window 1 is truncated on arriving at row 5
    alive = torch.ones(W, T, N, dtype=torch.bool)
    alive[0, 4:, 1] = False
    alive[1, 6:, 0] = False
    live = alive & ~(terminated | truncated)
    for gamma, lam in ((0.99, 0.95), (0.9, 0.0), (1.0, 1.0)):
        targets, valid = replay_lambda_returns(reward, terminated, truncated, live, values, gamma, lam)
        want = by_hand(reward.double(), terminated, truncated, values.double(), gamma, lam)
        torch.testing.assert_close(targets[valid].double(), want[valid], rtol=1e-5, atol=1e-5)
        assert torch.equal(targets[:, -1], values[:, -1])
    assert not valid[:, -1].any() and not valid[0, 3:, 1].any() and not valid[1, 5:, 0].any()
    assert valid[0, :3, 1].all() and valid[1, :5, 0].all() and valid[2, :-1].all()
    # the termination ends agent 1's return at row 3's reward; with γ = λ = 1 window 2's is the sum of what follows
    assert targets[0, 2, 1] == pytest.approx(float(reward[0, 3, 1]))
    assert targets[2, 0, 0] == pytest.approx(float(reward[2, 1:, 0].sum() + values[2, -1, 0]), rel=1e-5)
    with pytest.raises(ValueError, match=r"values: expected shape \(3, 7, 2\)"):
        replay_lambda_returns(reward, terminated, truncated, live, values[:, :-1], 0.9, 0.9)
    with pytest.raises(ValueError, match="T >= 2"):
        replay_lambda_returns(*(x[:, :1] for x in (reward, terminated, truncated, live, values)), 0.9, 0.9)


@pytest.fixture(scope="module")
def mpe():
    replay, spec = random_replay("mpe:simple_spread_v3", 300, num_envs=2)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).train()
    critic = AttentionCritic(model.feature_widths()[1], spec.n_agents, CriticConfig())
    return replay, spec, model, critic


def test_targets_are_the_windows_real_rewards_in_mappos_row_layout_and_repeat_with_the_seed(mpe):
    """With γ = 0 a row's target is the reward received on arriving at the next row, read from the same windows; rows
    come as N consecutive agents of one state; the same seed gives the same targets, another seed other windows."""
    replay, spec, model, critic = mpe
    W, T, N = 4, 6, spec.n_agents
    vt = replay_value_targets(model, critic, replay, W, T, gamma=0.0, lam=0.95, weight=0.3, seed=11)
    assert model.training, "the model's mode is restored"
    window = replay.sample(W, T, generator=11)
    reward = window["reward"].permute(0, 2, 1).reshape(W * N, T)  # (w n) t
    assert vt.state.shape == (W * N, T, model.feature_widths()[1]) and vt.targets.shape == vt.valid.shape == (W * N, T)
    assert torch.equal(vt.agent, torch.arange(N).repeat(W)) and torch.equal(vt.state[0], vt.state[N - 1])
    assert vt.resets[:, 0].all() and not vt.resets[:, 1:].any() and vt.weight == 0.3 and np.isfinite(vt.bias)
    assert vt.valid[:, :-1].all() and not vt.valid[:, -1].any()  # MPE agents live every row of a window
    torch.testing.assert_close(vt.targets[:, :-1], reward[:, 1:])
    again = replay_value_targets(model, critic, replay, W, T, gamma=0.99, lam=0.95, weight=0.3, seed=11)
    same = replay_value_targets(model, critic, replay, W, T, gamma=0.99, lam=0.95, weight=0.3, seed=11)
    other = replay_value_targets(model, critic, replay, W, T, gamma=0.99, lam=0.95, weight=0.3, seed=12)
    assert torch.equal(again.targets, same.targets) and torch.equal(again.state, same.state)
    assert not torch.equal(again.targets, other.targets)
    assert not torch.equal(again.targets, vt.targets), "γ > 0 adds the discounted future"
    with pytest.raises(ValueError, match="at least 2 rows"):
        replay_value_targets(model, critic, replay, W, 1, gamma=0.99, lam=0.95, weight=0.3, seed=11)


def test_value_targets_move_the_critic_toward_them_and_leave_the_actor_alone():
    agent, storage = toy_rollout()
    g = torch.Generator().manual_seed(1)
    B, T = 2 * ToySpec.n_agents, 6
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[:, -1] = False
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 0] = True
    state = torch.randn(B, T, ToySpec.state_dim, generator=g)
    vt = ValueTargets(state, torch.arange(3).repeat(2), resets, torch.full((B, T), 4.0), valid, 1.0, 0.0)

    def error(a):
        with torch.no_grad():
            v = a.critic.forward_sequence(state, vt.agent, resets, a.critic.initial_state(B))
            return float((a.critic.value_norm.denormalize(v) - 4.0)[valid].abs().mean())

    plain, grounded = one_update_each(agent, storage, "replay_value_loss", "policy", value_targets=vt)
    assert any(not torch.equal(p, q) for p, q in zip(plain.critic.parameters(), grounded.critic.parameters()))
    before = error(agent)
    for _ in range(15):
        grounded.update(copy.deepcopy(storage), value_targets=vt)
    assert error(grounded) < 0.5 * before, (before, error(grounded))


def _small(run_dir, iterations, **kw):
    kw = {"replay_value": 0.3, "replay_value_windows": 8, **kw}
    return ModelBasedConfig(
        iterations=iterations, real_steps=60, num_envs=2, fit_steps=5, dream_updates=2, dream_worlds=8, eval_episodes=1,
        fit=FitConfig(batch_size=4, progress=False), run_dir=str(run_dir), progress=False, **kw,
    )  # fmt: skip


def test_the_loop_grounds_its_critic_logs_the_bias_and_resumes_exactly(tmp_path):
    """The targets are seeded by the update count, so a resumed run repeats the uninterrupted one; the critic they move
    changes the actor's next updates (off: another run)."""
    straight = run(_small(tmp_path / "a", 2))
    tags = set(EventAccumulator(str(tmp_path / "a")).Reload().Tags()["scalars"])
    assert {"dream/replay_value_loss", "dream/replay_value_bias"} <= tags, tags
    run(_small(tmp_path / "b", 1))
    resumed = run(_small(tmp_path / "b", 2, resume=True))
    assert resumed["eval_returns"] == straight["eval_returns"] and resumed["real_returns"] == straight["real_returns"]
    off = run(_small(tmp_path / "c", 2, replay_value=0.0))
    assert "dream/replay_value_bias" not in EventAccumulator(str(tmp_path / "c")).Reload().Tags()["scalars"]
    assert off["eval_returns"][1:] != straight["eval_returns"][1:]


@pytest.mark.parametrize("kw", [{"replay_value": -0.1}, {"replay_value": float("nan")}, {"replay_value": True},
                                {"replay_value_windows": 0}])  # fmt: skip
def test_bad_replay_value_settings_are_refused(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"ModelBasedConfig.{name}"):
        ModelBasedConfig(**kw)
