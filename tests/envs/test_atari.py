"""``atari:<Game>`` (issue 16, item 1): DRAMA's preprocessing, checked against the raw emulator frames; life losses
recorded; deterministic with sticky actions off; clear errors. Skipped where ale-py or OpenCV is missing
(``pip install "wmenv[atari]"``)."""

import importlib.util
import sys

import numpy as np
import pytest
import torch

from wmenv.envs import make
from wmenv.envs.atari import AtariConfig, frames, make_atari

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ale_py") is None or importlib.util.find_spec("cv2") is None,
    reason='ale-py / OpenCV not installed: pip install "wmenv[atari]"',
)
A = "agent_0"


def _raw(game: str, seed: int):
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    env.reset(seed=seed)
    return env


def test_pong_spec_and_each_step_is_four_frames_max_of_the_last_two_resized_by_area():
    import cv2

    env, spec = make("atari:Pong")
    assert spec.describe()["obs_dim"] == 64 * 64 * 3 and spec.n_actions == 6 and spec.discrete
    assert spec.extra["frame_shape"] == (64, 64, 3) and spec.extra["gym_id"] == "ALE/Pong-v5"
    obs, info = env.reset(seed=3)
    raw = _raw("Pong", 3)
    screen = raw.unwrapped.ale.getScreenRGB()
    np.testing.assert_array_equal(frames(obs[A], spec), cv2.resize(screen, (64, 64), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(0)
    for _ in range(60):
        action = int(rng.integers(6))
        obs, reward, *_, info = env.step({A: np.int64(action)})
        shots, total = [], 0.0
        for _ in range(4):
            o, r, *_ = raw.step(action)
            shots.append(o)
            total += r
        expected = cv2.resize(np.maximum(shots[-2], shots[-1]), (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(frames(obs[A], spec), expected)
        assert reward[A] == total, "rewards are summed over the skipped frames, not clipped"
    assert info[A]["episode_frame_number"] == 240
    assert obs[A].min() >= 0 and obs[A].max() <= 255 and obs[A].max() > 1, "values stay in [0, 255], not rescaled"
    env.close()
    raw.close()


def test_same_seed_same_frames_and_life_losses_are_recorded_when_lives_drop():
    def play(seed: int):
        env, _ = make("atari:Breakout", screen_size=32, grayscale=True)
        obs, info = env.reset(seed=seed)
        assert info[A]["life_loss"] is False and info[A]["lives"] == 5
        rng, seen, lives = np.random.default_rng(seed), [obs[A]], [5]
        losses = []
        while len(losses) < 2:
            obs, _, term, trunc, info = env.step({A: np.int64(rng.integers(4))})
            seen.append(obs[A])
            if info[A]["life_loss"]:
                losses.append(len(seen))
                assert info[A]["lives"] == lives[-1] - 1
            else:
                assert info[A]["lives"] == lives[-1]
            lives.append(info[A]["lives"])
            assert not (term[A] or trunc[A]), "losing a life does not end the episode by default"
        env.close()
        return np.stack(seen), losses

    first, losses = play(1)
    again, losses_again = play(1)
    assert first.shape[1] == 32 * 32 and losses == losses_again
    np.testing.assert_array_equal(first, again)


def test_terminal_on_life_loss_ends_the_episode_at_the_first_lost_life():
    env, _ = make("atari:Breakout", terminal_on_life_loss=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, _, term, _, info = env.step({A: np.int64(rng.integers(4))})
        if term[A]:
            assert info[A]["lives"] == 4
            break
    else:
        pytest.fail("no life was lost in 2,000 random Breakout steps")


def test_bad_games_settings_and_missing_packages_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"game: 'Pongg' is not an ALE game .* expected one of \[.*'Pong'"):
        make("atari:Pongg")
    with pytest.raises(ValueError, match="AtariConfig.sticky_actions: expected a probability"):
        make("atari:Pong", sticky_actions=1.5)
    with pytest.raises(ValueError, match="AtariConfig.screen_size"):
        AtariConfig(screen_size=0)
    with pytest.raises(TypeError, match=r"unknown settings \['frameskip'\]"):
        make_atari("Pong", frameskip=4)
    with pytest.raises(ValueError, match=r"obs: expected a last axis of 12288"):
        frames(np.zeros((2, 100)), make("atari:Pong")[1])
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(ImportError, match=r'pip install "wmenv\[atari\]"'):
        make("atari:Pong")


def test_frames_stay_uint8_from_the_env_to_the_replay_and_its_files_and_batches_come_out_float(tmp_path):
    from wmenv.data.collect import random_replay
    from wmenv.data.replay import EpisodeReplay, ReplayConfig
    from wmenv.envs.vector import VecEnv

    kwargs = {"terminal_on_life_loss": True}
    with VecEnv("atari:Breakout", num_envs=2, seed=0, **kwargs) as vec:
        assert vec.spec.obs_dtype == np.uint8 and vec.spec.describe()["obs_dtype"] == "uint8"
        assert vec.reset().obs.dtype == np.uint8 and vec.reset().state.dtype == np.uint8
    replay, spec = random_replay("atari:Breakout", 600, num_envs=2, capacity=5_000, **kwargs)
    rows = int(replay.episode_lengths.sum())
    per_row = sum(v[:1].nbytes for v in replay._data.values())
    assert replay._data["obs"].dtype == np.uint8 and "state" not in replay._data, "the state is the frame: one copy"
    assert 12288 <= per_row < 12288 + 100, "a 64x64 RGB step is 12 KB"
    assert replay.schema["state"] == ((12288,), np.dtype(np.uint8))
    batch = replay.sample(4, 8, generator=0)
    assert batch["obs"].dtype == batch["state"].dtype == torch.float32
    assert torch.equal(batch["state"], batch["obs"][:, :, 0])
    np.testing.assert_array_equal(replay.episode(0)["state"], replay.episode(0)["obs"][:, 0])
    assert batch["obs"].max() > 1 and batch["obs"].max() <= 255 and torch.equal(batch["obs"], batch["obs"].round())
    replay.save_segments(tmp_path / "segments", tmp_path / "replay.json")
    again = EpisodeReplay.load_segments(tmp_path / "replay.json", tmp_path / "segments", spec, ReplayConfig(capacity=5_000))
    assert again._data["obs"].dtype == np.uint8 and int(again.episode_lengths.sum()) == rows
    np.testing.assert_array_equal(again._data["obs"][:rows], replay._data["obs"][:rows])
    segment_bytes = sum(f.stat().st_size for f in (tmp_path / "segments").iterdir())
    assert segment_bytes < 1.1 * per_row * (rows + len(replay.episode_lengths)), "files hold bytes, not floats"


def test_float_specs_describe_as_before():
    _, spec = make("gym:CartPole-v1")
    assert spec.obs_dtype == np.float32 and "obs_dtype" not in spec.describe()
