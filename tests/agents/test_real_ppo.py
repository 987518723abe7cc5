"""PPO on the real episodes: rows, rewards, ends and padding read as the episode format says, the old log-probabilities
are the acting actor's, the first PPO step sees a ratio of 1, and the loop runs it, resumes it exactly and refuses
what would make it off-policy."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_model_based import _small

from agents.collection import RealActor
from agents.critic import AttentionCritic
from agents.mappo import MAPPO
from agents.model_based import DreamSpec, ModelBasedConfig, run
from agents.policies import make_policy
from agents.real_ppo import pad_episodes, real_rollout
from wmenv.data.collect import Collector
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.envs import make
from wmenv.envs.vector import VecEnv
from wmenv.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mpe():
    """MPE's spec and a fresh `small` MAMBA world model of it."""
    _, spec = make("mpe:simple_spread_v3")
    torch.manual_seed(0)
    return spec, build_model("mamba", spec, "small").eval()


def _agent(spec, model, actor_input="latent", **mappo):
    """The loop's agent (GRU actor, attention critic) for ``actor_input``."""
    cfg = ModelBasedConfig()
    feat, state = model.feature_widths()
    width = feat if actor_input == "latent" else spec.obs_dim
    torch.manual_seed(1)
    policy = make_policy("gru", width, spec.n_actions, cfg.gru)
    dream_spec = DreamSpec(spec.n_agents, width, state, spec.n_actions, spec.discrete, spec.agents, spec.action_spaces)
    mappo_cfg = dataclasses.replace(cfg.mappo, **mappo)
    return MAPPO(dream_spec, mappo_cfg, policy=policy, critic=AttentionCritic(state, spec.n_agents, cfg.critic), seed=0)


def _episode(spec, rows, rng, terminate=None, all_terminal=False):
    """A whole episode of ``rows`` rows in the episode format; ``terminate`` (agent, row): that agent terminates on
    arriving at the row; the others are truncated on the last row, or terminate there with ``all_terminal``."""
    N, D, A = spec.n_agents, spec.obs_dim, spec.n_actions
    alive = np.ones((rows, N), bool)
    terminated, truncated = np.zeros((rows, N), bool), np.zeros((rows, N), bool)
    if terminate is not None:
        agent, row = terminate
        terminated[row, agent] = True
        alive[row + 1 :, agent] = False
    ends = alive[-1] & ~terminated[-1]
    (terminated if all_terminal else truncated)[-1] |= ends
    action = rng.integers(0, A, (rows, N))
    action[-1] = 0
    live = alive & ~(terminated | truncated)
    action[~live] = 0
    reward = rng.normal(size=(rows, N)).astype(np.float32)
    reward[0] = 0
    reward[~alive] = 0
    flags = np.zeros(rows, bool)
    return {
        "obs": (rng.normal(size=(rows, N, D)) * alive[..., None]).astype(np.float32),
        "state": rng.normal(size=(rows, spec.state_dim)).astype(np.float32),
        "action_mask": np.ones((rows, N, A), bool), "alive": alive, "action": action, "reward": reward,
        "terminated": terminated, "truncated": truncated, "is_first": np.r_[True, flags[1:]],
        "is_last": np.r_[flags[:-1], True], "is_terminal": np.r_[flags[:-1], all_terminal],
    }  # fmt: skip


