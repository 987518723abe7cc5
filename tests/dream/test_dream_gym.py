"""One-agent dreams as Gymnasium envs, and stable-baselines3 PPO trained inside a dream."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from numpy.testing import assert_array_equal
from scripted_wm import F, ScriptedWorldModel, make_spec

import wmenv.dream
from wmenv.data.collect import random_replay
from wmenv.dream import DreamGymEnv, DreamSB3VecEnv, DreamVecEnv
from wmenv.fit import FitConfig, fit
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

sb3 = pytest.importorskip("stable_baselines3")


@pytest.fixture(scope="module")
def cartpole():
    replay, spec = random_replay("gym:CartPole-v1", 1500)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    seq = int(min(replay.episode_lengths))
    fit(model, replay, FitConfig(steps=60, batch_size=8, seq_len=min(seq, 10), progress=False))
    return model, replay


@pytest.fixture(scope="module")
def cartpole_model(cartpole):
    return cartpole[0]


def test_fitted_replay_starts_decode_to_their_real_context(cartpole):
    """A fitted model started from real windows decodes their last observation far better than its initial starts do."""
    model, replay = cartpole
    from_replay = DreamVecEnv(model, num_worlds=32, start=replay, obs="decoded", seed=0).reset().obs
    from_initial = DreamVecEnv(model, num_worlds=32, obs="decoded", seed=0).reset().obs
    real = replay.sample(32, 8, generator=1)["obs"][:, -1]  # the windows the dream drew (seed + 1, 8 rows)
    replay_error, initial_error = (from_replay - real).square().mean(), (from_initial - real).square().mean()
    assert replay_error < 0.6 * initial_error, (replay_error, initial_error)


def test_dream_gym_env_passes_gymnasium_and_sb3_checkers(cartpole_model):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = DreamGymEnv(cartpole_model, horizon=10)
    check_env(env, skip_render_check=True)
    sb3_check_env(DreamGymEnv(cartpole_model, horizon=10), warn=True)
    obs, info = env.reset(seed=4)
    assert obs.shape == env.observation_space.shape and info["action_mask"].shape == (2,)
    with pytest.raises(ValueError, match=r"action: expected an integer in \[0, 2\), got 5"):
        env.step(5)


def test_sb3_ppo_trains_inside_a_dream(cartpole_model):
    venv = DreamSB3VecEnv(DreamVecEnv(cartpole_model, num_worlds=8, horizon=15, seed=0))
    assert venv.num_envs == 8 and venv.observation_space.shape == (128,)
    model = sb3.PPO("MlpPolicy", venv, n_steps=64, batch_size=128, n_epochs=2, seed=0, device="cpu")
    before = torch.nn.utils.parameters_to_vector(model.policy.parameters()).clone()
    model.learn(total_timesteps=2048)
    assert model.num_timesteps == 2048  # 4 rollouts of 64 steps x 8 worlds
    assert not torch.equal(torch.nn.utils.parameters_to_vector(model.policy.parameters()), before)
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    obs, rewards, dones, infos = venv.step(actions)
    assert obs.shape == (8, 128) and np.isfinite(rewards).all() and len(infos) == 8


def test_gym_view_needs_a_one_agent_model():
    from wmenv.envs import make

    _, spec = make("mpe:simple_spread_v3")
    with pytest.raises(ValueError, match="needs a one-agent model, mpe:simple_spread_v3 has 3 agents"):
        DreamGymEnv(MAMBAWorldModel(spec, preset("small")))


MASK = [[0.9, 0.5, 0.2, 0.7], [0.1, 0.2, 0.3, 0.4], [0.6, 0.6, 0.6, 0.6]]
"""Scripted availability: agent_0 may take 0 and 3 (first available: 0), the others anything."""


def test_sb3_view_maps_flat_index_to_world_and_agent():
    """Flat SB3 env i is agent i % N of world i // N: its action, observation and reward; masked actions become 0."""
    model = ScriptedWorldModel(make_spec(), mask=[MASK])
    venv = DreamSB3VecEnv(DreamVecEnv(model, num_worlds=2, horizon=5))
    assert venv.num_envs == 6 and venv.observation_space.shape == (F,) and venv.action_space.n == 4
    obs = venv.reset()
    assert obs.shape == (6, F) and obs.dtype == np.float32
    assert_array_equal(obs[:, 4], [0, 1, 2, 0, 1, 2])  # agent index feature
    obs, rewards, dones, infos = venv.step(np.array([3, 1, 2, 2, 0, 1]))  # flat 3 is agent_0 of world 1: 2 is masked
    assert_array_equal(model.imagined[-1], [[3, 1, 2], [0, 0, 1]])
    assert_array_equal(obs[:, 1], [3, 1, 2, 0, 0, 1])  # each env sees its own last action
    assert_array_equal(rewards, [11, 12, 13, 11, 12, 13])
    assert rewards.dtype == np.float32
    assert not dones.any() and infos == [{}] * 6


