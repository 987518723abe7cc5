"""Dreams with continuous actions (issue 14, item 3): DreamVecEnv / DreamEnv / DreamGymEnv / DreamSB3VecEnv take float
actions of the right shape, refuse NaN, clip or refuse out-of-bound values; PettingZoo's, Gymnasium's and SB3's
checkers pass; SB3 trains inside a Pendulum dream and its policy runs on the real Pendulum."""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

from wmenv.data.collect import random_replay
from wmenv.dream import DreamEnv, DreamGymEnv, DreamSB3VecEnv, DreamVecEnv
from wmenv.envs import make
from wmenv.envs.spec import EnvSpec
from wmenv.fit import FitConfig, fit
from wmenv.models.registry import build_model

SB3 = importlib.util.find_spec("stable_baselines3") is not None


def hetero_spec() -> EnvSpec:
    """Three agents with Box actions of other bounds; a2 has 2 dims of the 3 (padding)."""
    low, high = {"a0": -2.0, "a1": 0.0, "a2": -1.0}, {"a0": 2.0, "a1": 1.0, "a2": 3.0}
    act = {a: gym.spaces.Box(low[a], high[a], (2 if a == "a2" else 3,), np.float32) for a in low}
    obs = {a: gym.spaces.Box(-1, 1, (4,), np.float32) for a in low}
    return EnvSpec("tiny-box", tuple(low), obs, act, gym.spaces.Box(-1, 1, (5,)), False, None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("mamba", hetero_spec(), "small").eval()


@pytest.fixture(scope="module")
def pendulum():
    """A small MAMBA model fitted briefly on random Pendulum data."""
    replay, spec = random_replay("gym:Pendulum-v1", 1000, num_envs=2, seed=0)
    torch.manual_seed(0)
    model = build_model("mamba", spec, "small")
    fit(model, replay, FitConfig(steps=40, batch_size=8, seq_len=10, seed=0, compile="off"))
    return model.eval()


def test_the_batched_dream_takes_float_actions_clips_or_refuses_and_ignores_padding(model):
    B = 4
    vec = DreamVecEnv(model, B, seed=0)
    s = vec.reset()
    assert s.action_mask[:, 2, 2].logical_not().all() and s.action_mask[:, :2].all(), "the mask marks each agent's dims"
    inside = torch.zeros(B, 3, 3)
    outside = inside.clone()
    outside[:, 0, 0], outside[:, 2, 2] = 5.0, 9.0  # a0's first dim beyond its bound 2; a2's padded dim
    twin = DreamVecEnv(model, B, seed=0)
    twin.reset()
    clipped = inside.clone()
    clipped[:, 0, 0] = 2.0
    a, b = vec.step(outside), twin.step(clipped)  # clipping to the bound and ignoring padding: the same dream
    torch.testing.assert_close(a.obs, b.obs)
    c, d = DreamVecEnv(model, B, seed=0), DreamVecEnv(model, B, seed=0)
    c.reset(), d.reset()
    assert not torch.allclose(c.step(inside).obs, d.step(clipped).obs), "the check must see the action"
    strict = DreamVecEnv(model, B, seed=0, out_of_bounds="raise")
    strict.reset()
    with pytest.raises(ValueError, match=r"agent 'a0' in world 0, dim 0: expected a value within \(bounds \[-2.0, 2.0\]\)"):
        strict.step(outside)
    nan = inside.clone()
    nan[1, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"agent 'a1' in world 1, dim 2: expected a finite value"):
        vec.step(nan)
    with pytest.raises(TypeError, match="expected a float dtype"):
        vec.step(torch.zeros(B, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected shape \(4, 3, 3\)"):
        vec.step(torch.zeros(B, 3))
    with pytest.raises(ValueError, match="out_of_bounds"):
        DreamVecEnv(model, B, out_of_bounds="wrap")


def test_the_pettingzoo_dream_offers_each_agents_box_and_passes_pettingzoos_tests(model):
    env = DreamEnv(model, seed=0)
    assert env.action_space("a2") == gym.spaces.Box(-1.0, 3.0, (2,), np.float32)
    assert env.action_space("a0") is not DreamEnv(model).action_space("a0")
    obs, infos = env.reset(seed=1)
    assert infos == {a: {} for a in env.agents}, "no action masks for continuous actions"
    with pytest.raises(ValueError, match=r"actions\['a0'\]: expected finite values"):
        env.step({"a0": np.array([np.nan, 0, 0]), "a1": np.zeros(3), "a2": np.zeros(2)})
    parallel_api_test(env, num_cycles=50)
    parallel_seed_test(lambda: DreamEnv(model, seed=0))


def test_the_gymnasium_dream_passes_check_env_and_takes_box_actions(pendulum):
    env = DreamGymEnv(pendulum)
    assert env.action_space == gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    gym.utils.env_checker.check_env(env, skip_render_check=True)
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.array([1.0], np.float32))
    assert np.isfinite(reward) and obs.dtype == np.float32
    with pytest.raises(ValueError, match=r"action: expected a float array of shape \(1,\)"):
        env.step(np.zeros(2))


@pytest.mark.skipif(not SB3, reason="stable-baselines3 not installed (extra [sb3])")
def test_sb3_trains_in_a_pendulum_dream_and_its_policy_runs_on_the_real_pendulum(pendulum):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env
    from stable_baselines3.common.vec_env import VecEnv

    check_env(DreamGymEnv(pendulum), warn=False)
    vec = DreamSB3VecEnv(DreamVecEnv(pendulum, 8, seed=0))
    assert isinstance(vec, VecEnv) and vec.action_space == gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    agent = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu")
    agent.learn(512)
    # the dream's latent features are not the real observations: the policy that runs on the real env reads the
    # decoded ones (obs="decoded"), trained the same way
    decoded = DreamSB3VecEnv(DreamVecEnv(pendulum, 8, seed=0, obs="decoded"))
    agent = PPO("MlpPolicy", decoded, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu").learn(512)
    real = gym.make("Pendulum-v1")
    obs, _ = real.reset(seed=0)
    total = 0.0
    for _ in range(200):
        action, _ = agent.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = real.step(action)
        total += reward
        if terminated or truncated:
            break
    assert np.isfinite(total) and -2000 < total <= 0


def test_sb3_view_refuses_heterogeneous_continuous_agents(model):
    if not SB3:
        pytest.skip("stable-baselines3 not installed (extra [sb3])")
    with pytest.raises(ValueError, match="different continuous action spaces"):
        DreamSB3VecEnv(DreamVecEnv(model, 2))


def test_a_mamujoco_model_dreams(tmp_path):
    if importlib.util.find_spec("gymnasium_robotics") is None:
        pytest.skip("gymnasium-robotics not installed (extra [mamujoco])")
    _, spec = make("mamujoco:HalfCheetah:2x3")
    torch.manual_seed(0)
    model = build_model("mabl", spec, "small")
    vec = DreamVecEnv(model, 3, seed=0)
    vec.reset()
    step = vec.step(torch.rand(3, 2, 3) * 2 - 1)
    assert step.reward.shape == (3, 2) and torch.isfinite(step.reward).all()
