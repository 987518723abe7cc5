"""EpisodeRecorder and validate_episode: T+1 rows, alive masks, flags, padding and input errors."""

from __future__ import annotations

import numpy as np
import pytest
from episode_fixtures import ACT, AGENTS, OBS, make_spec, scripted_run

from wmenv.data import FIELDS, EpisodeRecorder, episode_schema, validate_episode
from wmenv.envs import make


def test_dict_recording_rows_alive_flags(spec, record):
    run = scripted_run(spec, seed=1)
    ep = record(spec, seed=1)
    assert set(ep) == set(FIELDS)
    for k, (shape, dtype) in episode_schema(spec).items():
        assert ep[k].shape == (5, *shape) and ep[k].dtype == dtype, k
    # c (slot 2) terminates on arriving at row 2: alive there (terminal obs), gone afterwards
    np.testing.assert_array_equal(ep["alive"][:, 2], [True, True, True, False, False])
    assert ep["alive"][:, :2].all()
    np.testing.assert_array_equal(ep["terminated"][:, 2], [False, False, True, False, False])
    np.testing.assert_array_equal(ep["truncated"], np.array([[0, 0, 0]] * 4 + [[1, 1, 0]], bool))
    np.testing.assert_array_equal(ep["is_first"], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ep["is_last"], [0, 0, 0, 0, 1])
    assert not ep["is_terminal"].any(), "a and b were truncated, so the episode is not terminal"
    # observations land in their slots, padded with zeros; absent agents are zeros
    obs0, infos0, state0 = run["reset"]
    np.testing.assert_array_equal(ep["obs"][0, 2, :3], obs0["c"])
    assert (ep["obs"][:, 2, 3] == 0).all() and (ep["obs"][3:, 2] == 0).all()
    np.testing.assert_array_equal(ep["state"][0], state0)
    for t, (actions, obs, rew, _, _, infos, state) in enumerate(run["steps"]):
        for i, a in enumerate(AGENTS):
            if a in actions:
                assert ep["action"][t, i] == actions[a]
            else:
                assert ep["action"][t, i] == 0
            if a in obs:
                np.testing.assert_array_equal(ep["obs"][t + 1, i, : OBS[a]], obs[a])
                assert ep["reward"][t + 1, i] == np.float32(rew[a])
                np.testing.assert_array_equal(ep["action_mask"][t + 1, i, : ACT[a]], infos[a]["action_mask"].astype(bool))
        np.testing.assert_array_equal(ep["state"][t + 1], state)
    assert (ep["reward"][0] == 0).all() and (ep["action"][-1] == 0).all()
    # padded action 2 of c is unavailable while c is alive; dead agents get all-True masks
    assert not ep["action_mask"][:3, 2, 2].any()
    assert ep["action_mask"][3:, 2].all()


def test_all_terminated_is_terminal(spec, record):
    ep = record(spec, terminate_all=True)
    assert ep["is_terminal"].tolist() == [False] * 4 + [True]
    assert ep["terminated"][-1, :2].all() and not ep["truncated"].any()


def test_array_path_matches_dict_path(spec, record):
    """A vectorized collector feeding arrays records exactly what the dict path records."""
    ref = record(spec, seed=3)
    rec = EpisodeRecorder(spec)
    rec.start_arrays(ref["obs"][0], ref["state"][0], ref["alive"][0], ref["action_mask"][0])
    for t in range(1, 5):
        noisy = ref["obs"][t].copy()
        noisy[~ref["alive"][t]] = 7.0  # stale data in absent slots is ignored
        rec.add_arrays(
            ref["action"][t - 1] + 1 - ref["alive"][t - 1],  # entries of agents that do not act are ignored too
            noisy,
            ref["state"][t],
            ref["alive"][t],
            ref["reward"][t],
            ref["terminated"][t],
            ref["truncated"][t],
            ref["action_mask"][t],
        )
    ep = rec.finish()
    assert set(ep) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ep[k], ref[k], err_msg=k)