def test_sb3_view_of_an_ended_agent_is_frozen_until_its_world_ends():
    """An agent ended early gets zero reward and its last observation until the world ends; then every env of it is done."""
    model = ScriptedWorldModel(make_spec(), quit=3, mask=[MASK])
    venv = DreamSB3VecEnv(DreamVecEnv(model, num_worlds=2, horizon=3))
    venv.reset()
    last, rewards, dones, _ = venv.step(np.array([0, 0, 0, 3, 0, 0]))  # agent_0 of world 1 quits on step 1
    assert_array_equal(rewards, [11, 12, 13, 11, 12, 13])
    assert not dones.any()
    obs, rewards, dones, infos = venv.step(np.array([0, 0, 0, 2, 0, 0]))  # its (masked) action is ignored
    assert_array_equal(rewards, [21, 22, 23, 0, 22, 23])
    assert not dones.any()
    assert_array_equal(obs[3], last[3])  # frozen
    assert_array_equal(obs[[0, 1, 2, 4, 5], 0], [2] * 5)
    obs, rewards, dones, infos = venv.step(np.zeros(6, np.int64))  # the horizon ends both worlds
    assert_array_equal(rewards, [31, 32, 33, 0, 32, 33])
    assert dones.all()
    assert_array_equal(obs[:, [0, 2]], [[0, -1]] * 6)  # new episodes
    assert [info["TimeLimit.truncated"] for info in infos] == [True, True, True, False, True, True]
    terminal = np.stack([info["terminal_observation"] for info in infos])
    assert terminal.dtype == np.float32
    assert_array_equal(terminal[3], last[3])
    assert_array_equal(terminal[[0, 1, 2, 4, 5], 0], [3] * 5)


def test_sb3_view_reports_terminations_as_not_truncated():
    """A world whose agents all ended reports done with TimeLimit.truncated False and their final observations."""
    model = ScriptedWorldModel(make_spec(), quit=3)
    venv = DreamSB3VecEnv(DreamVecEnv(model, num_worlds=2, horizon=5))
    venv.reset()
    obs, rewards, dones, infos = venv.step(np.array([3, 3, 3, 0, 0, 0]))
    assert_array_equal(dones, [True] * 3 + [False] * 3)
    assert [info.get("TimeLimit.truncated") for info in infos] == [False] * 3 + [None] * 3
    assert_array_equal(np.stack([infos[i]["terminal_observation"][:2] for i in range(3)]), [[1, 3]] * 3)
    assert_array_equal(obs[:, 0], [0] * 3 + [1] * 3)


def test_dream_gym_env_refuses_or_replaces_masked_actions():
    """masked_action="raise" refuses a predicted-unavailable action naming it; "noop" takes the first available."""
    model = ScriptedWorldModel(make_spec(n_agents=1), mask=[[[0.1, 0.9, 0.1, 0.9]]])
    env = DreamGymEnv(model, masked_action="raise", horizon=2)
    obs, info = env.reset(seed=0)
    assert_array_equal(info["action_mask"], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^action: 2 is predicted unavailable; available: \[1, 3\]$"):
        env.step(2)
    obs, reward, terminated, truncated, info = env.step(3)
    assert (obs[0], obs[1], reward, terminated, truncated) == (1.0, 3.0, 11.0, False, False)
    noop = DreamGymEnv(model, horizon=2)
    noop.reset(seed=0)
    noop.step(0)
    assert_array_equal(model.imagined[-1], [[1]])
    obs, reward, terminated, truncated, info = noop.step(3)
    assert (obs[0], obs[1], reward, terminated, truncated) == (2.0, 3.0, 21.0, False, True)  # the final observation


def test_the_dream_package_loads_stable_baselines3_only_when_its_view_is_asked_for():
    code = (
        "import sys, wmenv.dream\n"
        "before = 'stable_baselines3' in sys.modules\n"
        "from wmenv.dream import DreamSB3VecEnv\n"
        "print(before, 'stable_baselines3' in sys.modules, DreamSB3VecEnv.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "wmenv.dream.sb3"], out.stdout
    with pytest.raises(AttributeError, match="has no attribute 'DreamSB3VecEnvs'"):
        wmenv.dream.DreamSB3VecEnvs  # noqa: B018
