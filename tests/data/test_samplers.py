"""EventStarts: windows holding rare events (large rewards, terminations) drawn at the configured rate, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmenv.data import EpisodeReplay, EventStarts, ReplayConfig, event_rows


def episode(eid: int, rows: int, events: dict[int, tuple[float, bool]] | None = None, n: int = 2) -> dict[str, np.ndarray]:
    """Rows carry ``step`` and ``episode``; ``events``: row -> (reward of agent 1, terminated of agent 0)."""
    reward = np.full((rows, n), 0.01, np.float32)
    terminated = np.zeros((rows, n), bool)
    for row, (r, term) in (events or {}).items():
        reward[row, 1], terminated[row, 0] = r, term
    step = np.arange(rows, dtype=np.int64)
    return {"step": step, "episode": np.full(rows, eid, np.int64), "reward": reward, "terminated": terminated}


def replay_with_events(capacity: int = 10_000) -> EpisodeReplay:
    """Episode 0: 10 rows, +10 at row 6; episode 1: 8 rows, none; episode 2: 10 rows, termination at row 9."""
    rep = EpisodeReplay(ReplayConfig(capacity=capacity, seed=0))
    rep.add(episode(0, 10, {6: (10.0, False)}))
    rep.add(episode(1, 8))
    rep.add(episode(2, 10, {9: (0.0, True)}))
    return rep


def holds_event(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """(B,) whether each sampled window holds a reward of magnitude >= 1 or a termination."""
    return ((batch["reward"].abs() >= 1).any(-1) | batch["terminated"].any(-1)).any(-1).numpy()


def test_event_rows_by_hand():
    """Rows with |reward| >= the threshold for some agent, or (optionally) a termination."""
    ep = episode(0, 6, {1: (-5.0, False), 3: (0.5, False), 4: (0.0, True), 5: (1.0, False)})
    assert event_rows(ep).tolist() == [False, True, False, False, True, True]
    assert event_rows(ep, terminations=False).tolist() == [False, True, False, False, False, True]
    assert event_rows(ep, min_abs_reward=0.5).tolist() == [False, True, False, True, True, True]
    assert event_rows(ep, min_abs_reward=6.0, terminations=False).tolist() == [False] * 6


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_event_windows_are_drawn_at_the_rate(rate):
    """Length 4: starts 3-6 of episode 0 and 6 of episode 2 hold an event (5 of 19 windows: 0.26 uniformly)."""
    rep = replay_with_events()
    rep.sampler = EventStarts(rep, rate)
    b = rep.sample(20_000, 4, generator=3)
    frac = holds_event(b).mean()
    assert abs(frac - rate) < 0.015, frac
    start = b["episode"][:, 0].numpy() * 100 + b["step"][:, 0].numpy()
    values, counts = np.unique(start, return_counts=True)
    event_starts = [3, 4, 5, 6, 206]
    if rate > 0:  # uniform within the event windows
        sel = np.isin(values, event_starts)
        assert sorted(values[sel].tolist()) == sorted(event_starts)
        np.testing.assert_allclose(counts[sel] / counts.sum(), rate / 5, atol=0.01)
    if rate < 1:  # and within the others: 0-2 of episode 0, 0-4 of episode 1, 0-5 of episode 2
        sel = ~np.isin(values, event_starts)
        assert values[sel].tolist() == [0, 1, 2, 100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 205]
        np.testing.assert_allclose(counts[sel] / counts.sum(), (1 - rate) / 14, atol=0.01)


def test_seeded_determinism_and_the_protocol_arguments():
    """The same generator state gives the same picks; another seed others; picks are valid (episode, start) pairs."""
    rep = replay_with_events()
    sampler = EventStarts(rep, 0.5)
    valid, ids = np.array([7, 5, 7]), rep.episode_ids
    a = sampler(valid, ids, 4, 64, torch.Generator().manual_seed(1))
    b = sampler(valid, ids, 4, 64, torch.Generator().manual_seed(1))
    c = sampler(valid, ids, 4, 64, torch.Generator().manual_seed(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[1], c[1])
    episode_, start = a
    assert episode_.dtype == start.dtype == np.int64 and episode_.shape == start.shape == (64,)
    assert ((start >= 0) & (start < valid[episode_])).all()
    rep.sampler = sampler
    first = rep.sample(32, 4, generator=5)
    assert torch.equal(first["step"], rep.sample(32, 4, generator=5)["step"])


def test_fallbacks_when_one_group_is_empty():
    """No event anywhere: uniform over every window; every window holds one: all of them, whatever the rate."""
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    rep.add(episode(0, 5))
    rep.add(episode(1, 6))
    rep.sampler = EventStarts(rep, 1.0)
    b = rep.sample(6_000, 3, generator=0)
    start = b["episode"][:, 0].numpy() * 10 + b["step"][:, 0].numpy()
    values, counts = np.unique(start, return_counts=True)
    assert values.tolist() == [0, 1, 2, 10, 11, 12, 13]
    np.testing.assert_allclose(counts / counts.sum(), 1 / 7, atol=0.015)
    full = EpisodeReplay(ReplayConfig(capacity=100))
    full.add(episode(0, 5, {r: (2.0, False) for r in range(5)}))
    full.sampler = EventStarts(full, 0.0)
    assert holds_event(full.sample(50, 2, generator=0)).all()
    with pytest.raises(ValueError, match=r"^valid: expected at least one valid start, got counts \[0, 0\]$"):
        EventStarts(rep, 0.5)(np.zeros(2, np.int64), rep.episode_ids, 7, 4, torch.Generator())


def test_event_windows_follow_the_window_length_and_new_episodes():
    """The split into event / other windows is redone when T or the stored episodes change."""
    rep = replay_with_events()
    rep.sampler = EventStarts(rep, 1.0)
    assert holds_event(rep.sample(500, 4, generator=0)).all()
    b = rep.sample(500, 1, generator=0)  # one-row windows: only rows 6 of episode 0 and 9 of episode 2
    assert holds_event(b).all() and set(zip(b["episode"][:, 0].tolist(), b["step"][:, 0].tolist())) == {(0, 6), (2, 9)}
    rep.add(episode(3, 3, {1: (-5.0, False)}))
    b = rep.sample(2000, 1, generator=0)
    assert set(zip(b["episode"][:, 0].tolist(), b["step"][:, 0].tolist())) == {(0, 6), (2, 9), (3, 1)}


def test_windows_past_an_episode_end_only_count_its_own_rows_and_evicted_episodes_are_forgotten():
    """cross_episodes windows: events of the next episode do not count; eviction drops the cached episode."""
    rep = replay_with_events(capacity=28)
    sampler = rep.sampler = EventStarts(rep, 1.0)
    b = rep.sample(400, 4, cross_episodes=True, generator=0)
    own = b["episode"] == b["episode"][:, :1]
    hit = ((b["reward"].abs() >= 1).any(-1) | b["terminated"].any(-1)) & own
    assert hit.any(-1).all()  # every window holds an event among its own episode's rows
    assert set(sampler._cumsum) == {0, 1, 2}
    rep.add(episode(3, 8))  # evicts episode 0
    rep.sample(10, 4, generator=0)
    assert set(sampler._cumsum) == {1, 2, 3}


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_impossible_rates_are_refused(rate):
    """A rate outside [0, 1] (or not a number) raises a ValueError naming rate."""
    with pytest.raises(ValueError, match=r"^rate: expected a probability in \[0, 1\], got "):
        EventStarts(replay_with_events(), rate)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), "1"])
def test_bad_reward_thresholds_are_refused(threshold):
    """A non-positive (or non-numeric) reward threshold raises a ValueError naming min_abs_reward."""
    with pytest.raises(ValueError, match=r"^min_abs_reward: expected a positive number, got "):
        EventStarts(replay_with_events(), 0.5, min_abs_reward=threshold)
