"""Latent agents on real envs: `LatentEnv` / `LatentGymEnv` observe reality through each agent's own filter."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test, parallel_seed_test

import wmenv
from wmenv.data.collect import random_replay
from wmenv.envs import make
from wmenv.fit import FitConfig, fit
from wmenv.latent import AgentFilters, LatentEnv, LatentGymEnv
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@pytest.fixture(scope="module")
def mpe_model():
    _, spec = make("mpe:simple_spread_v3")
    torch.manual_seed(0)
    return MAMBAWorldModel(spec, preset("small")).eval()


def latent_mpe(model, **kw):
    return LatentEnv(make("mpe:simple_spread_v3")[0], model, **kw)


def test_latent_env_passes_the_pettingzoo_api_and_seed_tests(mpe_model):
    env = latent_mpe(mpe_model)
    parallel_api_test(env, num_cycles=30)
    parallel_seed_test(lambda: latent_mpe(mpe_model))
    dream = wmenv.DreamEnv(mpe_model, obs="latent")
    for a in env.possible_agents:  # the same spaces a learner saw in the dream
        assert env.observation_space(a) == dream.observation_space(a) and env.action_space(a) == dream.action_space(a)
    assert env.state_space == dream.state_space


def test_latent_observations_are_the_models_posterior_of_the_real_episode(mpe_model):
    """Features seen through LatentEnv = observe_sequence over the same real episode (same seed), and state() = all of them."""
    env = latent_mpe(mpe_model, seed=0)
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(0)
    seen, actions = [obs], []
    for _ in range(6):
        act = {a: int(rng.integers(5)) for a in env.agents}
        actions.append([act[a] for a in env.possible_agents])
        obs, *_ = env.step(act)
        seen.append(obs)
    state = env.state()
    # the same episode, real observations, filtered by observe in one go
    env2, _ = make("mpe:simple_spread_v3")
    o, _ = env2.reset(seed=5)
    rows = [np.stack([o[a] for a in env2.possible_agents])]
    for act in actions:
        o, *_ = env2.step(dict(zip(env2.possible_agents, act)))
        rows.append(np.stack([o[a] for a in env2.possible_agents]))
    obs_t = torch.as_tensor(np.stack(rows))[None]  # (1, T, N, D)
    acts = torch.as_tensor(np.array(actions + [[0, 0, 0]]))[None]
    resets = torch.zeros(1, 7, dtype=torch.bool)
    resets[0, 0] = True
    prev = mpe_model._prev_actions(acts, resets)
    with torch.no_grad():
        posts, _ = mpe_model.rssm.observe_sequence(obs_t, prev, resets, None, torch.Generator().manual_seed(5))
    feats = mpe_model.features(posts)[0]  # (T, N, F)
    for t, step_obs in enumerate(seen):
        got = np.stack([step_obs[a] for a in env.possible_agents])
        np.testing.assert_allclose(got, feats[t].numpy(), atol=1e-5)
    np.testing.assert_allclose(state, feats[-1].reshape(-1).numpy(), atol=1e-5)


def test_latent_env_refuses_another_envs_spec_and_bad_options(mpe_model):
    other, _ = make("mpe:simple_spread_v3", N=4)
    with pytest.raises(
        ValueError, match=r"env: its spec differs from the model's \(.*agents: env .*obs_dim: env 24, model 18"
    ):
        LatentEnv(other, mpe_model)
    with pytest.raises(TypeError, match=r"env: expected a wmenv env with an env_spec"):
        LatentEnv(object(), mpe_model)
    with pytest.raises(ValueError, match=r"neighbours: mpe:simple_spread_v3 has no neighbours\(radius\)"):
        latent_mpe(mpe_model, neighbours=2)
    with pytest.raises(ValueError, match=r"neighbours: expected None or a radius >= 0, got -1"):
        latent_mpe(mpe_model, neighbours=-1)
    env = latent_mpe(mpe_model)
    with pytest.raises(RuntimeError, match="state\\(\\) called before reset"):
        env.state()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="agent_0"):  # the real env validates actions
        env.step({"agent_0": 9, "agent_1": 0, "agent_2": 0})


def test_agent_filters_refuse_bad_inputs(mpe_model):
    filters = AgentFilters(mpe_model, 2)
    obs, reset, alive = np.zeros((2, 3, 18), np.float32), np.ones(2, bool), np.ones((2, 3), bool)
    with pytest.raises(ValueError, match=r"obs: expected shape \(2, 3, 18\), got \(2, 3, 17\)"):
        filters.step(obs[..., :17], reset, alive)
    with pytest.raises(ValueError, match=r"obs: expected finite values"):
        filters.step(np.full((2, 3, 18), np.nan, np.float32), reset, alive)
    with pytest.raises(ValueError, match=r"hears: expected shape \(2, 3, 3\)"):
        filters.step(obs, reset, alive, np.ones((2, 3), bool))
    with pytest.raises(TypeError, match=r"alive: expected a tensor or NumPy array"):
        filters.step(obs, reset, [[True] * 3] * 2)
    with pytest.raises(ValueError, match=r"num_worlds: expected an integer >= 1, got 0"):
        AgentFilters(mpe_model, 0)


def test_flatland_agents_hear_only_their_rail_neighbours():
    """On Flatland, neighbours=radius restricts messages to env.neighbours(radius): radius 0 (only co-located trains)
    gives other features than everyone hearing everyone, on the same episode and seeds."""
    env, spec = make("flatland:5", masked_action="noop")
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).eval()
    near, far = (
        LatentEnv(env, model, neighbours=0, seed=1),
        LatentEnv(make("flatland:5", masked_action="noop")[0], model, seed=1),
    )
    a, _ = near.reset(seed=3)
    b, _ = far.reset(seed=3)
    differs = False
    for _ in range(12):
        acts = {ag: 2 for ag in near.agents}  # move forward
        a, *_ = near.step(acts)
        b, *_ = far.step({ag: acts[ag] for ag in far.agents})
        differs |= any(not np.allclose(a[k], b[k]) for k in a if k in b)
    assert differs


@pytest.fixture(scope="module")
def cartpole_model():
    replay, spec = random_replay("gym:CartPole-v1", 1500)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    fit(model, replay, FitConfig(steps=60, batch_size=8, seq_len=min(int(min(replay.episode_lengths)), 10), progress=False))
    return model.eval()


def test_sb3_policy_trained_in_a_latent_dream_acts_on_the_real_env(cartpole_model):
    """stable-baselines3 PPO trained in DreamGymEnv(obs="latent") plays real CartPole through LatentGymEnv."""
    sb3 = pytest.importorskip("stable_baselines3")
    dream = wmenv.dream.DreamGymEnv(cartpole_model, obs="latent", horizon=15)
    agent = sb3.PPO("MlpPolicy", dream, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    agent.learn(total_timesteps=128)
    real = LatentGymEnv(gymnasium.make("CartPole-v1"), cartpole_model, seed=0)
    check_env(LatentGymEnv(gymnasium.make("CartPole-v1"), cartpole_model), skip_render_check=True)
    assert real.observation_space == dream.observation_space and real.action_space == dream.action_space
    obs, _ = real.reset(seed=0)
    total, done, steps = 0.0, False, 0
    while not done:
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, term, trunc, _ = real.step(action)
        total, done, steps = total + reward, term or trunc, steps + 1
    assert total == steps >= 8 and obs.shape == dream.observation_space.shape  # CartPole: +1 per step, >= 8 steps
