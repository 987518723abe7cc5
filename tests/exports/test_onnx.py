"""ONNX export: 1000 steps of onnxruntime vs PyTorch per policy type, a real episode, and clear errors."""

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from agents.policies import GRUPolicyConfig, MambaPolicyConfig, MLPPolicyConfig, SPMambaConfig, make_policy  # noqa: E402
from exports import OnnxAgent, export_agent  # noqa: E402
from wmenv.envs import make  # noqa: E402

D, A = 9, 5
KINDS = {
    "gru": ("gru", GRUPolicyConfig(hidden=32)),
    "mamba": ("mamba", MambaPolicyConfig(hidden=32, d_state=8)),
    "sp-mamba": ("sp-mamba", SPMambaConfig(d_model=32, d_state=8)),
    "sp-mamba k=4 categorical": ("sp-mamba", SPMambaConfig(d_model=32, d_state=8, k=4, encoder="categorical")),
    "mlp": ("mlp", MLPPolicyConfig(hidden=32)),
}


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory):
    kind, cfg = KINDS[request.param]
    torch.manual_seed(0)
    policy = make_policy(kind, D, A, cfg)
    with torch.no_grad():  # away from the near-uniform init, so greedy actions are not ties
        policy.head.weight.mul_(100.0)
    path = export_agent(policy, tmp_path_factory.mktemp("onnx") / "agent.onnx", sampling=True)
    return policy.eval(), path


def test_graph_checks_and_has_no_loops_and_carries_metadata(exported):
    policy, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert not {n.op_type for n in model.graph.node} & {"Loop", "Scan", "If"}
    meta = {p.key: p.value for p in model.metadata_props}
    assert (
        meta["wmenv.policy"] == type(policy).__name__ and meta["wmenv.obs_dim"] == str(D) and meta["wmenv.n_actions"] == str(A)
    )
    assert [i.name for i in model.graph.input][:3] == ["obs", "action_mask", "reset"]


def test_thousand_steps_with_resets_match_pytorch(exported):
    policy, path = exported
    agent = OnnxAgent(path, providers=["CPUExecutionProvider"])
    B, rng = 3, np.random.default_rng(0)
    agent.reset(B)
    state = policy.initial_state(B)
    for t in range(1000):
        obs = rng.normal(size=(B, D)).astype(np.float32)
        mask = rng.random((B, A)) < 0.7
        mask[np.arange(B), rng.integers(0, A, B)] = True
        resets = rng.random(B) < 0.03
        resets[0] |= t == 500
        action = agent.act(obs, mask, resets)
        with torch.no_grad():
            logits, state = policy.step(torch.from_numpy(obs), state, torch.from_numpy(resets))
        logits = logits.masked_fill(~torch.from_numpy(mask), float("-inf"))
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, logits.argmax(-1).numpy()), f"step {t}"
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")


def test_sampling_is_gumbel_max_over_available_actions(exported):
    """Sampled actions are argmax(masked logits + Gumbel(noise)) exactly, and their frequencies follow softmax."""
    _, path = exported
    agent = OnnxAgent(path)
    B = 4000
    agent.reset(B)
    mask = np.zeros((B, A), dtype=bool)
    mask[:, [0, 2, 3]] = True
    obs = np.full((B, D), 0.01, np.float32)
    obs[:, ::2] *= -1  # the same non-zero observation in every row: logits away from the zero-input tie
    actions = agent.act(obs, mask, deterministic=False, rng=np.random.default_rng(1))
    assert set(np.unique(actions)) <= {0, 2, 3}, "masked actions are never sampled"
    noise = np.random.default_rng(1).random((B, A), dtype=np.float32)  # the stream OnnxAgent drew from
    gumbel = -np.log(-np.log(np.clip(noise, np.finfo(np.float32).tiny, 1 - 1e-7)))
    np.testing.assert_array_equal(actions, (agent.logits + gumbel).argmax(-1))
    p = torch.softmax(torch.from_numpy(agent.logits[0, [0, 2, 3]]), 0).numpy()
    assert np.abs(p - 1 / 3).max() > 0.1, f"the test needs non-uniform probabilities, got {p}"
    freq = np.array([(actions == a).mean() for a in (0, 2, 3)])
    np.testing.assert_allclose(freq, p, atol=0.03)  # 4000 draws: one standard error <= 0.008


