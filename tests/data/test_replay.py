"""EpisodeReplay: contiguous windows, episode boundaries, eviction, determinism and atomic save / load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import torch
from episode_fixtures import make_spec, scripted_run
from safetensors import safe_open

from wmenv.data import EpisodeRecorder, EpisodeReplay, ReplayConfig, persist, uniform_starts
from wmenv.envs import make


def counter_episode(eid: int, rows: int, n: int = 2) -> dict[str, np.ndarray]:
    """An episode whose rows carry their own coordinates: ``step`` (R,), ``episode`` (R,), ``obs`` (R, N, 3)."""
    step = np.arange(rows, dtype=np.int64)
    obs = (eid * 1000 + step[:, None, None] + 0.5 * np.arange(n)[None, :, None]) * np.ones(3)  # (R, N, 3)
    return {"step": step, "episode": np.full(rows, eid, np.int64), "obs": obs.astype(np.float32), "is_first": step == 0}


def filled(lengths, capacity=10_000, seed=0):
    rep = EpisodeReplay(ReplayConfig(capacity=capacity, seed=seed))
    for eid, rows in enumerate(lengths):
        assert rep.add(counter_episode(eid, rows)) == eid
    return rep


def assert_contiguous_within_episode(b):
    step, ep = b["step"].numpy(), b["episode"].numpy()
    assert (np.diff(step, axis=1) == 1).all(), "steps must increase by one inside a window"
    assert (ep == ep[:, :1]).all(), "a window must not cross episodes"
    np.testing.assert_array_equal(b["reset"].numpy(), step == 0)
    np.testing.assert_array_equal(b["is_first"].numpy(), step == 0)
    np.testing.assert_array_equal(b["obs"][..., 0].numpy(), (ep * 1000 + step)[..., None] + 0.5 * np.arange(2))


def test_windows_are_contiguous_and_stay_in_episodes():
    rng = np.random.default_rng(0)
    rep = filled(rng.integers(2, 40, size=60))
    assert len(rep) == sum(rep.episode_lengths) and rep.num_steps == len(rep) - 60 and rep.num_episodes == 60
    for seed in range(5):
        b = rep.sample(64, 12, generator=seed)
        assert b["obs"].shape == (64, 12, 2, 3) and b["obs"].dtype == torch.float32
        assert b["step"].shape == b["reset"].shape == (64, 12) and b["reset"].dtype == torch.bool
        assert_contiguous_within_episode(b)
        lengths = rep.episode_lengths[b["episode"][:, 0].numpy()]
        assert (lengths >= 12).all() and (b["step"][:, -1].numpy() < lengths).all()


def test_uniform_over_valid_starts():
    rep = filled([3, 6, 2])  # length 3: 1 + 4 + 0 valid starts
    b = rep.sample(50_000, 3, generator=1)
    keys = b["episode"][:, 0].numpy() * 10 + b["step"][:, 0].numpy()
    values, counts = np.unique(keys, return_counts=True)
    assert values.tolist() == [0, 10, 11, 12, 13]
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.01)


def test_cross_episode_windows_and_reset_flags():
    rep = filled([4, 3, 5, 2, 5, 4], capacity=20)  # evicts episode 0; episode 5 wraps around the ring end
    assert rep.episode_ids.tolist() == [1, 2, 3, 4, 5] and len(rep) == 19
    b = rep.sample(512, 9, cross_episodes=True, generator=0)
    step, ep, reset = b["step"].numpy(), b["episode"].numpy(), b["reset"].numpy()
    same = ep[:, 1:] == ep[:, :-1]
    assert (~same).any(), "windows of 9 rows over episodes of <= 6 rows must cross"
    assert (np.diff(step, axis=1)[same] == 1).all()
    assert ((ep[:, 1:] - ep[:, :-1])[~same] == 1).all(), "windows follow insertion order"
    assert (step[:, 1:][~same] == 0).all()
    np.testing.assert_array_equal(reset[:, 1:], ~same)  # exactly where the episode id changes
    np.testing.assert_array_equal(reset[:, 0], step[:, 0] == 0)
    np.testing.assert_array_equal(reset, b["is_first"].numpy())
    starts = {(int(e), int(s)) for e, s in zip(ep[:, 0], step[:, 0])}
    assert len(starts) == 19 - 9 + 1, "every start that keeps the window inside the stored rows is used"
    with pytest.raises(ValueError, match="requested windows of 20 rows but the replay holds only 19 rows"):
        rep.sample(1, 20, cross_episodes=True)


def test_cross_episode_windows_never_run_into_a_piece_that_continues_an_episode():
    """Two env copies streaming: copy 0's second piece is stored after copy 1's rows, so the rows before it are
    another copy's; cross-episode windows may enter new episodes (with a reset) but not that piece."""
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    a = rep.add(counter_episode(0, 4))  # copy 0: an episode's first piece
    rep.add(counter_episode(1, 5))  # copy 1: a new episode
    piece = counter_episode(0, 3)
    piece["step"] += 4
    piece["obs"] += 4
    piece["is_first"][:] = False
    assert rep.add(piece, continues=a) == 2  # not the newest: stored apart
    rep.add(counter_episode(3, 6))  # copy 1 again: a new episode after the piece
    b = rep.sample(2000, 5, cross_episodes=True, generator=0)
    step, ep, reset = b["step"].numpy(), b["episode"].numpy(), b["reset"].numpy()
    into_piece = (ep[:, 1:] == 0) & (step[:, 1:] == 4)  # a window that ran into the piece's first row
    assert not into_piece.any()
    same = ep[:, 1:] == ep[:, :-1]
    np.testing.assert_array_equal(reset[:, 1:], ~same & (step[:, 1:] == 0))
    assert (~same).any(), "windows still cross into episodes that start"
    starts = {(int(e), int(s)) for e, s in zip(ep[:, 0], step[:, 0])}
    # runs: episodes 0-1 (9 rows: 5 starts) and the piece + episode 3 (9 rows: 5 starts)
    assert starts == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (0, 4), (0, 5), (0, 6), (3, 0), (3, 1)}
    with pytest.raises(ValueError, match="longest run of stored episodes joined at episode starts has 9 rows"):
        rep.sample(1, 10, cross_episodes=True)


