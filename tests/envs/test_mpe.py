"""MPE through mpe2: spec, API compliance, truncation at max_cycles, determinism, cooperative reward."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from wmenv.envs import make

ID = "mpe:simple_spread_v3"


def test_spec():
    env, spec = make(ID)
    assert spec.agents == ("agent_0", "agent_1", "agent_2")
    assert (spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (18, 54, 5, 25)
    assert spec.discrete and not spec.action_masked and spec.homogeneous
    assert spec.extra["cooperative"] and spec.extra["max_cycles"] == 25
    assert make("mpe:simple_tag_v3")[1].extra["cooperative"] is False


def test_parallel_api():
    env, _ = make(ID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=60)
    assert not [str(w.message) for w in caught if "agent" in str(w.message).lower()]


def test_truncated_exactly_at_max_cycles_with_env_state():
    env, spec = make(ID, max_cycles=7, N=2)
    assert spec.n_agents == 2 and spec.episode_limit == 7
    env.reset(seed=0)
    for t in range(1, 8):
        obs, rew, term, trunc, infos = env.step({a: 2 for a in env.agents})
        assert all(trunc.values()) == (t == 7) and not any(term.values())
        assert env.state().shape == spec.state_space.shape
        np.testing.assert_array_equal(env.state(), env.env.state())
    assert env.agents == []


def test_same_seed_same_rollout():
    def rollout(seed):
        env, _ = make(ID)
        obs, _ = env.reset(seed=seed)
        out = [np.stack(list(obs.values()))]
        rng = np.random.default_rng(0)
        while env.agents:
            obs, rew, *_ = env.step({a: int(rng.integers(5)) for a in env.agents})
            out.append(np.stack(list(obs.values())))
        return np.stack(out)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


def test_fully_shared_reward_with_local_ratio_zero():
    env, _ = make(ID, local_ratio=0.0)
    env.reset(seed=0)
    for _ in range(5):
        _, rew, *_ = env.step({a: 1 for a in env.agents})
        assert len(set(rew.values())) == 1


def test_continuous_actions_option():
    env, spec = make(ID, continuous_actions=True)
    assert not spec.discrete and isinstance(env.action_space("agent_0"), gym.spaces.Box) and spec.n_actions == 5
    env.reset(seed=0)
    env.step({a: np.full(5, 0.5, dtype=np.float32) for a in env.agents})
    with pytest.raises(ValueError, match=r"actions\['agent_0'\]: expected shape \(5,\), got \(2,\)"):
        env.step({a: np.zeros(2) for a in env.agents})


def test_action_errors_name_agent_and_value():
    env, _ = make(ID)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\['agent_1'\]: expected an integer in \[0, 5\), got 5"):
        env.step({"agent_0": 0, "agent_1": 5, "agent_2": 0})
    with pytest.raises(ValueError, match=r"missing actions for live agents \['agent_2'\]"):
        env.step({"agent_0": 0, "agent_1": 0})
    with pytest.raises(TypeError, match=r"actions\['agent_0'\]: expected an integer in \[0, 5\), got 0.5"):
        env.step({"agent_0": 0.5, "agent_1": 0, "agent_2": 0})


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"name: unknown MPE env 'simple_sprad_v3'; mpe2 provides \[.*'simple_spread_v3'"):
        make("mpe:simple_sprad_v3")
