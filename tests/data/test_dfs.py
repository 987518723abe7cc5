"""DFS (DRAMA §2.4, issue 16 item 2): the probabilities against their closed forms, only start rows counted, uniform
draws from zero counts, the e^-5 odds, counts kept across save/load and dropped on eviction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_samplers import episode

from wmenv.data import DFS, DFSConfig, EpisodeReplay, ReplayConfig
from wmenv.data.samplers import dfs_imagination_probs, dfs_world_model_probs


def _replay(capacity: int = 10_000) -> EpisodeReplay:
    rep = EpisodeReplay(ReplayConfig(capacity=capacity, seed=0))
    for eid, rows in enumerate((10, 8, 10)):
        rep.add(episode(eid, rows))
    return rep


def test_probabilities_match_the_closed_forms():
    c, v, k = np.array([0, 1, 3, 7]), np.array([0, 64, 640, 64]), 64.0
    z = np.exp(-c / 10)
    np.testing.assert_allclose(dfs_world_model_probs(c), z / z.sum(), rtol=0, atol=1e-6)
    s = np.minimum(0.0, c - v / k)  # alpha = beta = 1: min(0, c - v/k) = [0, 0, -7, 0]
    np.testing.assert_allclose(dfs_imagination_probs(c, v, k), np.exp(s / 10) / np.exp(s / 10).sum(), rtol=0, atol=1e-6)
    a, b = 0.5, 2.0  # the general score c - a v/k - b max(0, c - v/k)
    g = c - a * v / k - b * np.maximum(0, c - v / k)
    np.testing.assert_allclose(dfs_imagination_probs(c, v, k, 5.0, a, b), np.exp(g / 5) / np.exp(g / 5).sum(), atol=1e-6)
    huge = dfs_world_model_probs(np.array([0, 10_000]))  # stable: no overflow, no NaN
    assert np.isfinite(huge).all() and huge[0] == pytest.approx(1.0)


def test_v_over_k_fifty_above_c_gives_e_to_the_minus_five_odds():
    """One start with v/k - c = 50 against one with equal counts: odds exp(-50/10) = e^-5."""
    p = dfs_imagination_probs(np.array([10, 10]), np.array([10 * 64, 60 * 64]), 64.0)
    assert p[1] / p[0] == pytest.approx(math.exp(-5), abs=1e-6)


def test_only_start_rows_are_counted_each_in_its_own_counter():
    rep = _replay()
    dfs = DFS(rep)
    rep.sampler = dfs.world_model_starts
    idx, _ = rep.sample_indices(5, 4, generator=0)
    c = np.concatenate([dfs.counts(i)[0] for i in range(3)])
    assert c.sum() == 5 and (c <= 1).all(), "5 distinct starts, one count each (no replacement within a draw)"
    starts = np.sort(idx[:, 0])  # ring index of each window's first row = its position in the stored run
    np.testing.assert_array_equal(np.flatnonzero(c), starts)
    assert all(dfs.counts(i)[1].sum() == 0 for i in range(3))
    rep.using(dfs.imagination_starts).sample(3, 4, generator=1)
    assert sum(dfs.counts(i)[1].sum() for i in range(3)) == 3 and c.sum() == 5
    assert sum(dfs.counts(i)[0].sum() for i in range(3)) == 5, "imagination draws leave c alone"


def test_zero_counts_draw_uniformly():
    """Chi-square over the 19 valid starts of windows of 4: each single draw from fresh (zero) counts."""
    rep = _replay()
    valid, ids = np.clip(rep.episode_lengths - 3, 0, None), rep.episode_ids
    g = torch.Generator().manual_seed(0)
    hits = np.zeros(int(valid.sum()), np.int64)
    ends = np.cumsum(valid) - valid
    for _ in range(3800):
        e, s = DFS(rep).imagination_starts(valid, ids, 4, 1, g)
        hits[ends[e[0]] + s[0]] += 1
    expected = 3800 / 19
    assert ((hits - expected) ** 2 / expected).sum() < 34.805  # chi-square, 18 degrees of freedom, p = 0.01
    np.testing.assert_allclose(DFS(rep).world_model_probs(valid, ids), np.full(19, 1 / 19), atol=1e-12)


def test_draws_follow_the_counts_and_a_large_batch_takes_every_start():
    rep = _replay()
    dfs = DFS(rep, DFSConfig(tau=1.0))
    valid, ids = np.clip(rep.episode_lengths - 3, 0, None), rep.episode_ids
    g = torch.Generator().manual_seed(0)
    e, s = dfs.world_model_starts(valid, ids, 4, 19, g)  # every valid start once
    assert len(set(zip(e.tolist(), s.tolist()))) == 19
    e, s = dfs.world_model_starts(valid, ids, 4, 40, g)  # more than the valid starts: all, all again, then 2 more
    c = np.concatenate([dfs.counts(i)[0][:v] for i, v in zip(range(3), valid)])
    assert np.bincount(c).tolist() == [0, 0, 0, 17, 2] and c.sum() == 59
    p = dfs.world_model_probs(valid, ids)
    assert p[c == 4].max() < p[c == 3].min()  # fitted more often: drawn less often


def test_counts_survive_save_and_load_and_are_dropped_on_eviction(tmp_path):
    rep = _replay(capacity=28)
    dfs = DFS(rep)
    rep.sampler = dfs.world_model_starts
    rep.sample(12, 4, generator=0)
    rep.using(dfs.imagination_starts).sample(6, 4, generator=1)
    state = dfs.state_dict()
    rep.save(tmp_path / "replay.safetensors")
    loaded = EpisodeReplay.load(tmp_path / "replay.safetensors")
    again = DFS(loaded)
    again.load_state_dict(state)
    for i in range(3):
        for a, b in zip(dfs.counts(i), again.counts(i)):
            np.testing.assert_array_equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert np.array_equal(rep.sample_indices(4, 4, generator=g1)[0],
                          loaded.sample_indices(4, 4, generator=g2, sampler=again.world_model_starts)[0])  # fmt: skip
    rep.add(episode(3, 8))  # evicts episode 0 and its counts
    rep.sample(2, 4, generator=0)
    assert sorted(dfs.state_dict()["ids"].tolist()) == [1, 2, 3]
    with pytest.raises(ValueError, match="episode_id: 0 is not stored"):
        dfs.counts(0)
    again.load_state_dict(dfs.state_dict())  # episode 3 is not in `loaded`: dropped; 1 and 2 carried
    assert again.counts(1)[0].sum() == dfs.counts(1)[0].sum()


def test_a_state_from_another_replay_or_malformed_is_refused():
    dfs = DFS(_replay())
    other = EpisodeReplay(ReplayConfig(seed=0))
    other.add(episode(0, 12))  # id 0 with 12 rows, not 10
    with pytest.raises(ValueError, match="episode 0 has 10 rows in the sampler state but 12 in the replay"):
        odd = DFS(other)
        dfs.world_model_starts(np.array([7, 5, 7]), np.array([0, 1, 2]), 4, 2, torch.Generator())
        odd.load_state_dict(dfs.state_dict())
    with pytest.raises(ValueError, match="expected DFS.state_dict"):
        dfs.load_state_dict({"ids": np.zeros(1)})
    with pytest.raises(ValueError, match="inconsistent shapes"):
        dfs.load_state_dict({"ids": np.zeros(1), "rows": np.ones(1), "counts": np.zeros((2, 5))})


@pytest.mark.parametrize("field,value", [("tau", 0), ("scale", -1.0), ("imagination_tau", True), ("alpha", float("nan"))])
def test_bad_config_values_are_refused(field, value):
    with pytest.raises(ValueError, match=f"DFSConfig.{field}"):
        DFSConfig(**{field: value})


def test_a_dream_draws_its_starts_through_the_imagination_sampler():
    """`replay.using(dfs.imagination_starts)` as a dream's start: its context windows are counted in v, not c."""
    from wmenv.data.collect import random_replay
    from wmenv.dream import DreamVecEnv
    from wmenv.models.registry import build_model

    rep, spec = random_replay("mpe:simple_spread_v3", 100, num_envs=2)
    dfs = DFS(rep)
    torch.manual_seed(0)
    dream = DreamVecEnv(build_model("mamba", spec, "small"), 6, 5, start=rep.using(dfs.imagination_starts), seed=0)
    dream.reset()
    v = sum(dfs.counts(int(i))[1].sum() for i in rep.episode_ids)
    c = sum(dfs.counts(int(i))[0].sum() for i in rep.episode_ids)
    assert (v, c) == (6, 0)