def test_eviction_removes_oldest_first():
    rep = EpisodeReplay(ReplayConfig(capacity=20))
    originals = {}
    for eid in range(7):
        originals[eid] = counter_episode(eid, 7)
        rep.add(originals[eid])
        assert len(rep) <= 20
        assert rep.episode_ids.tolist() == list(range(max(0, eid - 1), eid + 1))
    rep.add(counter_episode(7, 13))  # needs 13 rows: only the newest 7-row episode stays
    assert rep.episode_ids.tolist() == [6, 7] and len(rep) == 20
    for i, eid in enumerate([6]):
        for k, v in originals[eid].items():
            np.testing.assert_array_equal(rep.episode(i)[k], v)
    np.testing.assert_array_equal(rep.episode(-1)["step"], np.arange(13))  # wrapped around the ring end
    b = rep.sample(256, 3, generator=0)
    assert set(b["episode"][:, 0].tolist()) == {6, 7}
    assert_contiguous_within_episode(b)
    with pytest.raises(ValueError, match="21 rows do not fit in a replay of capacity 20"):
        rep.add(counter_episode(8, 21))


def test_too_long_and_empty_and_bad_arguments():
    with pytest.raises(ValueError, match="replay is empty"):
        EpisodeReplay().sample(4, 2)
    rep = filled([5, 8, 3])
    with pytest.raises(ValueError, match="requested windows of 9 rows but the longest stored episode has 8 rows"):
        rep.sample(4, 9)
    assert rep.sample(4, 8)["step"][:, 0].eq(0).all()
    for kwargs, err, match in [
        ({"batch_size": 0, "length": 2}, ValueError, "batch_size"),
        ({"batch_size": 2, "length": "3"}, TypeError, "length"),
        ({"batch_size": 2, "length": 2, "generator": "x"}, TypeError, "generator"),
        ({"batch_size": 2, "length": 2, "cross_episodes": 1}, TypeError, "cross_episodes"),
    ]:
        with pytest.raises(err, match=match):
            rep.sample(**kwargs)
    with pytest.raises(ValueError, match="capacity"):
        ReplayConfig(capacity=1)
    with pytest.raises(IndexError, match=r"index: expected an integer in \[-3, 3\)"):
        rep.episode(3)