def test_rows_rewards_ends_and_padding(mpe):
    spec, model = mpe
    rng = np.random.default_rng(0)
    a = _episode(spec, 6, rng, terminate=(1, 3))  # agent 1 terminates on arriving at row 3; 0 and 2 truncated at row 5
    b = _episode(spec, 4, rng, all_terminal=True)  # everyone terminates on arriving at row 3; padded to 6 rows
    agent = _agent(spec, model, normalize_advantages=False, gamma=0.9, gae_lambda=0.8)
    s = real_rollout(agent, model, [a, b], "latent", seed=0)
    assert (s.length, s.num_envs, s.n_agents) == (5, 2, 3)
    live_a = torch.ones(5, 3, dtype=torch.bool)
    live_a[3:, 1] = False  # ended at row 3: acts on rows 0-2 only
    assert torch.equal(s.alive[:, 0], live_a)
    assert s.alive[:3, 1].all() and not s.alive[3:, 1].any()  # b's padding is invalid
    # a step's reward is the one received on arriving at the next row, on rows where the agent acts
    torch.testing.assert_close(s.rewards[:, 0], torch.from_numpy(a["reward"][1:]) * live_a)
    torch.testing.assert_close(s.rewards[:3, 1], torch.from_numpy(b["reward"][1:]))
    assert (s.rewards[3:, 1] == 0).all()
    # ends: agent 1 of a terminates after step 2; a's others are truncated (bootstrapped) after step 4; b terminates
    assert s.dones[2, 0, 1] and not s.truncated[2, 0, 1] and not s.dones[:2, 0].any()
    assert s.dones[4, 0].all() and s.truncated[4, 0].tolist() == [True, False, True]
    assert s.dones[2, 1].all() and not s.truncated[:, 1].any() and s.dones[3:, 1].all()
    assert (s.bootstrap_values[4, 0, [0, 2]] != 0).all() and (s.bootstrap_values[:4] == 0).all()
    # recurrent states restart at the episode's start and after an agent's own end
    assert s.resets[0].all() and s.resets[3, 0, 1] and not s.resets[1:3, 0].any() and not s.resets[3, 0, [0, 2]].any()
    assert torch.equal(s.actions[:, 0], torch.from_numpy(a["action"][:-1]))
    # a column does not depend on the episodes beside it (another episode of b's length: the same latent draws)
    alone = real_rollout(agent, model, [a, _episode(spec, 4, np.random.default_rng(5))], "latent", seed=0)
    for k in ("obs", "state", "log_probs", "values", "rewards", "dones", "bootstrap_values"):
        torch.testing.assert_close(getattr(alone, k)[:, 0], getattr(s, k)[:, 0], msg=k)
    # with a critic that values everything 0, the returns are the discounted λ-sums of the real rewards
    with torch.no_grad():
        for p in agent.critic.head.parameters():
            p.zero_()
    s = real_rollout(agent, model, [a, b], "latent", seed=0)
    _, returns = agent.advantages(s)
    r, gl = a["reward"][1:, 0], 0.9 * 0.8
    assert returns[0, 0, 0].item() == pytest.approx(sum(r[k] * gl**k for k in range(5)), rel=1e-5)
    r1 = a["reward"][1:4, 1]  # agent 1's return stops at its termination
    assert returns[0, 0, 1].item() == pytest.approx(r1[0] + gl * r1[1] + gl**2 * r1[2], rel=1e-5)


def test_pad_episodes_refuses_pieces_and_nothing(mpe):
    spec, _ = mpe
    ep = _episode(spec, 5, np.random.default_rng(1))
    piece = {**ep, "is_last": np.zeros(5, bool)}
    with pytest.raises(ValueError, match=r"whole episodes .* entries \[1\] are pieces"):
        pad_episodes([ep, piece])
    with pytest.raises(ValueError, match="at least one episode"):
        pad_episodes([])
    out = pad_episodes([ep, _episode(spec, 3, np.random.default_rng(2))])
    assert out["obs"].shape == (2, 5, 3, 18) and out["reset"][:, 0].all() and not out["alive"][1, 3:].any()


def test_old_log_probs_are_the_acting_actors(mpe):
    """A decoded actor scored on its own real episodes gives the log-probabilities it had when it acted, and PPO's
    first step on them sees a ratio of exactly 1 (chunk-start recurrent states included)."""
    spec, model = mpe
    agent = _agent(spec, model, "decoded")
    acted = []
    act = agent.act

    def recording(*args, **kw):
        actions, log_probs, state = act(*args, **kw)
        acted.append(log_probs.clone())
        return actions, log_probs, state

    agent.act = recording
    vec = VecEnv("mpe:simple_spread_v3", num_envs=1, seed=3)
    replay = EpisodeReplay(ReplayConfig(capacity=1000), spec=spec)
    with torch.no_grad():
        Collector(vec, replay)(50, RealActor(agent, 1, spec))
    vec.close()
    del agent.act
    assert replay.num_episodes == 2
    s = real_rollout(agent, model, [replay.episode(0), replay.episode(1)], "decoded", seed=0)
    behaviour = torch.stack(acted).reshape(2, 25, 3)  # (episode, step, agent)
    torch.testing.assert_close(s.log_probs.transpose(0, 1), behaviour, rtol=0, atol=1e-5)
    adv, ret = agent.advantages(s)
    _, stats = agent.loss(s.chunks(agent.config.chunk_length, adv, ret))
    assert float(stats["approx_kl"]) < 1e-9 and float(stats["clip_frac"]) == 0


