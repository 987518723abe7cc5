"""ONNX export of Gaussian agents (issue 14, item 4): the mean and a sampled action, clipped per agent's bounds, match
the learner over 1000 steps; a trained MaMuJoCo checkpoint exports and plays a real episode."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from agents.mappo import MAPPO, MAPPOConfig  # noqa: E402
from agents.policies import GRUPolicyConfig, MambaPolicyConfig, make_policy  # noqa: E402
from exports import OnnxAgent, export_agent  # noqa: E402
from wmenv.envs.spec import EnvSpec  # noqa: E402

D = 6
LOW, HIGH = {"a0": -2.0, "a1": 0.0, "a2": -1.0}, {"a0": 2.0, "a1": 1.0, "a2": 3.0}


def hetero_spec() -> EnvSpec:
    """Three agents with Box actions of other bounds; a2 has 2 dims of the 3 (padding)."""
    act = {a: gym.spaces.Box(LOW[a], HIGH[a], (2 if a == "a2" else 3,), np.float32) for a in LOW}
    obs = {a: gym.spaces.Box(-1, 1, (D,), np.float32) for a in LOW}
    return EnvSpec("tiny-box", tuple(LOW), obs, act, gym.spaces.Box(-1, 1, (5,)), False, None)


POLICIES = [("gru", GRUPolicyConfig(hidden=16)), ("mamba", MambaPolicyConfig(hidden=16, d_state=4))]


@pytest.mark.parametrize("kind, cfg", POLICIES)
def test_thousand_steps_of_mean_and_sampled_actions_match_the_learner(kind, cfg, tmp_path):
    spec = hetero_spec()
    torch.manual_seed(0)
    learner = MAPPO(spec, MAPPOConfig(log_std_init=-0.3), policy=make_policy(kind, D, 3, cfg))
    with torch.no_grad():
        learner.log_std.copy_(torch.tensor([-0.5, 0.2, -1.0]))  # per-dim std, as after training
    path = export_agent(learner.policy, tmp_path / "agent.onnx", spec=spec, sampling=True, log_std=learner.log_std)
    agent = OnnxAgent(path, providers=["CPUExecutionProvider"], spec=spec)
    assert agent.continuous and agent.sampling
    B, rng = 3, np.random.default_rng(0)  # one row per agent slot (the default: row i is slot i)
    agent.reset(B)
    state = learner.policy.initial_state(B)
    own = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=bool)
    for t in range(1000):
        obs = rng.normal(size=(B, D)).astype(np.float32) * 3
        resets = rng.random(B) < 0.03
        noise_rng, check_rng = np.random.default_rng(t), np.random.default_rng(t)
        sampled = agent.act(obs, own, resets, deterministic=False, rng=noise_rng)
        with torch.no_grad():
            mean, state = learner.policy.step(torch.from_numpy(obs), state, torch.from_numpy(resets))
        np.testing.assert_allclose(agent.logits, mean.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        noise = torch.from_numpy(check_rng.standard_normal((B, 3), dtype=np.float32))
        expected = learner.env_actions(mean + learner.log_std.exp() * noise, 1)[0]  # clipped at the env, as MAPPO does
        np.testing.assert_allclose(sampled, expected, atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert (sampled[2, 2] == 0) and (sampled[:, 0] >= [-2, 0, -1]).all() and (sampled[:, 0] <= [2, 1, 3]).all()
    # greedy: the mean, clipped; the recurrent state did not move for the repeated call below
    agent.reset(B)
    greedy = agent.act(np.ones((B, D), np.float32) * 5, own)
    with torch.no_grad():
        mean, _ = learner.policy.step(torch.ones(B, D) * 5, learner.policy.initial_state(B), torch.zeros(B, dtype=torch.bool))
    np.testing.assert_allclose(greedy, learner.env_actions(mean, 1)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="log_std: sampling a Gaussian agent"):
        export_agent(learner.policy, tmp_path / "b.onnx", spec=spec, sampling=True)
    with pytest.raises(ValueError, match=r"agent: expected slots in \[0, 3\)"):
        agent.act(np.zeros((B, D), np.float32), own, agent=np.array([0, 1, 3]))


@pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics not installed")
def test_a_trained_mamujoco_checkpoint_exports_and_plays(tmp_path):
    root = Path(__file__).resolve().parents[2]
    train = [sys.executable, str(root / "examples" / "02_train_mappo.py"), "--env-id", "mamujoco:Humanoid:9|8",
             "--total-steps", "100", "--num-envs", "2", "--eval-every", "0", "--env-kwargs", "max_episode_steps", "20",
             "--run-dir", str(tmp_path / "run"), "--no-progress", "--mappo.epochs", "1"]  # fmt: skip
    proc = subprocess.run(train, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    export = [sys.executable, str(root / "examples" / "03_export_onnx.py"), "--run-dir", str(tmp_path / "run"),
              "--out", str(tmp_path / "agent.onnx"), "--episodes", "2", "--sampling"]  # fmt: skip
    proc = subprocess.run(export, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "episode return per agent on mamujoco:Humanoid:9|8 over 2 episodes" in proc.stdout
