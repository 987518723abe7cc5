"""One ONNX graph per agent type (issue 18, item 1): heterogeneous agents (`mpe:simple_speaker_listener_v4`: speaker
obs 3 / 3 actions, listener obs 11 / 5 actions) each get a graph with their own widths that matches the shared
policy on the padded ones, and play the real env together."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from agents.policies import GRUPolicyConfig, make_policy  # noqa: E402
from exports import OnnxAgent, agent_types, export_agent, export_agent_types, play_episode  # noqa: E402
from wmenv.envs import make  # noqa: E402

ENV = "mpe:simple_speaker_listener_v4"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    env, spec = make(ENV)
    torch.manual_seed(0)
    policy = make_policy("gru", spec.obs_dim, spec.n_actions, GRUPolicyConfig(hidden=16)).eval()
    with torch.no_grad():
        policy.head.weight.mul_(50.0)  # away from ties
    files = export_agent_types(policy, tmp_path_factory.mktemp("types"), spec, sampling=True)
    return env, spec, policy, files


def test_each_type_gets_its_own_widths_and_matches_the_shared_policy(exported):
    _, spec, policy, files = exported
    assert agent_types(spec) == {"speaker": ["speaker_0"], "listener": ["listener_0"]}
    rng = np.random.default_rng(0)
    for name, (d, a) in {"speaker": (3, 3), "listener": (11, 5)}.items():
        agent = OnnxAgent(files[name], providers=["CPUExecutionProvider"], spec=spec)
        assert (agent.obs_dim, agent.n_actions, agent.agents) == (d, a, [f"{name}_0"])
        B = 2
        agent.reset(B)
        state = policy.initial_state(B)
        for t in range(200):
            obs = rng.normal(size=(B, d)).astype(np.float32)
            mask = rng.random((B, a)) < 0.7
            mask[:, 0] = True
            resets = rng.random(B) < 0.05
            action = agent.act(obs, mask, resets)
            padded = torch.zeros(B, spec.obs_dim)
            padded[:, :d] = torch.from_numpy(obs)
            with torch.no_grad():
                logits, state = policy.step(padded, state, torch.from_numpy(resets))
            logits = logits[:, :a].masked_fill(~torch.from_numpy(mask), float("-inf"))
            np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} step {t}")
            assert np.array_equal(action, logits.argmax(-1).numpy())


def test_the_types_play_the_real_env_together_and_bad_types_are_refused(exported, tmp_path):
    env, spec, policy, files = exported
    agents = {name: OnnxAgent(path, providers=["CPUExecutionProvider"], spec=spec) for name, path in files.items()}
    assert np.isfinite(play_episode(agents, env, spec, seed=0))
    with pytest.raises(ValueError, match="expected every agent of mpe:simple_speaker_listener_v4 once"):
        play_episode({"speaker": agents["speaker"]}, env, spec, seed=0)
    with pytest.raises(ValueError, match=r"agents: \['speaker_0', 'listener_0'\] have other spaces"):
        export_agent(policy, tmp_path / "x.onnx", spec, agents=["speaker_0", "listener_0"])
    with pytest.raises(ValueError, match="got env 'mpe:simple_spread_v3'"):
        agents["speaker"].check_spec(make("mpe:simple_spread_v3")[1])


@pytest.mark.parametrize("env_id", [ENV, "mamujoco:Humanoid:9|8"])
def test_the_example_exports_one_graph_per_type_and_plays_them(env_id, tmp_path):
    """Discrete (speaker / listener) and continuous (Humanoid's 9- and 8-dim halves) heterogeneous agents."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if env_id.startswith("mamujoco") and importlib.util.find_spec("gymnasium_robotics") is None:
        pytest.skip("gymnasium-robotics not installed")
    root = Path(__file__).resolve().parents[2]
    kwargs = ["--env-kwargs", "max_episode_steps", "20"] if env_id.startswith("mamujoco") else []
    train = [sys.executable, str(root / "examples" / "02_train_mappo.py"), "--env-id", env_id, "--total-steps", "100",
             "--num-envs", "2", "--eval-every", "0", "--run-dir", str(tmp_path / "run"), "--no-progress",
             "--mappo.epochs", "1", *kwargs]  # fmt: skip
    assert subprocess.run(train, cwd=root, capture_output=True, timeout=300).returncode == 0
    export = [sys.executable, str(root / "examples" / "03_export_onnx.py"), "--run-dir", str(tmp_path / "run"),
              "--out", str(tmp_path / "agent.onnx"), "--episodes", "1", "--per-type", "--sampling"]  # fmt: skip
    proc = subprocess.run(export, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "one graph per agent type" in proc.stdout and f"episode return per agent on {env_id}" in proc.stdout
    assert len(list(tmp_path.glob("agent_*.onnx"))) == 2