def test_the_loop_runs_it_resumes_exactly_and_refuses_off_policy_data(tmp_path):
    first = run(_small(tmp_path / "a", 1, real_ppo=1))
    tags = EventAccumulator(str(tmp_path / "a")).Reload().Tags()["scalars"]
    assert {"real_ppo/policy_loss", "real_ppo/approx_kl", "real_ppo/episodes", "real_ppo/agent_steps"} <= set(tags)
    second = run(_small(tmp_path / "a", 2, real_ppo=1, resume=True))
    straight = run(_small(tmp_path / "b", 2, real_ppo=1))
    assert second["eval_returns"][:2] == first["eval_returns"] and second["eval_returns"] == straight["eval_returns"]
    without = run(_small(tmp_path / "c", 2))
    assert without["eval_returns"][2] != straight["eval_returns"][2]  # the real episodes moved the actor
    twice = run(_small(tmp_path / "e", 2, real_ppo=2))  # two updates on each iteration's episodes: further still
    assert twice["eval_returns"][2] not in (straight["eval_returns"][2], without["eval_returns"][2])
    # a prefill's random actions are not the actor's: PPO waits until every ending episode began after it
    # (60 prefill steps + 2 copies x 25-step episodes = 110: the collection starting at 120 real steps, the third)
    run(_small(tmp_path / "d", 3, real_ppo=1, prefill=60))
    steps = [e.step for e in EventAccumulator(str(tmp_path / "d")).Reload().Scalars("real_ppo/episodes")]
    assert steps == [180]
    with pytest.raises(ValueError, match="real_ppo: expected an integer >= 0"):
        ModelBasedConfig(real_ppo=-1)
    for kw, name in (({"overlap": "local"}, "overlap"), ({"stream": True}, "stream"), ({"explore": 0.1}, "explore")):
        with pytest.raises(ValueError, match=f"real_ppo: .*; {name}="):
            ModelBasedConfig(real_ppo=1, **kw)


@pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics not installed")
def test_continuous_actions_wait_out_the_default_prefill(tmp_path):
    """MaMuJoCo's Gaussian actor: the default prefill (one 30-step episode per copy, 60 steps) holds real PPO back until
    120 steps; then its update on the clipped real actions runs."""
    env = {"env_id": "mamujoco:HalfCheetah:2x3", "env_kwargs": {"max_episode_steps": 30}}
    result = run(_small(tmp_path, 3, real_ppo=1, **env))
    assert result["prefill"] == 60 and all(np.isfinite(r) for _, r in result["eval_returns"])
    logged = EventAccumulator(str(tmp_path)).Reload().Scalars("real_ppo/approx_kl")
    assert [e.step for e in logged] == [180] and np.isfinite(logged[0].value)


def test_the_loop_logs_the_mean_of_each_iterations_ppo_updates(tmp_path, monkeypatch):
    """``dream/*`` and ``real_ppo/*`` are means over the iteration's updates, not its last update's stats."""
    calls = []

    def update(self, storage, **kw):
        calls.append(len(calls) + 1)
        return {"policy_loss": torch.tensor(float(calls[-1]))}

    monkeypatch.setattr(MAPPO, "update", update)
    run(_small(tmp_path, 1, dream_updates=3, real_ppo=2))
    assert calls == [1, 2, 3, 4, 5]  # real PPO first (1, 2), then the dream's (3, 4, 5)
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.value for e in events.Scalars("real_ppo/policy_loss")] == [1.5]
    assert [e.value for e in events.Scalars("dream/policy_loss")] == [4.0]
