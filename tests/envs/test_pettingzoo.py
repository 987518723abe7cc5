"""PettingZooAdapter: flattening, masks from obs dicts or infos, action translation, state, finished agents."""

import importlib.util
import warnings

import gymnasium as gym
import numpy as np
import pytest
from pettingzoo import ParallelEnv
from pettingzoo.test import parallel_api_test

from wmenv.envs import make
from wmenv.envs.pettingzoo import PettingZooAdapter, make_pettingzoo


class CountingEnv(ParallelEnv):
    """Test double: two agents with (2, 3) Box observations, ``Discrete(4, start=1)`` actions and masks.

    Agent ``b`` terminates on step 2; ``a`` is truncated on step 4. Like some real envs it keeps
    finished agents in ``self.agents`` (the adapter must remove them). With ``mask_in_info`` the mask
    travels in the infos instead of a ``Dict`` observation. Every joint action received is recorded.
    """

    metadata = {"name": "counting_v0"}

    def __init__(self, mask_in_info=False):
        self.possible_agents = ["a", "b"]
        self.mask_in_info = mask_in_info
        box = gym.spaces.Box(-10, 10, (2, 3), dtype=np.float64)
        mask = gym.spaces.Box(0, 1, (4,), dtype=np.int8)
        self._obs_space = box if mask_in_info else gym.spaces.Dict({"observation": box, "action_mask": mask})
        self._act_space = gym.spaces.Discrete(4, start=1)
        self.received = []

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _mask(self, agent):
        m = np.zeros(4, dtype=np.int8)
        m[(self.t + (agent == "b")) % 4] = 1  # exactly one allowed action, changing every step
        m[3] = 1
        return m

    def _out(self, agents):
        obs, infos = {}, {}
        for k, a in enumerate(agents):
            o = np.full((2, 3), self.t + 0.5 * k)
            obs[a] = o if self.mask_in_info else {"observation": o, "action_mask": self._mask(a)}
            infos[a] = {"t": self.t, **({"action_mask": self._mask(a)} if self.mask_in_info else {})}
        return obs, infos

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._out(self.agents)

    def step(self, actions):
        self.received.append(dict(actions))
        self.t += 1
        acting = [a for a in self.agents if a in actions]
        obs, infos = self._out(acting)
        term = {a: a == "b" and self.t == 2 for a in acting}
        trunc = {a: a == "a" and self.t == 4 for a in acting}
        rew = {a: float(self.t) for a in acting}
        self.agents = [a for a in self.agents if not (a == "b" and self.t >= 2)]  # keeps "a" after truncation
        return obs, rew, term, trunc, infos


@pytest.mark.parametrize("mask_in_info", [False, True])
def test_flattening_masks_and_action_shift(mask_in_info):
    env = PettingZooAdapter(CountingEnv(mask_in_info), id="test:counting", action_masked=True if mask_in_info else None)
    spec = env.env_spec
    assert spec.action_masked and spec.obs_dim == 6 and spec.n_actions == 4
    assert env.action_space("a") == gym.spaces.Discrete(4)  # shifted to start at 0
    obs, infos = env.reset(seed=0)
    assert obs["a"].shape == (6,) and obs["a"].dtype == np.float32
    np.testing.assert_array_equal(obs["b"], 0.5)
    np.testing.assert_array_equal(infos["a"]["action_mask"], [True, False, False, True])
    np.testing.assert_array_equal(infos["b"]["action_mask"], [False, True, False, True])
    assert infos["a"]["t"] == 0
    obs, rew, term, trunc, infos = env.step({"a": 3, "b": 3})
    assert env.env.received[-1] == {"a": 4, "b": 4}  # start=1 added back
    assert rew == {"a": 1.0, "b": 1.0}


def test_finished_agents_removed_even_if_env_keeps_them():
    env = PettingZooAdapter(CountingEnv(), id="test:counting")
    env.reset()
    _, _, term, _, infos = env.step({"a": 3, "b": 3})
    assert env.agents == ["a", "b"] and not any(term.values())
    _, _, term, trunc, infos = env.step({"a": 3, "b": 3})
    assert term == {"a": False, "b": True} and env.agents == ["a"]
    assert "action_mask" not in infos["b"]  # no mask for an agent that has left
    env.step({"a": 3})
    _, _, term, trunc, _ = env.step({"a": 3})
    assert trunc == {"a": True} and env.env.agents == ["a"] and env.agents == []