def test_counts_of_a_streamed_episode_keep_their_rows_as_it_grows():
    rep = EpisodeReplay(ReplayConfig(capacity=100, seed=0))
    first = {**episode(0, 6), "is_first": np.arange(6) == 0}
    rep.add(first)
    dfs = DFS(rep)
    rep.sampler = dfs.world_model_starts
    rep.sample(3, 4, generator=0)  # 3 valid starts, drawn without replacement: each once
    np.testing.assert_array_equal(dfs.counts(0)[0], [1, 1, 1, 0, 0, 0])
    later = {k: v[:4] for k, v in episode(0, 4).items()} | {"is_first": np.zeros(4, bool)}
    assert rep.add(later, continues=0) == 0
    np.testing.assert_array_equal(dfs.counts(0)[0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # the new rows start at zero
    probs = dfs.world_model_probs(np.array([7]), np.array([0]))  # windows of 4 rows now start at rows 0-6
    z = np.exp(-np.array([1, 1, 1, 0, 0, 0, 0]) / 10)
    np.testing.assert_allclose(probs, z / z.sum(), atol=1e-6)
    rep.sample(7, 4, generator=1)
    again = DFS(rep)
    again.load_state_dict(dfs.state_dict())
    np.testing.assert_array_equal(again.counts(0)[0], [2, 2, 2, 1, 1, 1, 1, 0, 0, 0])
    rep.add({k: v[:2] for k, v in later.items()}, continues=0)  # grown again, no draw since: saved as long as it is now
    state = dfs.state_dict()
    assert state["rows"].tolist() == [12]
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.counts(0)[0], [2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_k_defaults_to_the_ratio_of_imagination_to_world_model_draws():
    """scale None: k = imagination starts / world-model starts drawn on the stored rows (1 before both were drawn),
    so that a schedule drawing 25x more fit windows than dream starts (the model-based loop's) still weighs v/k
    against c as DRAMA's one-update-each schedule does; an explicit scale is used as given."""
    rep = _replay()
    dfs, fixed = DFS(rep), DFS(rep, DFSConfig(scale=64.0))
    assert dfs.scale == 1.0 and fixed.scale == 64.0
    rep.sample(12, 4, generator=0, sampler=dfs.world_model_starts)
    assert dfs.scale == 1.0, "no imagination draw yet"
    rep.sample(3, 4, generator=1, sampler=dfs.imagination_starts)
    assert dfs.scale == pytest.approx(3 / 12)
    valid, ids = np.array([7, 5, 7]), np.array([0, 1, 2])
    c = np.concatenate([dfs.counts(i)[0][:n] for i, n in zip(ids, valid)])
    v = np.concatenate([dfs.counts(i)[1][:n] for i, n in zip(ids, valid)])
    np.testing.assert_allclose(dfs.imagination_probs(valid, ids), dfs_imagination_probs(c, v, 3 / 12), atol=1e-12)
    assert not np.allclose(dfs.imagination_probs(valid, ids), dfs_imagination_probs(c, v, 64.0))
