"""GymAdapter: one-agent view of Gymnasium envs, termination / truncation, action translation, masks."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from wmenv.envs import make
from wmenv.envs.gym import GymAdapter


class DictObsShiftedActions(gym.Env):
    """Test double: ``Dict`` observation, ``Discrete(3, start=-1)`` actions; the observation echoes the last action."""

    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-5, 5, (2,)), "flag": gym.spaces.Discrete(2)})
    action_space = gym.spaces.Discrete(3, start=-1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return {"pos": np.zeros(2, np.float32), "flag": 0}, {}

    def step(self, action):
        assert action in (-1, 0, 1), action
        return {"pos": np.full(2, float(action), np.float32), "flag": 1}, 1.0, action == 1, False, {}


@pytest.mark.parametrize("env_id", ["gym:CartPole-v1", "gym:Pendulum-v1"])
def test_parallel_api(env_id):
    env, spec = make(env_id)
    assert spec.agents == ("agent_0",) and spec.state_space == env.observation_space("agent_0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=250)
    assert not [str(w.message) for w in caught if "agent" in str(w.message).lower()]


def test_termination_passed_through_and_state_is_obs():
    env, spec = make("gym:CartPole-v1")
    assert (spec.obs_dim, spec.n_actions, spec.episode_limit) == (4, 2, 500)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.state(), obs["agent_0"])
    for t in range(1, 500):  # noqa: B007 (t is checked after the loop)
        obs, rew, term, trunc, _ = env.step({"agent_0": 0})  # always push left: the pole falls quickly
        np.testing.assert_array_equal(env.state(), obs["agent_0"])
        if term["agent_0"]:
            break
    assert term == {"agent_0": True} and trunc == {"agent_0": False} and t < 50
    assert env.agents == []
    with pytest.raises(RuntimeError, match="no live agents"):
        env.step({"agent_0": 0})


def test_truncation_at_time_limit_and_box_actions():
    env, spec = make("gym:Pendulum-v1")
    assert not spec.discrete and spec.n_actions == 1 and spec.episode_limit == 200
    env.reset(seed=0)
    for t in range(1, 201):
        _, _, term, trunc, _ = env.step({"agent_0": np.array([0.5], np.float32)})
        assert trunc["agent_0"] == (t == 200) and not term["agent_0"]
    with pytest.raises(ValueError, match=r"actions\['agent_0'\]: expected shape \(1,\), got \(2,\)"):
        env.reset(seed=0)
        env.step({"agent_0": np.zeros(2)})


def test_dict_observation_flattened_and_discrete_start_shifted():
    env = GymAdapter(DictObsShiftedActions(), id="test:dict")
    assert env.action_space("agent_0") == gym.spaces.Discrete(3)
    assert env.observation_space("agent_0").shape == (4,)  # 2 + one-hot(2)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["agent_0"], [1, 0, 0, 0])  # flag one-hot first (sorted keys), then pos
    obs, _, term, _, _ = env.step({"agent_0": 0})  # -> -1
    np.testing.assert_array_equal(obs["agent_0"], [0, 1, -1, -1])
    _, _, term, _, _ = env.step({"agent_0": 2})  # -> 1 terminates
    assert term["agent_0"] and env.agents == []


def test_info_masks_only_when_declared():
    env, spec = make("gym:Taxi-v4", action_masked=True)
    assert spec.action_masked
    _, infos = env.reset(seed=0)
    mask = infos["agent_0"]["action_mask"]
    assert mask.dtype == bool and mask.shape == (6,)
    masked = int(np.flatnonzero(~mask)[0])
    with pytest.raises(ValueError, match=rf"actions\['agent_0'\]: action {masked} is masked; available actions are"):
        env.step({"agent_0": masked})
    plain, spec = make("gym:Taxi-v4")
    _, infos = plain.reset(seed=0)
    assert not spec.action_masked and "action_mask" not in infos["agent_0"]
    plain.step({"agent_0": masked})  # not enforced: the spec promises no masks


def test_errors():
    with pytest.raises(ValueError, match="name: 'NoSuchEnv-v0' is not an available Gymnasium env"):
        make("gym:NoSuchEnv-v0")
    with pytest.raises(TypeError, match="bogus"):
        make("gym:CartPole-v1", bogus=3)
    with pytest.raises(TypeError, match="env: expected a gymnasium.Env, got str"):
        GymAdapter("CartPole-v1", id="x")
    with pytest.raises(TypeError, match=r"actions\['agent_0'\]: expected an integer in \[0, 2\), got 1.5"):
        env, _ = make("gym:CartPole-v1")
        env.reset(seed=0)
        env.step({"agent_0": 1.5})