def test_state_concatenates_observations_with_zeros_for_absent():
    env = PettingZooAdapter(CountingEnv(), id="test:counting")
    obs, _ = env.reset()
    assert env.state_space.shape == (12,)
    np.testing.assert_array_equal(env.state(), np.concatenate([obs["a"], obs["b"]]))
    env.step({"a": 3, "b": 3})
    env.step({"a": 3, "b": 3})
    obs, *_ = env.step({"a": 3})  # b is gone: zeros in its slot
    np.testing.assert_array_equal(env.state(), np.concatenate([obs["a"], np.zeros(6)]))


def test_masked_action_raises_by_default_and_noop_substitutes():
    env = PettingZooAdapter(CountingEnv(), id="test:counting")
    env.reset()
    with pytest.raises(ValueError, match=r"actions\['a'\]: action 1 is masked; available actions are \[0, 3\]"):
        env.step({"a": 1, "b": 3})
    with pytest.raises(ValueError, match=r"actions\['b'\]: expected an integer in \[0, 4\), got 7"):
        env.step({"a": 0, "b": 7})
    noop = PettingZooAdapter(CountingEnv(), id="test:counting", masked_action="noop")
    noop.reset()
    noop.step({"a": 1, "b": 1})
    assert noop.env.received[-1] == {"a": 1, "b": 2}  # first allowed (0 resp. 1) plus start=1


def test_info_masks_dropped_unless_declared():
    env = PettingZooAdapter(CountingEnv(mask_in_info=True), id="test:counting")
    assert not env.env_spec.action_masked
    _, infos = env.reset()
    assert "action_mask" not in infos["a"]
    env.step({"a": 1, "b": 2})  # not enforced: the spec says there are no masks


def _api_test(env, cycles):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=cycles)
    ours = [str(w.message) for w in caught if "pettingzoo" in w.filename or "agent" in str(w.message).lower()]
    assert not ours, ours


def test_api_on_the_double_and_real_envs():
    _api_test(PettingZooAdapter(CountingEnv(), id="test:counting", masked_action="noop"), 10)
    env, spec = make("pettingzoo:pettingzoo.classic.rps_v2")
    assert spec.obs_dim == 4 and spec.state_dim == 8  # Discrete(4) observations one-hot; no env state -> concatenation
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["player_0"], [0, 0, 0, 1])
    _api_test(env, 200)


def test_uses_the_envs_own_state():
    env, spec = make("mpe:simple_spread_v3")
    env.reset(seed=1)
    env.step({a: 1 for a in env.agents})
    np.testing.assert_array_equal(env.state(), env.env.state())
    assert spec.state_dim == env.env.state_space.shape[0]


def test_make_pettingzoo_errors():
    with pytest.raises(ValueError, match="module_path: no module named 'pettingzoo.nope_v1'"):
        make_pettingzoo("pettingzoo.nope_v1")
    with pytest.raises(ValueError, match="module_path: module 'json' has no parallel_env"):
        make_pettingzoo("json")
    with pytest.raises(ValueError, match="module_path: expected a dotted module path"):
        make_pettingzoo("")


@pytest.mark.skipif(importlib.util.find_spec("pymunk") is not None, reason="pymunk is installed")
def test_missing_dependency_of_an_env_module():
    with pytest.raises(gym.error.DependencyNotInstalled, match="needs the package 'pymunk'.*pip install pymunk"):
        make_pettingzoo("pettingzoo.butterfly.pistonball_v6")


def test_rejects_non_parallel_env_and_bad_spaces():
    with pytest.raises(TypeError, match="env: expected a pettingzoo ParallelEnv, got CartPoleEnv"):
        PettingZooAdapter(gym.make("CartPole-v1").unwrapped, id="x")
    bad = CountingEnv(mask_in_info=True)
    bad._act_space = gym.spaces.MultiDiscrete([2, 2])
    with pytest.raises(TypeError, match=r"action_space\('a'\): expected a Discrete or Box action space"):
        PettingZooAdapter(bad, id="x")
