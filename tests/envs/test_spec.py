"""EnvSpec validation and the fixed-slot helpers, including their error messages."""

import gymnasium as gym
import numpy as np
import pytest

from wmenv.envs.spec import EnvSpec, check_actions, stack_masks, stack_obs, stack_rewards, unstack_actions

BOX = gym.spaces.Box


def _spec(discrete=True, masked=True):
    """Two heterogeneous agents: a sees 3 features / 4 actions, b sees 5 features / 2 actions."""
    agents = ("a", "b")
    obs = {"a": BOX(-1, 1, (3,)), "b": BOX(-1, 1, (5,))}
    if discrete:
        act = {"a": gym.spaces.Discrete(4), "b": gym.spaces.Discrete(2)}
    else:
        act = {"a": BOX(-1, 1, (2,)), "b": BOX(-1, 1, (3,))}
    return EnvSpec("test:x", agents, obs, act, BOX(-1, 1, (8,)), action_masked=masked, episode_limit=10)


def test_properties_and_describe():
    s = _spec()
    assert (s.n_agents, s.obs_dim, s.n_actions, s.state_dim) == (2, 5, 4, 8)
    assert s.discrete and not s.homogeneous
    d = s.describe()
    assert d == {
        "id": "test:x",
        "agents": ["a", "b"],
        "obs_dim": 5,
        "state_dim": 8,
        "discrete": True,
        "n_actions": 4,
        "action_masked": True,
        "episode_limit": 10,
    }
    c = _spec(discrete=False)
    assert not c.discrete and c.n_actions == 3


def test_validation_errors_name_the_field():
    obs, act, st = {"a": BOX(-1, 1, (3,))}, {"a": gym.spaces.Discrete(2)}, BOX(-1, 1, (3,))
    with pytest.raises(ValueError, match="EnvSpec.agents: expected at least one agent"):
        EnvSpec("x", (), {}, {}, st, False, None)
    with pytest.raises(ValueError, match=r"EnvSpec.observation_spaces: missing agents \['b'\]"):
        EnvSpec("x", ("a", "b"), obs, {**act, "b": gym.spaces.Discrete(2)}, st, False, None)
    with pytest.raises(TypeError, match=r"EnvSpec.observation_spaces\['a'\]: expected a 1-D Box"):
        EnvSpec("x", ("a",), {"a": BOX(-1, 1, (2, 2))}, act, st, False, None)
    with pytest.raises(ValueError, match=r"expected Discrete starting at 0, got start=1"):
        EnvSpec("x", ("a",), obs, {"a": gym.spaces.Discrete(2, start=1)}, st, False, None)
    with pytest.raises(TypeError, match="expected all Discrete or all 1-D Box"):
        EnvSpec("x", ("a", "b"), {**obs, "b": obs["a"]}, {**act, "b": BOX(-1, 1, (2,))}, st, False, None)


def test_stack_obs_pads_and_marks_absent_agents():
    s = _spec()
    obs, alive = stack_obs(s, {"a": np.array([1, 2, 3])})
    assert obs.shape == (2, 5) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[0], [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(obs[1], 0)
    np.testing.assert_array_equal(alive, [True, False])


def test_stack_masks_pads_and_ignores_dead():
    s = _spec()
    infos = {"a": {"action_mask": np.array([1, 0, 1, 0])}, "b": {"action_mask": np.array([0, 1])}}
    m = stack_masks(s, infos, np.array([True, True]))
    np.testing.assert_array_equal(m, [[1, 0, 1, 0], [0, 1, 0, 0]])  # b's padded actions 2, 3 are not available
    m = stack_masks(s, infos, np.array([True, False]))
    np.testing.assert_array_equal(m[1], [1, 1, 1, 1])  # dead: anything goes
    unmasked = stack_masks(_spec(masked=False), infos, np.array([True, True]))
    np.testing.assert_array_equal(unmasked, [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_stack_rewards_zero_for_absent():
    np.testing.assert_array_equal(stack_rewards(_spec(), {"b": 2.5}), [0.0, 2.5])
    np.testing.assert_array_equal(stack_rewards(_spec(), {"a": True}, dtype=bool), [True, False])


def test_unstack_actions_live_only_and_shape_error():
    s = _spec()
    assert unstack_actions(s, np.array([3, 1]), ["b"]) == {"b": 1}
    with pytest.raises(ValueError, match=r"actions: expected shape \(2,\), got \(3,\)"):
        unstack_actions(s, np.array([1, 2, 3]), ["a", "b"])
    c = _spec(discrete=False)
    out = unstack_actions(c, np.arange(6, dtype=np.float32).reshape(2, 3), ["a", "b"])
    np.testing.assert_array_equal(out["a"], [0, 1])  # cut to a's own 2 dims
    np.testing.assert_array_equal(out["b"], [3, 4, 5])


def test_check_actions_accepts_valid():
    s = _spec()
    check_actions(s, {"a": 3, "b": np.int64(1)}, ["a", "b"], {"a": np.array([0, 0, 0, 1], bool)})
    check_actions(s, {"a": np.array(2)}, ["a"])
    check_actions(_spec(discrete=False), {"a": [0.1, -0.2]}, ["a"])


@pytest.mark.parametrize(
    ("actions", "live", "masks", "err", "pattern"),
    [
        ({"a": 1}, ["a", "b"], None, ValueError, r"missing actions for live agents \['b'\]"),
        ({"a": 1, "zz": 0}, ["a"], None, ValueError, r"unknown agent 'zz'"),
        ({"a": 1, "b": 0}, ["a"], None, ValueError, r"agent 'b' is no longer alive"),
        ({"a": 4}, ["a"], None, ValueError, r"actions\['a'\]: expected an integer in \[0, 4\), got 4"),
        ({"b": -1}, ["b"], None, ValueError, r"actions\['b'\]: expected an integer in \[0, 2\), got -1"),
        ({"a": 1.0}, ["a"], None, TypeError, r"actions\['a'\]: expected an integer in \[0, 4\), got 1.0 \(float\)"),
        ({"a": True}, ["a"], None, TypeError, r"actions\['a'\].*got True \(bool\)"),
        (
            {"a": 1},
            ["a"],
            {"a": np.array([1, 0, 1, 0], bool)},
            ValueError,
            r"actions\['a'\]: action 1 is masked; available actions are \[0, 2\]",
        ),
    ],
)
def test_check_actions_errors_name_agent_and_value(actions, live, masks, err, pattern):
    with pytest.raises(err, match=pattern):
        check_actions(_spec(), actions, live, masks)


def test_check_actions_continuous_errors():
    c = _spec(discrete=False)
    with pytest.raises(ValueError, match=r"actions\['a'\]: expected shape \(2,\), got \(3,\)"):
        check_actions(c, {"a": [0.0, 0.0, 0.0]}, ["a"])
    with pytest.raises(ValueError, match=r"actions\['a'\]: expected finite values"):
        check_actions(c, {"a": [np.nan, 0.0]}, ["a"])
