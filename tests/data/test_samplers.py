"""EventStarts: windows holding rare events (large rewards, terminations) drawn at the configured rate, seeded;
RecentStarts: uniform over the newest episodes only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmenv.data import EpisodeReplay, EventStarts, RecentStarts, ReplayConfig, event_rows, uniform_starts


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


# --- exact picks on hand-built inputs ---------------------------------------------------------------------------------


def draws(seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two (B,) float64 uniform draws `EventStarts` takes from a generator seeded ``seed``: event-or-not, then position."""
    gen = torch.Generator().manual_seed(seed)
    want = torch.rand(batch_size, generator=gen, dtype=torch.float64).numpy()
    return want, torch.rand(batch_size, generator=gen, dtype=torch.float64).numpy()


def tiny_replay() -> EpisodeReplay:
    """Episode 0: 4 rows, reward exactly 1 at row 0; 1: 3 rows, reward -0.6 at row 1; 2: 4 rows, only a termination, row 3."""
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    rep.add(episode(0, 4, {0: (1.0, False)}))
    rep.add(episode(1, 3, {1: (-0.6, False)}))
    rep.add(episode(2, 4, {3: (0.0, True)}))
    return rep


TINY_VALID = np.array([3, 2, 3])  # windows of T = 2 rows: starts 0-2, 0-1, 0-2
TINY_WINDOWS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]  # all 8, in flat order


@pytest.mark.parametrize(
    "kwargs, events",
    [
        ({}, [(0, 0), (2, 2)]),  # default threshold 1: reward 1.0 counts, -0.6 does not; the termination counts
        ({"min_abs_reward": 0.5}, [(0, 0), (1, 0), (1, 1), (2, 2)]),  # -0.6 now counts
        ({"terminations": False}, [(0, 0)]),  # episode 2's only event is a termination
        ({"min_abs_reward": 0.5, "terminations": False}, [(0, 0), (1, 0), (1, 1)]),
        ({"min_abs_reward": 2.0}, [(2, 2)]),
    ],
)
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_event_split_and_picks_by_hand(kwargs, events):
    """Rate 1 picks exactly the event windows, rate 0 exactly the others; in between, each pick is the documented
    function of two float64 draws: ``draw < rate`` chooses the group, ``int(u * len(group))`` the window in it."""
    rep = tiny_replay()
    others = [w for w in TINY_WINDOWS if w not in events]
    ids = rep.episode_ids
    for rate, expected in [(1.0, events), (0.0, others)]:
        episode_, start = EventStarts(rep, rate, **kwargs)(TINY_VALID, ids, 2, 300, torch.Generator().manual_seed(0))
        assert sorted(set(zip(episode_.tolist(), start.tolist()))) == expected
    want, u = draws(4, 64)
    rate = float(want[0])  # a draw equal to the rate is not below it: that window is not an event window
    picked = EventStarts(rep, rate, **kwargs)(TINY_VALID, ids, 2, 64, torch.Generator().manual_seed(4))
    groups = [others, events]
    exp = [groups[bool(w < rate)][int(x * len(groups[bool(w < rate)]))] for w, x in zip(want, u)]
    assert list(zip(*(a.tolist() for a in picked))) == exp
    assert picked[0].dtype == picked[1].dtype == np.int64
    # valid in another dtype (floats holding counts) gives the same picks
    again = EventStarts(rep, rate, **kwargs)(TINY_VALID.astype(np.float64), ids, 2, 64, torch.Generator().manual_seed(4))
    assert all(np.array_equal(a, b) for a, b in zip(again, picked))


@pytest.mark.filterwarnings("error::DeprecationWarning")
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_an_empty_group_hands_every_pick_to_the_other(rate):
    """Without events every pick is ``others[int(u * 8)]``, whatever the rate; with events only, ``events[int(u * n)]``."""
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    rep.add(episode(0, 4))
    rep.add(episode(1, 3))
    rep.add(episode(2, 4))
    _, u = draws(9, 50)
    picked = EventStarts(rep, rate)(TINY_VALID, rep.episode_ids, 2, 50, torch.Generator().manual_seed(9))
    assert list(zip(*(a.tolist() for a in picked))) == [TINY_WINDOWS[int(x * 8)] for x in u]
    full = EpisodeReplay(ReplayConfig(capacity=100))
    full.add(episode(0, 4, {r: (-3.0, False) for r in range(4)}))
    full.add(episode(1, 3, {r: (0.0, True) for r in range(3)}))
    picked = EventStarts(full, rate)(np.array([3, 2]), full.episode_ids, 2, 50, torch.Generator().manual_seed(9))
    assert list(zip(*(a.tolist() for a in picked))) == [TINY_WINDOWS[int(x * 5)] for x in u]