def test_exported_agent_plays_a_real_episode_and_refuses_another_env(tmp_path):
    env, spec = make("mpe:simple_spread_v3", max_cycles=25)
    torch.manual_seed(0)
    path = export_agent(
        make_policy("sp-mamba", spec.obs_dim, spec.n_actions, SPMambaConfig(k=2)), tmp_path / "a.onnx", spec=spec
    )
    agent = OnnxAgent(path, spec=spec)
    obs, infos = env.reset(seed=0)
    agent.reset(len(spec.agents))
    total, steps, first = 0.0, 0, True
    while env.agents:
        o = np.stack([obs[a] for a in spec.agents])
        m = np.stack([infos[a].get("action_mask", np.ones(spec.n_actions, bool)) for a in spec.agents])
        actions = agent.act(o, m.astype(bool), resets=np.full(len(spec.agents), first))
        first = False
        obs, rewards, term, trunc, infos = env.step({a: int(actions[i]) for i, a in enumerate(spec.agents)})
        total += sum(rewards.values())
        steps += 1
    assert steps == 25 and np.isfinite(total)
    _, other = make("flatland:5")
    with pytest.raises(ValueError, match=r"spec: flatland:5 has obs_dim=\d+, n_actions=5; .* expects obs_dim=18, n_actions=5"):
        OnnxAgent(path, spec=other)


def test_bad_files_and_inputs_get_clear_errors(exported, tmp_path):
    _, path = exported
    agent = OnnxAgent(path)
    agent.reset(2)
    with pytest.raises(ValueError, match=r"obs: expected shape \(2, 9\) \(B = 2 from reset\), got \(3, 9\)"):
        agent.act(np.zeros((3, D), np.float32))
    with pytest.raises(ValueError, match=r"action_mask: rows \[1\] have no available action"):
        agent.act(np.zeros((2, D), np.float32), np.array([[True] * A, [False] * A]))
    with pytest.raises(TypeError, match="action_mask: expected a bool array, got dtype float64"):
        agent.act(np.zeros((2, D), np.float32), np.ones((2, A)))
    with pytest.raises(ValueError, match="obs: contains NaN or inf in rows \\[0\\]"):
        agent.act(np.array([[np.nan] * D, [0.0] * D], np.float32))
    # a file whose recurrent state input was renamed
    model = onnx.load(str(path))
    state_input = model.graph.input[3]
    old = state_input.name
    state_input.name = "hidden"
    for node in model.graph.node:
        node.input[:] = ["hidden" if i == old else i for i in node.input]
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ValueError, match=f"has no input '{old}'"):
        OnnxAgent(tmp_path / "renamed.onnx")
    x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy")
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="is not a wmenv agent of format 1"):
        OnnxAgent(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a loadable ONNX model"):
        OnnxAgent(tmp_path / "junk.onnx")
    with pytest.raises(TypeError, match="policy: expected a RecurrentPolicy"):
        export_agent(torch.nn.GRU(3, 3), tmp_path / "x.onnx")


def test_example_exports_a_trained_checkpoint_and_plays_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    train = [sys.executable, "examples/02_train_mappo.py", "--no-progress", "--env-id", "flatland:5", "--policy", "sp-mamba",
             "--sp-mamba.d-model", "16", "--num-envs", "2", "--mappo.rollout-length", "10", "--mappo.epochs", "1",
             "--total-steps", "20", "--eval-every", "0", "--run-dir", str(run)]  # fmt: skip
    assert subprocess.run(train, cwd=root, capture_output=True, timeout=300).returncode == 0
    export = [sys.executable, "examples/03_export_onnx.py", "--run-dir", str(run), "--out", str(tmp_path / "a.onnx"),
              "--episodes", "1"]  # fmt: skip
    proc = subprocess.run(export, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported SPMambaPolicy" in proc.stdout and "episode return per agent on flatland:5 over 1 episodes" in proc.stdout
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    assert '"id": "flatland:5"' in meta["wmenv.env"]


@pytest.mark.parametrize("kind", ["gru", "sp-mamba"])
def test_export_prints_nothing(kind, tmp_path, caplog, recwarn):
    """No warning or log line from an export: ours are fixed (eval mode, GRU weights), torch's known noise is filtered."""
    policy = make_policy(kind, D, A, KINDS[kind][1])  # in training mode, as a learner leaves it
    assert policy.training
    export_agent(policy, tmp_path / "agent.onnx", sampling=True)
    assert [str(w.message) for w in recwarn] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    assert policy.training, "the caller's policy keeps its mode"