def test_continuous_actions_padded():
    spec = make_spec(discrete=False)
    run = scripted_run(spec, seed=2)
    rec = EpisodeRecorder(spec)
    rec.start(*run["reset"])
    for step in run["steps"]:
        rec.add(*step)
    ep = rec.finish()
    assert ep["action"].shape == (5, 3, 2) and ep["action"].dtype == np.float32
    # continuous masks mark each living agent's own action dims: c's second dim is padding while c lives
    assert ep["action_mask"][:, :2].all() and ep["action_mask"][..., 0].all()
    np.testing.assert_array_equal(ep["action_mask"][:, 2, 1], ~ep["alive"][:, 2])
    np.testing.assert_array_equal(ep["action"][0, 2, :1], run["steps"][0][0]["c"])
    assert (ep["action"][:, 2, 1] == 0).all(), "c's action has one dim; the padded dim stays 0"
    assert (ep["action"][2:, 2] == 0).all() and (ep["action"][-1] == 0).all()
    rec.start_arrays(ep["obs"][0], ep["state"][0], ep["alive"][0])
    with pytest.raises(ValueError, match=r"action: expected finite values.*\['b'\]"):
        rec.add_arrays(
            np.array([[0, 0], [np.nan, 0], [0, 0]]), ep["obs"][1], ep["state"][1], [1, 1, 1], [0, 0, 0], [0] * 3, [0] * 3
        )


def test_finish_early_needs_truncate(spec):
    run = scripted_run(spec)
    rec = EpisodeRecorder(spec)
    rec.start(*run["reset"])
    with pytest.raises(RuntimeError, match="no steps"):
        rec.finish()
    rec.add(*run["steps"][0])
    with pytest.raises(RuntimeError, match=r"\['a', 'b', 'c'\] are still live"):
        rec.finish()
    ep = rec.finish(truncate=True)
    assert len(ep["obs"]) == 2 and ep["truncated"][-1].all() and not ep["is_terminal"].any()
    assert not rec.recording
    validate_episode(ep, spec)


def test_call_order_errors(spec):
    run = scripted_run(spec)
    rec = EpisodeRecorder(spec)
    with pytest.raises(RuntimeError, match="start"):
        rec.add(*run["steps"][0])
    rec.start(*run["reset"])
    with pytest.raises(RuntimeError, match="in progress"):
        rec.start(*run["reset"])
    for step in run["steps"]:
        rec.add(*step)
    assert rec.done
    with pytest.raises(RuntimeError, match="call finish"):
        rec.add(*run["steps"][-1])
    rec.discard()
    assert not rec.recording and rec.num_steps == 0


def _started(spec):
    run = scripted_run(spec)
    rec = EpisodeRecorder(spec)
    rec.start(*run["reset"])
    return rec, run["steps"]


def test_dict_input_errors(spec):
    rec, steps = _started(spec)
    actions, obs, rew, term, trunc, infos, state = steps[0]
    bad_cases = [
        ((dict(actions, z=0), obs, rew, term, trunc, infos, state), ValueError, "actions: unknown agent 'z'"),
        (({"a": 0, "b": 0}, obs, rew, term, trunc, infos, state), ValueError, r"missing actions for live agents \['c'\]"),
        (
            (dict(actions, a=3), obs, rew, term, trunc, infos, state),
            ValueError,
            r"actions\['a'\]: expected an integer in \[0, 3\)",
        ),
        ((dict(actions, a=1.5), obs, rew, term, trunc, infos, state), TypeError, r"actions\['a'\]"),
        ((actions, dict(obs, z=obs["a"]), rew, term, trunc, infos, state), ValueError, r"obs: unknown agents \['z'\]"),
        ((actions, dict(obs, a=obs["c"]), rew, term, trunc, infos, state), ValueError, r"obs\['a'\]: expected 4 features"),
        (
            (actions, dict(obs, b=np.full(4, np.nan)), rew, term, trunc, infos, state),
            ValueError,
            r"obs: .*NaN.*\['b'\] at row 1",
        ),
        ((actions, obs, {"a": 0.0}, term, trunc, infos, state), ValueError, "rewards: expected the agents of obs"),
        ((actions, obs, dict(rew, a=np.inf), term, trunc, infos, state), ValueError, r"reward: .*\['a'\]"),
        ((actions, obs, rew, term, trunc, infos, np.zeros(4)), ValueError, r"state: expected shape \(5,\)"),
        ((actions, obs, rew, term, trunc, infos, np.full(5, np.nan)), ValueError, "state: expected finite"),
        (
            (actions, obs, rew, term, trunc, {"a": {"action_mask": [0, 0, 0]}}, state),
            ValueError,
            r"\['a'\] act at row 1 but have",
        ),
        ((actions, obs, rew, term, trunc, infos, "state"), TypeError, "state: expected a numeric array"),
        ((actions, [obs], rew, term, trunc, infos, state), TypeError, "obs: expected a dict"),
        ((list(actions.values()), obs, rew, term, trunc, infos, state), TypeError, "actions: expected a dict"),
    ]
    for args, err, match in bad_cases:
        with pytest.raises(err, match=match):
            rec.add(*args)
        assert rec.num_steps == 0, f"a rejected step must not be recorded ({match})"
    rec.add(*steps[0])
    assert rec.num_steps == 1