def test_no_stored_episode_is_refused():
    """E = 0 (no valid start at all) raises the documented ValueError, not a numpy error."""
    with pytest.raises(ValueError, match=r"^valid: expected at least one valid start, got counts \[\]$"):
        EventStarts(tiny_replay(), 0.5)(np.zeros(0, np.int64), np.zeros(0, np.int64), 2, 4, torch.Generator())


def test_the_split_is_cached_on_length_valid_and_ids():
    """The event / other split is recomputed only when T, ``valid`` or the episode ids change (compared by value)."""
    rep = tiny_replay()
    sampler = EventStarts(rep, 0.5)
    calls = []
    split = sampler._split
    sampler._split = lambda *a: calls.append(a) or split(*a)
    ids = rep.episode_ids
    gen = torch.Generator().manual_seed(0)
    sampler(TINY_VALID, ids, 2, 8, gen)
    sampler(TINY_VALID, ids, 2, 8, gen)
    sampler(TINY_VALID.astype(np.int32), ids.astype(np.int32), 2, 8, gen)  # same values in another dtype
    assert len(calls) == 1
    sampler(np.array([4, 3, 4]), ids, 1, 8, gen)  # another T (and valid)
    assert len(calls) == 2
    sampler(np.array([4, 3, 3]), ids, 1, 8, gen)  # another valid only
    assert len(calls) == 3
    sampler(np.array([4, 3, 3]), ids + 1, 1, 8, gen)  # other ids only: the cache by id is rebuilt
    assert len(calls) == 4 and set(sampler._cumsum) == {1, 2, 3}
    sampler(np.array([4, 3, 3]), ids + 1, 1, 8, gen)
    assert len(calls) == 4


def test_the_default_reward_threshold_is_one():
    """Rewards of magnitude exactly 1 are events by default (Flatland's ±1 or more)."""
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    rep.add(episode(0, 4, {2: (-1.0, False)}))
    episode_, start = EventStarts(rep, 1.0)(np.array([4]), rep.episode_ids, 1, 40, torch.Generator().manual_seed(0))
    assert set(episode_.tolist()) == {0} and set(start.tolist()) == {2}


def test_event_rows_multi_agent_shapes_and_float64_comparison():
    """Rewards (R, N) or (R,) and terminations (R, N): any agent counts; magnitudes are compared in float64."""
    reward = np.array([[0.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.9], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])  # (5, 3)
    terminated = np.zeros((5, 3), bool)
    terminated[4, 2] = True
    ep = {"reward": reward, "terminated": terminated}
    assert event_rows(ep).tolist() == [False, True, False, False, True]
    assert event_rows(ep, min_abs_reward=0.9, terminations=False).tolist() == [False, True, True, False, False]
    assert event_rows(ep, min_abs_reward=0.5).tolist() == [False, True, True, True, True]
    single = {"reward": np.array([0.0, 1.5, -1.0]), "terminated": np.array([True, False, False])}  # (R,) one agent
    assert event_rows(single).tolist() == [True, True, True]
    assert event_rows(single, min_abs_reward=1.2, terminations=False).tolist() == [False, True, False]
    # float32 1.0 is below 1 + 1e-8 (float32 would round the threshold to 1.0); int8 -128 has magnitude 128
    f32 = {"reward": np.array([[1.0, 0.0]], np.float32), "terminated": np.zeros((1, 2), bool)}
    assert event_rows(f32, min_abs_reward=1 + 1e-8).tolist() == [False]
    i8 = {"reward": np.array([[0, -128]], np.int8), "terminated": np.zeros((1, 2), bool)}
    assert event_rows(i8, min_abs_reward=100.0).tolist() == [True]
    assert event_rows(ep).dtype == bool


