"""VecRecorder: episodes recorded from a VecEnv equal the dict path's, on MPE and on Flatland (agents leave early)."""

import numpy as np
import pytest

from wmenv.data import EpisodeRecorder, validate_episode
from wmenv.data.collect import Collector, VecRecorder, mean_metrics, random_available
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


def test_streamed_collection_stores_every_row_once_as_pieces_of_the_episodes():
    """With ``stream``, the rows of running episodes are stored at the end of every call: the pieces of each episode,
    joined, are the episode a whole-episode collection stores; only an episode's first piece starts with a reset."""

    def run(calls, steps, stream):
        with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=3, max_cycles=5) as vec:
            replay, rng = EpisodeReplay(ReplayConfig(capacity=1000), spec=vec.spec), np.random.default_rng(0)
            collector = Collector(vec, replay, stream=stream)
            returns = [collector(steps, lambda s: random_available(s.action_mask, rng)) for _ in range(calls)]
            return replay, returns

    pieces_replay, pieces_returns = run(4, 6, True)  # 3 steps of each copy per call; episodes last 5
    whole, whole_returns = run(1, 24, False)
    assert sum(pieces_returns, []) == whole_returns[0]
    pieces = [pieces_replay.episode(i) for i in range(pieces_replay.num_episodes)]
    # both copies end their episodes on the same steps, so their pieces alternate: copy 0, copy 1, copy 0, ...
    assert [len(p["obs"]) for p in pieces] == [3, 3, 3, 3, 1, 1, 3, 3, 2, 2, 2, 2]
    for copy in (0, 1):
        joined, episodes = [], []
        for p in pieces[copy::2]:
            validate_episode(p, pieces_replay.spec)
            assert bool(p["is_first"][0]) == (not joined)  # a reset only where an episode starts
            joined.append(p)
            if p["is_last"][-1]:
                episodes.append({k: np.concatenate([q[k] for q in joined]) for k in p})
                joined = []
        assert len(episodes) == 2 and len(joined) == 1  # the third episode is still running: one piece of 2 rows so far
        for e, ep in enumerate(episodes):
            expected = whole.episode(2 * e + copy)
            for k in expected:
                np.testing.assert_array_equal(ep[k], expected[k], err_msg=k)
    # windows drawn from a piece that continues an episode do not start with a reset
    first = np.array([bool(p["is_first"][0]) for p in pieces])
    every = np.arange(len(pieces))
    _, reset = pieces_replay.sample_indices(len(pieces), 1, sampler=lambda *a: (every, np.zeros_like(every)))
    np.testing.assert_array_equal(reset[:, 0], first)
    with pytest.raises(TypeError, match="stream: expected a bool"):
        Collector(None, None, stream="yes")


def test_recorder_flush_hands_out_complete_rows_once():
    env, spec = make("mpe:simple_spread_v3", max_cycles=4)
    rec = EpisodeRecorder(spec)
    obs, infos = env.reset(seed=1)
    assert rec.flush() is None  # nothing started
    rec.start(obs, infos, env.state())
    assert rec.flush() is None  # row 0's action is not taken yet
    actions = {a: 0 for a in spec.agents}
    rec.add(actions, *env.step(actions), env.state())
    piece = rec.flush()
    assert len(piece["obs"]) == 1 and piece["is_first"].tolist() == [True] and not piece["is_last"].any()
    assert rec.flush() is None and rec.num_steps == 1
    while env.agents:
        rec.add(actions, *env.step(actions), env.state())
    rest = rec.finish()
    assert len(rest["obs"]) == 4 and not rest["is_first"].any() and rest["is_last"][-1]
    assert rest["reward"][0].any()  # the continuing piece's row 0 holds the reward of arriving there


def test_one_copy_streamed_one_step_at_a_time_stores_whole_episodes_that_windows_cross():
    """One env copy, a call per env step (DRAMA's schedule): each piece is appended to its episode, so the replay holds
    the episodes a whole-episode collection stores, and windows longer than a call are drawn while an episode runs."""

    def run(calls, steps, stream):
        with VecEnv("mpe:simple_spread_v3", num_envs=1, seed=3, max_cycles=5) as vec:
            replay, rng = EpisodeReplay(ReplayConfig(capacity=1000), spec=vec.spec), np.random.default_rng(0)
            collector = Collector(vec, replay, stream=stream)
            for i in range(calls):
                collector(steps, lambda s: random_available(s.action_mask, rng))
                if stream and i == 3:  # 4 steps into the first episode: one stored episode of 4 rows so far
                    assert replay.episode_lengths.tolist() == [4] and not replay.episode(0)["is_last"].any()
                    b = replay.sample(8, 4, generator=0)
                    assert b["reset"][:, 0].all() and not b["reset"][:, 1:].any()
            return replay

    streamed, whole = run(13, 1, True), run(1, 13, False)
    assert streamed.episode_lengths.tolist() == [6, 6, 3]  # two whole episodes (5 steps, 6 rows), 3 rows of the third
    for i in range(2):
        for k, v in whole.episode(i).items():
            np.testing.assert_array_equal(streamed.episode(i)[k], v, err_msg=k)
    assert whole.num_episodes == 2 and streamed.episode(2)["is_first"][0]


def test_collector_keeps_each_finished_episodes_metrics_until_taken():
    """Flatland's ``arrived_fraction`` of every episode that ended, in the order of the returns, across calls, each the
    env copy's own `episode_metrics` at its end; `take_metrics` hands them over once; MPE's episodes report none."""
    kw = {"malfunction_rate": 0.0, "max_episode_steps": 12}

    def collect_by_hand():
        """The same copies and actions stepped without a Collector: each ended episode's metrics, in order."""
        with VecEnv("flatland:5", num_envs=2, seed=5, **kw) as vec:
            rng, s, seen = np.random.default_rng(0), vec.reset(), []
            for _ in range(30):
                s = vec.step(random_available(s.action_mask, rng))
                seen += [s.episode_metrics[e] for e in np.flatnonzero(s.done)]
            return seen

    with VecEnv("flatland:5", num_envs=2, seed=5, **kw) as vec:
        replay, rng = EpisodeReplay(ReplayConfig(capacity=5000), spec=vec.spec), np.random.default_rng(0)
        collector = Collector(vec, replay)
        returns = [collector(steps, lambda s: random_available(s.action_mask, rng)) for steps in (30, 30)]
        metrics = collector.take_metrics()
    assert len(metrics) == len(sum(returns, [])) == replay.num_episodes >= 4
    assert metrics == collect_by_hand() and all(set(m) == {"arrived_fraction"} for m in metrics)
    assert collector.take_metrics() == []
    with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=3, max_cycles=5) as vec:
        replay = EpisodeReplay(ReplayConfig(capacity=1000), spec=vec.spec)
        collector, rng = Collector(vec, replay), np.random.default_rng(0)
        assert len(collector(12, lambda s: random_available(s.action_mask, rng))) == 2
        assert collector.take_metrics() == [{}, {}]


def test_mean_metrics_averages_each_name_over_the_episodes_reporting_it():
    assert mean_metrics([{"arrived_fraction": 0.2, "won": 1.0}, {"arrived_fraction": 0.6}, {}]) == {
        "arrived_fraction": 0.4,
        "won": 1.0,
    }
    assert mean_metrics([]) == {} and mean_metrics([{}, {}]) == {}