def test_agents_cannot_vanish_or_return(spec):
    rec, steps = _started(spec)
    actions, obs, rew, term, trunc, infos, state = steps[0]
    gone = {k: {a: v for a, v in d.items() if a != "b"} for k, d in zip("orTtI", (obs, rew, term, trunc, infos))}
    with pytest.raises(ValueError, match=r"\['b'\] are live at the previous row but without an observation"):
        rec.add(actions, gone["o"], gone["r"], gone["T"], gone["t"], gone["I"], state)
    rec.add(*steps[0])
    rec.add(*steps[1])  # c terminates here
    actions, obs, rew, term, trunc, infos, state = steps[2]
    with pytest.raises(ValueError, match=r"actions: agent 'c' is no longer alive"):
        rec.add(dict(actions, c=0), obs, rew, term, trunc, infos, state)
    with pytest.raises(ValueError, match=r"\['c'\] are alive although it ended earlier"):
        rec.add(actions, dict(obs, c=np.zeros(3)), dict(rew, c=0.0), dict(term, c=False), dict(trunc, c=False), infos, state)
    # the array path checks the same rule
    with pytest.raises(ValueError, match=r"\['c'\] are alive although it ended earlier"):
        rec.add_arrays([0, 0, 0], np.zeros((3, 4)), state, [1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0])


def test_array_input_errors(spec):
    rec, _ = _started(spec)
    z3, f3, obs, s = np.zeros(3), np.zeros(3, bool), np.zeros((3, 4)), np.zeros(5)
    cases = [
        ((np.zeros(2, np.int64), obs, s, [1, 1, 1], z3, f3, f3), ValueError, r"action: expected shape \(3,\)"),
        ((np.zeros(3), obs, s, [1, 1, 1], z3, f3, f3), TypeError, "action: expected integer actions"),
        ((np.array([0, 0, 2]), obs, s, [1, 1, 1], z3, f3, f3), ValueError, r"\[0, 2\) for 'c', got 2"),
        ((np.zeros(3, int), obs[:, :3], s, [1, 1, 1], z3, f3, f3), ValueError, r"obs: expected shape \(3, 4\)"),
        ((np.zeros(3, int), obs, s, [1, 1, 1], z3, [0, 2, 0], f3), TypeError, "terminated: expected booleans"),
        ((np.zeros(3, int), obs, s, [1, 1, 1], z3, z3, f3), TypeError, "terminated: expected booleans"),
        ((np.zeros(3, int), obs, s, [1, 1, 0], z3, f3, [0, 0, 1]), ValueError, r"\['c'\] are live at the previous row"),
        ((np.zeros(3, int), obs, s, [1, 1, 1], [0, 0, 1.0], f3, f3), None, None),
    ]
    for args, err, match in cases:
        if err is None:
            rec.add_arrays(*args)
        else:
            with pytest.raises(err, match=match):
                rec.add_arrays(*args)
    assert rec.num_steps == 1
    rec.add_arrays(np.zeros(3, int), obs, s, [1, 1, 1], z3, [0, 0, 1], f3)  # c terminates at row 2
    with pytest.raises(ValueError, match=r"\['c'\] are terminated or truncated without an observation"):
        rec.add_arrays(np.zeros(3, int), obs, s, [1, 1, 0], z3, [0, 0, 1], f3)
    with pytest.raises(ValueError, match=r"\['c'\] are rewarded without an observation"):
        rec.add_arrays(np.zeros(3, int), obs, s, [1, 1, 0], [0, 0, 1], f3, f3)
    assert rec.num_steps == 2
    with pytest.raises(ValueError, match="alive: expected at least one agent alive"):
        EpisodeRecorder(spec).start_arrays(obs, s, [0, 0, 0])