# --- uniform_starts ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_uniform_starts_maps_each_draw_to_its_episode_and_row():
    """Draw ``k = randint(Σ valid)`` is the k-th valid (episode, start) pair, episodes oldest first, rows in order."""
    valid = np.array([0, 2, 0, 3, 1])
    pairs = [(1, 0), (1, 1), (3, 0), (3, 1), (3, 2), (4, 0)]
    k = torch.randint(6, (200,), generator=torch.Generator().manual_seed(7), dtype=torch.int64).numpy()
    episode_, start = uniform_starts(valid, np.arange(5), 3, 200, torch.Generator().manual_seed(7))
    assert episode_.dtype == start.dtype == np.int64 and episode_.shape == start.shape == (200,)
    assert list(zip(episode_.tolist(), start.tolist())) == [pairs[i] for i in k]
    assert sorted(set(zip(episode_.tolist(), start.tolist()))) == pairs
    for other in ([0, 2, 0, 3, 1], valid.astype(np.int32)):  # a list, another int dtype: same picks, int64
        e2, s2 = uniform_starts(other, np.arange(5), 3, 200, torch.Generator().manual_seed(7))
        assert e2.dtype == s2.dtype == np.int64 and np.array_equal(e2, episode_) and np.array_equal(s2, start)


def test_uniform_starts_uses_only_the_given_generator():
    """Same generator state -> same picks (whatever the global seed); another seed -> other picks."""
    valid = np.array([5, 1, 7])
    torch.manual_seed(0)
    a = uniform_starts(valid, np.arange(3), 2, 32, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    b = uniform_starts(valid, np.arange(3), 2, 32, torch.Generator().manual_seed(3))
    c = uniform_starts(valid, np.arange(3), 2, 32, torch.Generator().manual_seed(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


@pytest.mark.parametrize(
    "valid, shown", [(np.zeros(2), r"\[0, 0\]"), (np.array([0, 0, 0]), r"\[0, 0, 0\]"), (np.array([-1, 1]), r"\[-1, 1\]")]
)
def test_uniform_starts_without_a_valid_start_is_refused(valid, shown):
    """No valid start (Σ valid <= 0) raises a ValueError naming valid, with the counts as integers."""
    with pytest.raises(ValueError, match=rf"^valid: expected at least one valid start, got counts {shown}$"):
        uniform_starts(valid, np.arange(len(valid)), 2, 4, torch.Generator())


def test_events_in_rows_a_streamed_episode_gains_later_are_seen():
    rep = EpisodeReplay(ReplayConfig(capacity=100, seed=0))
    rep.add({**episode(0, 6), "is_first": np.arange(6) == 0})
    sampler = EventStarts(rep, rate=1.0)
    rep.sampler = sampler
    assert not holds_event(rep.sample(16, 3, generator=0)).any()  # no event yet: uniform fallback
    grown = episode(0, 4, {2: (10.0, False)})
    rep.add({**grown, "step": np.arange(6, 10), "is_first": np.zeros(4, bool)}, continues=0)  # +10 at row 8 of the 10
    batch = rep.sample(64, 3, generator=1)
    assert holds_event(batch).all() and set(batch["step"][:, 0].tolist()) <= {6, 7, 8}


def test_recent_starts_draw_only_from_the_newest_episodes():
    """Episodes of 10 / 8 / 10 / 6 rows, windows of 4 (valid 7 / 5 / 7 / 3): the newest 8 rows are episodes 3 and 2
    (6 + 10 rows), so starts come from those two only, uniformly over their 10 valid starts."""
    valid, ids = np.array([7, 5, 7, 3]), np.arange(4)
    episode_, start = RecentStarts(8)(valid, ids, 4, 4000, torch.Generator().manual_seed(0))
    assert set(episode_.tolist()) == {2, 3} and (start < valid[episode_]).all()
    counts = np.bincount(episode_ * 10 + start, minlength=40)[[*range(20, 27), *range(30, 33)]]
    assert counts.min() > 300 and counts.max() < 500, "uniform over the 10 recent starts (400 expected each)"
    assert set(RecentStarts(6)(valid, ids, 4, 200, torch.Generator().manual_seed(0))[0].tolist()) == {3}


def test_recent_starts_covering_everything_draw_as_uniform_starts():
    valid, ids = np.array([7, 5, 7, 3]), np.arange(4)
    a = RecentStarts(10_000)(valid, ids, 4, 64, torch.Generator().manual_seed(3))
    b = uniform_starts(valid, ids, 4, 64, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_recent_starts_reach_back_past_episodes_too_short_for_a_window():
    """The newest two episodes are shorter than the window (no valid start): the newest one that has one is used."""
    episode_, _ = RecentStarts(1)(np.array([7, 5, 0, 0]), np.arange(4), 4, 100, torch.Generator().manual_seed(0))
    assert set(episode_.tolist()) == {1}
    with pytest.raises(ValueError, match="at least one valid start"):
        RecentStarts(1)(np.zeros(3, np.int64), np.arange(3), 4, 2, torch.Generator())
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="RecentStarts.rows"):
            RecentStarts(bad)