def test_schema_is_fixed_by_the_first_episode():
    rep = filled([4])
    ep = counter_episode(1, 4)
    with pytest.raises(ValueError, match=r"missing \['obs'\], unexpected \['other'\]"):
        rep.add({**{k: v for k, v in ep.items() if k != "obs"}, "other": ep["obs"]})
    with pytest.raises(ValueError, match=r"episode\['step'\]: expected rows of shape \(\) int64, got \(\) int32"):
        rep.add({**ep, "step": ep["step"].astype(np.int32)})
    with pytest.raises(ValueError, match="same number of rows"):
        rep.add({**ep, "step": np.arange(5)})
    with pytest.raises(ValueError, match="'reset' is reserved"):
        rep.add({**ep, "reset": ep["is_first"]})
    assert rep.num_episodes == 1


def test_determinism():
    rep = filled(np.arange(3, 30))
    a, b = rep.sample(64, 5, generator=7), rep.sample(64, 5, generator=7)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(rep.sample(32, 4, generator=g1)["step"], rep.sample(32, 4, generator=g2)["step"])
    r1, r2 = filled(np.arange(3, 30), seed=5), filled(np.arange(3, 30), seed=5)
    for _ in range(3):
        assert torch.equal(r1.sample(16, 3)["obs"], r2.sample(16, 3)["obs"])
    assert not torch.equal(rep.sample(64, 3, generator=1)["obs"], rep.sample(64, 3, generator=2)["obs"])


def test_pluggable_sampler():
    def oldest_first_row(valid, ids, length, batch_size, generator):
        return np.zeros(batch_size, np.int64), np.zeros(batch_size, np.int64)

    rep = EpisodeReplay(ReplayConfig(capacity=100), sampler=oldest_first_row)
    for eid in range(3):
        rep.add(counter_episode(eid, 6))
    b = rep.sample(5, 4)
    assert (b["episode"] == 0).all() and (b["step"][:, 0] == 0).all()

    def out_of_range(valid, ids, length, batch_size, generator):
        return np.zeros(batch_size, np.int64), np.full(batch_size, 3)

    rep.sampler = out_of_range  # start 3 with length 4 would run past a 6-row episode
    with pytest.raises(ValueError, match="sampler: returned"):
        rep.sample(5, 4)
    ep, start = uniform_starts(np.array([0, 2, 0, 1]), np.arange(4), 3, 1000, torch.Generator().manual_seed(0))
    assert set(zip(ep.tolist(), start.tolist())) == {(1, 0), (1, 1), (3, 0)}


def _assert_same(r1, r2):
    assert len(r1) == len(r2) and r1.episode_ids.tolist() == r2.episode_ids.tolist()
    for i in range(r1.num_episodes):
        e1, e2 = r1.episode(i), r2.episode(i)
        assert set(e1) == set(e2)
        for k in e1:
            np.testing.assert_array_equal(e1[k], e2[k])


def test_save_load_round_trip(tmp_path):
    rep = filled([5, 9, 4, 7, 6], capacity=25, seed=11)  # wrapped ring, two episodes evicted
    rep.sample(8, 3)  # advance the replay's own generator
    path = tmp_path / "replay.safetensors"
    rep.save(path)
    back = EpisodeReplay.load(path)
    _assert_same(rep, back)
    assert back.config == rep.config and back.num_steps == rep.num_steps
    a, b = rep.sample(16, 4), back.sample(16, 4)  # same generator state -> same next sample
    for k in a:
        assert torch.equal(a[k], b[k])
    assert rep.add(counter_episode(5, 3)) == back.add(counter_episode(5, 3)) == 5
    small = EpisodeReplay.load(path, config=ReplayConfig(capacity=14))
    assert small.episode_ids.tolist() == [3, 4] and len(small) == 13
    _assert_same(small, filled([5, 9, 4, 7, 6], capacity=14))
    empty = tmp_path / "empty.safetensors"
    EpisodeReplay().save(empty)
    assert len(EpisodeReplay.load(empty)) == 0


