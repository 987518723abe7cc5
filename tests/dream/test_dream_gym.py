"""One-agent dreams as Gymnasium envs, and stable-baselines3 PPO trained inside a dream."""

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from wmenv.data.collect import random_replay
from wmenv.dream import DreamGymEnv, DreamSB3VecEnv, DreamVecEnv
from wmenv.fit import FitConfig, fit
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

sb3 = pytest.importorskip("stable_baselines3")


@pytest.fixture(scope="module")
def cartpole_model():
    replay, spec = random_replay("gym:CartPole-v1", 1500)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    seq = int(min(replay.episode_lengths))
    fit(model, replay, FitConfig(steps=60, batch_size=8, seq_len=min(seq, 10), progress=False))
    return model


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
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    obs, rewards, dones, infos = venv.step(actions)
    assert obs.shape == (8, 128) and np.isfinite(rewards).all() and len(infos) == 8


def test_gym_view_needs_a_one_agent_model():
    from wmenv.envs import make

    _, spec = make("mpe:simple_spread_v3")
    with pytest.raises(ValueError, match="needs a one-agent model, mpe:simple_spread_v3 has 3 agents"):
        DreamGymEnv(MAMBAWorldModel(spec, preset("small")))
