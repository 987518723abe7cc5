"""VecRecorder: episodes recorded from a VecEnv equal the dict path's, on MPE and on Flatland (agents leave early)."""

import numpy as np
import pytest

from wmenv.data import EpisodeRecorder, validate_episode
from wmenv.data.collect import Collector, VecRecorder, random_available
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.envs import make
from wmenv.envs.vector import VecEnv


def _dict_path(env_id, seed, actions, **kwargs):
    """Episodes of one env copy fed action rows (N,), recorded from PettingZoo dicts."""
    env, spec = make(env_id, **kwargs)
    rec, episodes = EpisodeRecorder(spec), []
    obs, infos = env.reset(seed=seed)
    rec.start(obs, infos, env.state())
    for act in actions:
        step = {a: int(act[i]) for i, a in enumerate(spec.agents) if a in env.agents}
        rec.add(step, *env.step(step), env.state())
        if not env.agents:
            episodes.append(rec.finish())
            obs, infos = env.reset()
            rec.start(obs, infos, env.state())
    return episodes


def test_vec_recorder_equals_dict_path_mpe():
    actions = np.random.default_rng(1).integers(0, 5, size=(12, 3))
    ref = _dict_path("mpe:simple_spread_v3", 4, actions, max_cycles=5)
    with VecEnv("mpe:simple_spread_v3", num_envs=1, seed=4, max_cycles=5) as vec:
        rec, episodes = VecRecorder(vec.spec, 1), []
        s = vec.reset()
        rec.start(s)
        for act in actions:
            s = vec.step(act[None])
            episodes += rec.add(act[None], s)
    assert len(episodes) == len(ref) == 2
    for ep, r in zip(episodes, ref):
        for k in r:
            np.testing.assert_array_equal(ep[k], r[k], err_msg=k)


def test_vec_recorder_flatland_agents_leaving_early():
    """Deadlocked trains leave mid-episode: their slot is alive up to the terminal row, then dead."""
    kwargs = {"dense_reward": True, "deadlock_terminates": True, "max_episode_steps": 120}
    with VecEnv("flatland:5", num_envs=2, seed=0, **kwargs) as vec:
        spec = vec.spec
        rec, episodes = VecRecorder(spec, 2), []
        s = vec.reset()
        rec.start(s)
        rng = np.random.default_rng(0)
        while len(episodes) < 2:
            actions = np.array([[rng.choice(np.flatnonzero(m)) for m in me] for me in s.action_mask])
            s = vec.step(actions)
            episodes += rec.add(actions, s)
    left_early = 0
    for ep in episodes:
        validate_episode(ep, spec)
        rows = len(ep["obs"])
        assert ep["is_first"][0] and ep["is_last"][-1]
        ended_row = np.where(ep["terminated"] | ep["truncated"], np.arange(rows)[:, None], rows).min(0)  # (N,)
        for i in range(spec.n_agents):
            assert ep["alive"][: ended_row[i] + 1, i].all(), "alive until (and including) the row it ended"
            assert not ep["alive"][ended_row[i] + 1 :, i].any(), "dead after it ended"
            assert not ep["reward"][ended_row[i] + 1 :, i].any(), "no reward after it ended"
        left_early += int((ended_row < rows - 1).sum())
    assert left_early > 0, "with random actions some trains deadlock and leave before the episode ends"


def test_vec_recorder_bad_input():
    with pytest.raises(ValueError, match="num_envs"):
        VecRecorder(make("mpe:simple_spread_v3")[1], 0)
    with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=0) as vec:
        rec = VecRecorder(vec.spec, 3)
        with pytest.raises(ValueError, match="3 env copies"):
            rec.start(vec.reset())


def test_collector_carries_episodes_across_calls():
    """Calls shorter than an episode lose nothing: 4 calls of 3 steps == one call of 12 steps."""

    def run(calls, steps):
        with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=3, max_cycles=5) as vec:
            replay, rng = EpisodeReplay(ReplayConfig(capacity=1000), spec=vec.spec), np.random.default_rng(0)
            collector = Collector(vec, replay)
            returns = [collector(steps, lambda s: random_available(s.action_mask, rng)) for _ in range(calls)]
            return replay, returns

    split, split_returns = run(4, 6)  # 3 steps of each copy per call; episodes last 5
    whole, whole_returns = run(1, 24)
    assert [len(r) for r in split_returns] == [0, 2, 0, 2] and sum(split_returns, []) == whole_returns[0]
    assert len(split.episode_lengths) == len(whole.episode_lengths) == 4
    for i in range(4):
        a, b = split.episode(i), whole.episode(i)
        assert a.keys() == b.keys() and len(a["obs"]) == 6  # 5 steps -> 6 rows
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