def test_crash_mid_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "replay.safetensors"
    rep = filled([5, 6])
    rep.save(path)
    rep.add(counter_episode(2, 8))
    written = []

    def crash(f, data):
        f.write(data[: len(data) // 2])
        written.append(len(data) // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(persist, "_write_all", crash)
    with pytest.raises(OSError, match="simulated"):
        rep.save(path)
    assert written, "the crash must happen inside the write"
    assert os.listdir(tmp_path) == ["replay.safetensors"], "no temp file may be left behind"
    old = EpisodeReplay.load(path)
    assert old.episode_ids.tolist() == [0, 1]
    _assert_same(old, filled([5, 6]))


def _same_next_sample(r1, r2):
    a, b = r1.sample(16, 3), r2.sample(16, 3)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_segments_round_trip_and_eviction(tmp_path):
    rep = EpisodeReplay(ReplayConfig(capacity=30, seed=3))
    eid = 0
    for round_lengths in ([5, 9], [4], [], [7, 6, 8], [3, 9]):  # the ring wraps; rounds 4-5 evict rounds 1-2
        for rows in round_lengths:
            rep.add(counter_episode(eid, rows))
            eid += 1
        rep.sample(4, 2)  # advance the generator between saves
        rep.save_segments(tmp_path / "segments", tmp_path / "replay.json")
        back = EpisodeReplay.load_segments(tmp_path / "replay.json", tmp_path / "segments")
        _assert_same(rep, back)
        assert back.config == rep.config
    _same_next_sample(rep, back)
    manifest = json.loads((tmp_path / "replay.json").read_text())
    assert rep.episode_ids.tolist() == [4, 5, 6, 7]
    # the first segments' episodes (0-2) are all evicted: dropped from the manifest, their files kept
    assert [(e["first_id"], e["end_id"]) for e in manifest["segments"]] == [(3, 6), (6, 8)]
    assert len(list((tmp_path / "segments").iterdir())) == 4  # one per round that added episodes
    # appending continues after a load, and a smaller capacity keeps the newest episodes
    back.add(counter_episode(eid, 4))
    back.save_segments(tmp_path / "segments", tmp_path / "replay2.json")
    again = EpisodeReplay.load_segments(tmp_path / "replay2.json", tmp_path / "segments")
    _assert_same(back, again)
    small = EpisodeReplay.load_segments(tmp_path / "replay2.json", tmp_path / "segments", config=ReplayConfig(capacity=14))
    assert small.episode_ids.tolist() == [7, 8]
    empty = EpisodeReplay()
    empty.save_segments(tmp_path / "none", tmp_path / "empty.json")
    assert len(EpisodeReplay.load_segments(tmp_path / "empty.json", tmp_path / "none")) == 0


def test_segments_write_bytes_in_proportion_to_new_steps(tmp_path):
    """Issue 18: checkpoints grow with the new data, not with the run."""
    rep = EpisodeReplay(ReplayConfig(capacity=100_000))
    incremental, whole = [], []
    for r in range(12):
        for i in range(10):
            rep.add(counter_episode(10 * r + i, 50))
        incremental.append(rep.save_segments(tmp_path / "segments", tmp_path / "replay.json"))
        rep.save(tmp_path / "whole.safetensors")
        whole.append((tmp_path / "whole.safetensors").stat().st_size)
    per_round = np.array(incremental, dtype=float)
    assert per_round.max() / per_round.min() < 1.05, f"bytes per save must not grow with the run: {incremental}"
    assert whole[-1] / whole[0] > 8, "the control: one whole-replay file grows with the run"
    on_disk = sum(f.stat().st_size for f in (tmp_path / "segments").iterdir())
    assert on_disk < 1.05 * whole[-1], "segments hold each row once"


def test_segments_crash_and_orphans(tmp_path, monkeypatch):
    seg, man = tmp_path / "segments", tmp_path / "replay.json"
    rep = filled([5, 6])
    rep.save_segments(seg, man)
    rep.add(counter_episode(2, 8))
    real = persist._write_all
    calls = []

    def crash_on(n):
        def write(f, data):
            calls.append(len(data))
            if len(calls) == n:
                f.write(data[: len(data) // 2])
                raise OSError("disk full (simulated)")
            real(f, data)

        return write

    for n in (1, 2):  # crash in the segment's write, then in the manifest's (after the segment landed)
        calls.clear()
        monkeypatch.setattr(persist, "_write_all", crash_on(n))
        with pytest.raises(OSError, match="simulated"):
            rep.save_segments(seg, man)
        monkeypatch.setattr(persist, "_write_all", real)
        assert not [p for p in tmp_path.rglob("*.tmp")], "no temp file may be left behind"
        old = EpisodeReplay.load_segments(man, seg)
        assert old.episode_ids.tolist() == [0, 1]
        _assert_same(old, filled([5, 6]))
    # a run resumed from the old manifest writes other episodes under the orphan's name; the orphan's
    # manifest is then caught, not read as if its segment were still there
    rep.save_segments(seg, tmp_path / "orphan.json")
    resumed = EpisodeReplay.load_segments(man, seg)
    resumed.add(counter_episode(2, 3))
    resumed.save_segments(seg, man)
    _assert_same(EpisodeReplay.load_segments(man, seg), filled([5, 6, 3]))
    with pytest.raises(ValueError, match="is not the one it names"):
        EpisodeReplay.load_segments(tmp_path / "orphan.json", seg)


def test_segments_bad_files(tmp_path):
    seg, man = tmp_path / "segments", tmp_path / "replay.json"
    rep = filled([5, 6])
    rep.save_segments(seg, man)
    body = json.loads(man.read_text())
    (name,) = [e["file"] for e in body["segments"]]
    with pytest.raises(FileNotFoundError, match="no replay manifest"):
        EpisodeReplay.load_segments(tmp_path / "missing.json", seg)
    bad = tmp_path / "bad.json"
    for content, match in [
        ("{not json", "not a readable replay manifest"),
        (json.dumps({**body, "format": "x"}), "expected format 'wmenv.replay-manifest'"),
        (json.dumps({**body, "format_version": 999}), "format version 999"),
        (json.dumps({**body, "rng": "***"}), "not a readable replay manifest"),
        (json.dumps({**body, "segments": [{**body["segments"][0], "file": "../x.safetensors"}]}), "outside its folder"),
        (json.dumps({**body, "segments": [{**body["segments"][0], "file": "gone.safetensors"}]}), "which is missing"),
        (json.dumps({**body, "segments": [{**body["segments"][0], "uid": "0"}]}), "is not the one it names"),
    ]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=match):
            EpisodeReplay.load_segments(bad, seg)
    data = (seg / name).read_bytes()
    (seg / name).write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    with pytest.raises(ValueError, match="checksum mismatch"):
        EpisodeReplay.load_segments(man, seg)
    filled([4]).save_segments(tmp_path / "s2", tmp_path / "m2.json")
    with pytest.raises(ValueError, match="saved without a spec"):
        EpisodeReplay.load_segments(tmp_path / "m2.json", tmp_path / "s2", spec=make_spec())


def _resave(path, metadata):
    """Rewrite a replay file with some metadata entries replaced."""
    with safe_open(str(path), framework="np") as h:
        meta = h.metadata()
        arrays = {k: h.get_tensor(k) for k in h.keys()}
    safetensors.numpy.save_file(arrays, str(path), metadata={**meta, **metadata})


def test_bad_files(tmp_path):
    path = tmp_path / "r.safetensors"
    filled([5, 6]).save(path)
    data = path.read_bytes()
    with pytest.raises(FileNotFoundError):
        EpisodeReplay.load(tmp_path / "missing.safetensors")
    for name, content, match in [
        ("truncated", data[: len(data) - 7], "corrupt or truncated"),
        ("garbage", b"not a replay at all", "corrupt or truncated"),
        ("flipped", data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:], "checksum mismatch"),
    ]:
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            EpisodeReplay.load(p)
    _resave(path, metadata={"format_version": "999"})
    with pytest.raises(ValueError, match="format version '999'; this wmenv reads version 1"):
        EpisodeReplay.load(path)
    other = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(3)}, str(other))
    with pytest.raises(ValueError, match="not a wmenv replay file"):
        EpisodeReplay.load(other)


def _recorded(spec, seeds):
    out = []
    for seed in seeds:
        run, rec = scripted_run(spec, seed=seed, c_ends=1 + seed % 4), EpisodeRecorder(spec)
        rec.start(*run["reset"])
        for step in run["steps"]:
            rec.add(*step)
        out.append(rec.finish())
    return out


def test_spec_checks_and_spec_mismatch(tmp_path):
    spec = make_spec()
    rep = EpisodeReplay(ReplayConfig(capacity=100), spec=spec)
    episodes = _recorded(spec, range(4))
    for e in episodes:
        rep.add({**e, "step": np.arange(5)})
    bad = {**episodes[0], "step": np.arange(5)}
    bad["alive"] = bad["alive"].copy()
    bad["alive"][4, 2] = True
    with pytest.raises(ValueError, match="must not be alive afterwards"):
        rep.add(bad)
    with pytest.raises(ValueError, match=r"missing \['step'\]"):
        rep.add(episodes[0])
    b = rep.sample(8, 5, generator=0)
    assert b["obs"].shape == (8, 5, 3, 4) and b["action"].dtype == torch.int64 and b["alive"].shape == (8, 5, 3)
    path = tmp_path / "r.safetensors"
    rep.save(path)
    same = EpisodeReplay.load(path, spec=make_spec())
    _assert_same(rep, same)
    assert same.spec_description == spec.describe()
    with pytest.raises(ValueError, match=r"another env.*'discrete': \(True, False\)"):
        EpisodeReplay.load(path, spec=make_spec(discrete=False))
    with pytest.raises(ValueError, match=r"another env.*'id': \('hand:three', 'hand:other'\)"):
        EpisodeReplay.load(path, spec=make_spec(id="hand:other"))
    plain = tmp_path / "plain.safetensors"
    filled([4]).save(plain)
    with pytest.raises(ValueError, match="saved without a spec"):
        EpisodeReplay.load(plain, spec=spec)
    assert EpisodeReplay.load(path).spec_description == spec.describe(), "re-saving keeps the file's spec"


def test_mpe_episodes_through_the_replay(tmp_path):
    env, spec = make("mpe:simple_spread_v3", max_cycles=8)
    rep = EpisodeReplay(ReplayConfig(capacity=40, seed=0), spec=spec)
    rng = np.random.default_rng(0)
    for seed in range(6):
        rec = EpisodeRecorder(spec)
        obs, infos = env.reset(seed=seed)
        rec.start(obs, infos, env.state())
        while env.agents:
            actions = {a: int(rng.integers(5)) for a in env.agents}
            rec.add(actions, *env.step(actions), env.state())
        rep.add(rec.finish())
    assert rep.num_episodes == 4 and len(rep) == 36 and rep.num_steps == 32  # 9 rows each, capacity 40
    b = rep.sample(64, 9, generator=0)
    assert b["obs"].shape == (64, 9, 3, spec.obs_dim) and b["state"].shape == (64, 9, spec.state_dim)
    assert b["is_first"][:, 0].all() and b["is_last"][:, -1].all() and b["alive"].all()
    rep.save(tmp_path / "mpe.safetensors")
    _assert_same(rep, EpisodeReplay.load(tmp_path / "mpe.safetensors", spec=spec))


def test_a_single_agents_state_that_is_its_observation_is_stored_once(tmp_path):
    from wmenv.data.collect import random_replay

    replay, spec = random_replay("gym:CartPole-v1", 300, capacity=2_000)
    assert "state" not in replay._data and replay.schema["state"] == ((4,), np.dtype(np.float32))
    batch = replay.sample(3, 5, generator=0)
    assert torch.equal(batch["state"], batch["obs"][:, :, 0])
    ep = replay.episode(-1)
    np.testing.assert_array_equal(ep["state"], ep["obs"][:, 0])
    replay.add(ep)  # an episode read back is accepted again
    for loaded in (
        (replay.save(tmp_path / "r.safetensors"), EpisodeReplay.load(tmp_path / "r.safetensors", spec))[1],
        (
            replay.save_segments(tmp_path / "s", tmp_path / "m.json"),
            EpisodeReplay.load_segments(tmp_path / "m.json", tmp_path / "s", spec),
        )[1],
    ):
        assert "state" not in loaded._data and loaded.num_steps == replay.num_steps
        np.testing.assert_array_equal(loaded.episode(-1)["state"], ep["state"])
    bad = {**ep, "state": ep["state"] + 1.0}
    with pytest.raises(ValueError, match=r"episode\['state'\]: expected the single agent's observation .* at row 0"):
        replay.add(bad)
    mpe, _ = random_replay("mpe:simple_spread_v3", 100)
    assert "state" in mpe._data, "several agents: the global state is stored"


def piece_of(eid: int, rows: range, n: int = 2, ends: bool = False) -> dict[str, np.ndarray]:
    """Rows ``rows`` of `counter_episode` ``eid`` as a piece (``is_last`` on its last row if it ``ends``)."""
    whole = counter_episode(eid, rows.stop, n)
    piece = {k: v[rows.start :] for k, v in whole.items()}
    piece["is_last"] = (np.arange(len(rows)) == len(rows) - 1) & ends
    return piece


def test_a_piece_that_continues_the_newest_episode_is_appended_and_windows_cross_the_join():
    rep = EpisodeReplay(ReplayConfig(capacity=100, seed=0))
    assert rep.add(piece_of(0, range(0, 4))) == 0
    for start in range(4, 12):  # one row at a time, as a collection of one env step per call stores them
        assert rep.add(piece_of(0, range(start, start + 1)), continues=0) == 0
    assert rep.episode_lengths.tolist() == [12] and rep.num_episodes == 1 and len(rep) == 12
    np.testing.assert_array_equal(rep.episode(0)["step"], np.arange(12))
    b = rep.sample(200, 10, generator=0)  # no piece holds 10 rows: every window crosses joins
    assert_contiguous_within_episode(b)
    assert sorted(set(b["step"][:, 0].tolist())) == [0, 1, 2]  # every start that fits is drawn
    # another episode in between: a later piece of episode 0 cannot be appended, and is stored on its own
    assert rep.add(piece_of(1, range(0, 5))) == 1
    assert rep.add(piece_of(0, range(12, 15)), continues=0) == 2
    assert rep.add(piece_of(0, range(15, 17), ends=True), continues=2) == 2
    assert rep.episode_lengths.tolist() == [12, 5, 5] and rep.episode(2)["step"].tolist() == list(range(12, 17))
    _, reset = rep.sample_indices(3, 1, sampler=lambda *a: (np.arange(3), np.zeros(3, np.int64)))
    assert reset[:, 0].tolist() == [True, True, False]  # a piece stored on its own does not start with a reset


def test_appending_evicts_older_episodes_never_the_growing_one_and_a_piece_past_the_capacity_starts_anew():
    rep = EpisodeReplay(ReplayConfig(capacity=10, seed=0))
    rep.add(piece_of(0, range(0, 4), ends=True))
    rep.add(piece_of(1, range(0, 4)))
    assert rep.add(piece_of(1, range(4, 7)), continues=1) == 1  # 4 + 7 rows > 10: episode 0 is evicted
    assert rep.episode_ids.tolist() == [1] and rep.episode_lengths.tolist() == [7]
    assert rep.add(piece_of(1, range(7, 10)), continues=1) == 1  # exactly the capacity
    assert rep.add(piece_of(1, range(10, 12)), continues=1) == 2  # 12 rows would not fit: a new episode
    assert rep.episode_ids.tolist() == [2] and rep.episode(0)["step"].tolist() == [10, 11]


def test_continues_that_contradicts_the_pieces_is_refused():
    rep = EpisodeReplay(ReplayConfig(capacity=100))
    rep.add(piece_of(0, range(0, 3)))
    with pytest.raises(ValueError, match=r"continues: episode 0 given, but the piece starts an episode"):
        rep.add(piece_of(0, range(0, 2)), continues=0)
    with pytest.raises(TypeError, match="continues: expected an episode id"):
        rep.add(piece_of(0, range(3, 4)), continues=True)
    rep.add(piece_of(0, range(3, 5), ends=True), continues=0)
    with pytest.raises(ValueError, match=r"continues: episode 0 ended at its last stored row"):
        rep.add(piece_of(0, range(5, 6)), continues=0)
    assert rep.episode_lengths.tolist() == [5]  # nothing of the refused pieces was stored


def test_segments_round_trip_while_an_episode_grows_and_an_evicted_ones_later_rows_stay_out(tmp_path):
    rep = EpisodeReplay(ReplayConfig(capacity=30, seed=3))
    folder, manifest = tmp_path / "segments", tmp_path / "replay.json"

    def save_and_check():
        rep.sample(2, 2)  # advance the generator between saves
        rep.save_segments(folder, manifest)
        back = EpisodeReplay.load_segments(manifest, folder)
        _assert_same(rep, back)
        _same_next_sample(rep, back)
        return back

    rep.add(piece_of(0, range(0, 10)))
    save_and_check()  # segment 1: episode 0's first 10 rows
    rep.add(piece_of(0, range(10, 15)), continues=0)
    rep.add(piece_of(1, range(0, 8), ends=True))
    save_and_check()  # segment 2: episode 0's rows 10-14, then episode 1
    rep.add(piece_of(0, range(15, 16)), continues=0)  # not the newest any more: stored as episode 2
    rep.add(piece_of(3, range(0, 12)))  # 15 + 8 + 1 + 12 > 30: episode 0 is evicted
    back = save_and_check()
    assert back.episode_ids.tolist() == [1, 2, 3]  # episode 0's rows 10-14 in segment 2 are not read back
    names = json.loads(manifest.read_text())["segments"]
    assert [(e["first_id"], e["end_id"]) for e in names] == [(0, 2), (2, 4)]  # segment 1 (0, 1) dropped
    assert names[0]["file"] != "segment_0000000000-0000000001.safetensors"  # a grown episode's rows: their own file
    back.add(piece_of(3, range(12, 14)), continues=3)  # appending continues after a load
    back.save_segments(folder, tmp_path / "replay2.json")
    _assert_same(back, EpisodeReplay.load_segments(tmp_path / "replay2.json", folder))


def test_an_episode_read_by_fields_copies_only_those():
    rep = filled([5, 7])
    whole = rep.episode(1)
    some = rep.episode(1, fields=["step", "episode"])
    assert list(some) == ["step", "episode"]
    for k in some:
        np.testing.assert_array_equal(some[k], whole[k])
    with pytest.raises(ValueError, match=r"fields: expected names among \['episode', 'is_first', 'obs', 'step'\]"):
        rep.episode(0, fields=["reward"])
    with pytest.raises(ValueError, match="fields: expected names"):
        rep.episode(0, fields="step")


def test_a_single_agents_rebuilt_state_is_read_by_fields_too():
    from wmenv.data.collect import random_replay

    replay, _ = random_replay("gym:CartPole-v1", 100, capacity=2_000)
    np.testing.assert_array_equal(replay.episode(0, fields=["state"])["state"], replay.episode(0)["state"])
    assert set(replay.episode(0, fields=["reward", "terminated"])) == {"reward", "terminated"}
