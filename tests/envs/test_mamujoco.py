"""MaMuJoCo through gymnasium-robotics: spec, API compliance, state, shared reward, errors."""

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")
from pettingzoo.test import parallel_api_test  # noqa: E402

from wmenv.envs import make  # noqa: E402

ID = "mamujoco:Humanoid:9|8"


def test_spec():
    env, spec = make(ID)
    assert spec.agents == ("agent_0", "agent_1")
    assert env.observation_space("agent_0").shape == (242,) and env.observation_space("agent_1").shape == (170,)
    assert env.action_space("agent_0").shape == (9,) and env.action_space("agent_1").shape == (8,)
    assert not spec.discrete and not spec.action_masked and not spec.homogeneous
    assert (spec.obs_dim, spec.n_actions, spec.state_dim, spec.episode_limit) == (242, 9, 348, 1000)
    assert spec.extra == {"scenario": "Humanoid", "agent_conf": "9|8", "agent_obsk": 1}


def test_parallel_api():
    env, _ = make(ID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=40)
    assert not [str(w.message) for w in caught if "agent" in str(w.message).lower()]


def test_state_is_the_robot_observation_and_reward_is_shared():
    env, spec = make("mamujoco:HalfCheetah:2x3")
    obs, _ = env.reset(seed=0)
    single = env.env.single_agent_env.unwrapped
    np.testing.assert_allclose(env.state(), single._get_obs(), rtol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        acts = {a: rng.uniform(-1, 1, env.action_space(a).shape).astype(np.float32) for a in env.agents}
        _, rew, term, trunc, _ = env.step(acts)
        assert len(set(rew.values())) == 1 and not any(term.values()) and not any(trunc.values())
        assert env.state().shape == (spec.state_dim,) and env.state().dtype == np.float32


def test_single_agent_task_without_configuration():
    env, spec = make("mamujoco:Hopper")
    assert spec.agents == ("agent_0",) and spec.n_actions == 3


def test_errors():
    with pytest.raises(ValueError, match="name: unknown MaMuJoCo scenario 'Humanoyd'; expected one of"):
        make("mamujoco:Humanoyd:9|8")
    with pytest.raises(ValueError, match="name: agent configuration '7x9' is not defined for 'HalfCheetah'"):
        make("mamujoco:HalfCheetah:7x9")
    with pytest.raises(ValueError, match=r"actions\['agent_1'\]: expected shape \(8,\), got \(9,\)"):
        env, _ = make(ID)
        env.reset(seed=0)
        env.step({"agent_0": np.zeros(9), "agent_1": np.zeros(9)})
    with pytest.raises(ValueError, match=r"actions\['agent_0'\]: expected finite values"):
        env.step({"agent_0": np.full(9, np.inf), "agent_1": np.zeros(8)})


def test_missing_package_is_dependency_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # makes the import fail
    with pytest.raises(gym.error.DependencyNotInstalled, match=r'pip install "wmenv\[mamujoco\]"'):
        make(ID)
