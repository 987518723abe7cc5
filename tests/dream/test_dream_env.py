"""Dream environments: PettingZoo API and seeding, batched stepping, auto-reset, bad actions, NaN."""

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import wmenv
from wmenv.data.collect import random_replay
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@pytest.fixture(scope="module")
def flatland_model():
    _, spec = make("flatland:5")
    torch.manual_seed(0)
    return MAMBAWorldModel(spec, preset("small"))


@pytest.fixture(scope="module")
def mpe_model_and_replay():
    replay, spec = random_replay("mpe:simple_spread_v3", 200, num_envs=2)
    torch.manual_seed(0)
    return MAMBAWorldModel(spec, preset("small")), replay


@pytest.mark.parametrize("obs", ["latent", "decoded"])
def test_dream_env_passes_the_pettingzoo_api_test(flatland_model, obs):
    env = wmenv.DreamEnv(flatland_model, obs=obs, seed=0, masked_action="noop")
    parallel_api_test(env, num_cycles=40)
    assert env.observation_space("agent_0") is env.observation_space("agent_0")
    width = flatland_model.spec.obs_dim if obs == "decoded" else 128
    assert env.observation_space("agent_0").shape == (width,) and env.state().shape == (5 * 128,)  # latent critic view


def test_dream_env_is_seeded(flatland_model):
    parallel_seed_test(lambda: wmenv.DreamEnv(flatland_model, masked_action="noop"), num_cycles=30)


def test_dream_env_from_real_contexts_and_its_episode_ends(mpe_model_and_replay):
    model, replay = mpe_model_and_replay
    env = wmenv.DreamEnv(model, start=replay, seed=1, horizon=6)
    obs, infos = env.reset(seed=3)
    assert set(obs) == set(model.spec.agents) and all(np.isfinite(o).all() for o in obs.values())
    steps = 0
    while env.agents:
        obs, rewards, terms, truncs, infos = env.step({a: 0 for a in env.agents})
        steps += 1
    assert steps <= 6 and (any(truncs.values()) or any(terms.values()))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step({})


def test_bad_actions_are_named(flatland_model):
    env = wmenv.DreamEnv(flatland_model, seed=0)
    _, infos = env.reset(seed=0)
    ok = {a: int(np.flatnonzero(infos[a]["action_mask"])[0]) for a in env.agents}
    agent = env.agents[0]
    with pytest.raises(ValueError, match=agent):
        env.step({a: ok[a] for a in env.agents[1:]})  # a live agent without an action
    with pytest.raises(ValueError, match="agent_99"):
        env.step({**ok, "agent_99": 0})
    masked = {a: int(np.flatnonzero(infos[a]["action_mask"] == 0)[0]) for a in env.agents if not infos[a]["action_mask"].all()}
    if masked:
        a, act = next(iter(masked.items()))
        with pytest.raises(ValueError, match=rf"actions\['{a}'\]: action {act} is masked"):
            env.step({**ok, a: act})
    vec = DreamVecEnv(flatland_model, num_worlds=3, seed=0)
    vec.reset()
    with pytest.raises(ValueError, match=r"actions: expected shape \(3, 5\) \(worlds, agents\), got \(3, 4\)"):
        vec.step(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="actions: expected an integer dtype, got torch.float32"):
        vec.step(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"agent 'agent_0' in world 0: expected an action in \[0, 5\), got 7"):
        vec.step(torch.full((3, 5), 7))


def _with_cont_bias(model, bias):
    copy = MAMBAWorldModel(model.spec, preset("small"))
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.cont_head[-1].bias.fill_(bias)
    return copy


def test_vec_env_steps_worlds_in_one_batch_and_auto_resets(mpe_model_and_replay):
    model, _ = mpe_model_and_replay
    forever = DreamVecEnv(_with_cont_bias(model, 30.0), num_worlds=64, horizon=5, seed=0)
    s = forever.reset()
    assert s.obs.shape == (64, 3, 128) and s.state.shape == (64, 3 * 128) and s.alive.all()
    for t in range(1, 11):
        s = forever.step(torch.zeros(64, 3, dtype=torch.long))
        assert bool(s.done.all()) == (t % 5 == 0), t  # truncated by the horizon, then reset in place
        assert bool(s.truncated.all()) == (t % 5 == 0) and not s.terminated.any()
        assert s.alive.all() and torch.isfinite(s.reward).all()
    assert (s.final_obs != 0).any()
    ending = DreamVecEnv(_with_cont_bias(model, -30.0), num_worlds=8, horizon=5, seed=0)
    ending.reset()
    s = ending.step(torch.zeros(8, 3, dtype=torch.long))
    assert s.terminated.all() and s.done.all() and not s.truncated.any()
    a, b = DreamVecEnv(model, num_worlds=8, seed=5), DreamVecEnv(model, num_worlds=8, seed=5)
    ra, rb = a.reset(), b.reset()
    for _ in range(5):
        ra, rb = a.step(torch.zeros(8, 3, dtype=torch.long)), b.step(torch.zeros(8, 3, dtype=torch.long))
    assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward) and torch.equal(ra.alive, rb.alive)


def test_nan_from_the_model_is_reported_with_step_and_agent(mpe_model_and_replay):
    model, _ = mpe_model_and_replay
    broken = MAMBAWorldModel(model.spec, preset("small"))
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.reward_head[-1].bias.fill_(float("nan"))
    vec = DreamVecEnv(broken, num_worlds=2, seed=0)
    vec.reset()
    with pytest.raises(FloatingPointError, match="NaN/inf at step 1 of world 0 for agent 'agent_0'"):
        vec.step(torch.zeros(2, 3, dtype=torch.long))