def test_validate_episode_catches_broken_episodes(spec, record):
    ep = record(spec)
    assert validate_episode(ep, spec) == 4
    assert validate_episode(ep) == 4  # without a spec, shapes come from the episode

    def broken(**changes):
        out = {k: v.copy() for k, v in ep.items()}
        for k, fn in changes.items():
            fn(out) if callable(fn) else out.__setitem__(k, fn)
        return out

    cases = {
        "missing keys \\['reward'\\]": {k: v for k, v in ep.items() if k != "reward"},
        r"episode\['obs'\]: expected shape \(5, 3, 4\) float32, got \(5, 3, 4\) float64": broken(
            obs=ep["obs"].astype(np.float64)
        ),
        r"episode\['step'\]: expected 5 rows": broken(step=np.arange(4)),
        r"is_first.*rows \[0, 2\]": broken(is_first=lambda e: e["is_first"].__setitem__(2, True)),
        r"is_last": broken(is_last=np.zeros(5, bool)),
        r"is_terminal'\]: expected True": broken(terminated=lambda e: e["terminated"].__setitem__((4, slice(0, 2)), True)),
        r"'alive'\]: an agent that ended must not be alive afterwards; violated by agent slot 2 at row 3": broken(
            alive=lambda e: e["alive"].__setitem__((3, 2), True)
        ),
        r"'alive'\]: a live agent must be alive on the next row unless it ended; violated by agent slot 1 at row 2": broken(
            alive=lambda e: e["alive"][2:].__setitem__((slice(None), 1), False),
            truncated=lambda e: e["truncated"].__setitem__((4, 1), False),
            obs=lambda e: e["obs"][2:].__setitem__((slice(None), 1), 0),
            reward=lambda e: e["reward"][2:].__setitem__((slice(None), 1), 0),
        ),
        r"'obs'\]: expected zeros for absent agents; agent slot 2 at row 4": broken(
            obs=lambda e: e["obs"].__setitem__((4, 2, 0), 1)
        ),
        r"action_mask'\]: expected all True for absent": broken(
            action_mask=lambda e: e["action_mask"].__setitem__((3, 2, 0), 0)
        ),
        r"'action'\]: expected zeros on the last row": broken(action=lambda e: e["action"].__setitem__((4, 0), 1)),
        r"'action'\]: expected zeros where an agent does not act; agent slot 2 at row 2": broken(
            action=lambda e: e["action"].__setitem__((2, 2), 1)
        ),
        r"'action'\]: expected actions in \[0, 2\) for agent slot 2": broken(
            action=lambda e: e["action"].__setitem__((0, 2), 2)
        ),
        r"'reward'\]: expected zeros on row 0": broken(reward=lambda e: e["reward"].__setitem__((0, 0), 1)),
        r"'state'\]: expected finite values, got NaN/inf at row 1": broken(
            state=lambda e: e["state"].__setitem__((1, 0), np.nan)
        ),
    }
    for match, bad in cases.items():
        with pytest.raises(ValueError, match=match):
            validate_episode(bad, spec)
    with pytest.raises(TypeError, match="numpy array"):
        validate_episode(broken(obs=ep["obs"].tolist()), spec)
    other = make_spec(discrete=False)
    with pytest.raises(ValueError, match=r"episode\['action_mask'\]: expected shape \(5, 3, 2\) bool, got \(5, 3, 3\)"):
        validate_episode(ep, other)
    with pytest.raises(ValueError, match=r"episode\['action'\]: expected shape \(5, 3\) int64, got \(5, 3\) float32"):
        validate_episode(broken(action=ep["action"].astype(np.float32)), spec)


def test_recorder_on_mpe():
    env, spec = make("mpe:simple_spread_v3", max_cycles=6)
    rec = EpisodeRecorder(spec)
    obs, infos = env.reset(seed=5)
    rec.start(obs, infos, env.state())
    first_obs, first_state = obs, env.state()
    rng = np.random.default_rng(0)
    taken, rewards = [], []
    while env.agents:
        actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        obs, rew, term, trunc, infos = env.step(actions)
        rec.add(actions, obs, rew, term, trunc, infos, env.state())
        taken.append([actions[a] for a in spec.agents])
        rewards.append([rew[a] for a in spec.agents])
    ep = rec.finish()
    n = spec.n_agents
    assert ep["obs"].shape == (7, n, spec.obs_dim) and ep["state"].shape == (7, spec.state_dim)
    assert ep["alive"].all(), "no MPE agent leaves before the time limit"
    assert ep["truncated"][-1].all() and not ep["truncated"][:-1].any() and not ep["terminated"].any()
    assert ep["is_first"].tolist() == [True] + [False] * 6 and ep["is_last"].tolist() == [False] * 6 + [True]
    assert not ep["is_terminal"].any()
    assert ep["action_mask"].all(), "MPE has no masks"
    np.testing.assert_array_equal(ep["action"][:6], np.array(taken))
    np.testing.assert_allclose(ep["reward"][1:], np.array(rewards, np.float32))
    np.testing.assert_array_equal(ep["obs"][0, 0], first_obs[spec.agents[0]])
    np.testing.assert_array_equal(ep["obs"][-1, 1], obs[spec.agents[1]])
    np.testing.assert_array_equal(ep["state"][0], first_state)
    validate_episode(ep, spec)
