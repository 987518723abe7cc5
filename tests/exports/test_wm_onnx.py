"""ONNX export of a world-model agent: 1000 steps of onnxruntime vs the PyTorch module, the filter's math, a real
MPE episode with 3 agents exchanging messages, and clear errors."""

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from agents.policies import GRUPolicyConfig, MLPPolicyConfig, make_policy  # noqa: E402
from exports import OnnxAgent, export_wm_agent, play_episode  # noqa: E402
from exports.wm_agent import LATENTS, Mamba2FilterStep, WorldModelStep, receive  # noqa: E402
from wmenv.envs import make  # noqa: E402
from wmenv.models.comm import CommBlock  # noqa: E402
from wmenv.models.mamba_wm import MAMBAWorldModel, preset  # noqa: E402

B = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained `small` MAMBA model on MPE simple_spread (N=3), a GRU actor on its features, both latents exported."""
    _, spec = make("mpe:simple_spread_v3", max_cycles=25)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).eval()
    policy = make_policy("gru", model.rssm.feature_dim, spec.n_actions, GRUPolicyConfig(hidden=32)).eval()
    with torch.no_grad():  # away from the near-uniform init, so greedy actions are not ties
        policy.head.weight.mul_(100.0)
    folder = tmp_path_factory.mktemp("wm")
    paths = {latent: export_wm_agent(model, policy, folder / f"{latent}.onnx", latent=latent) for latent in ("sample", "mode")}
    return spec, model, policy, paths


def random_inputs(rng: np.random.Generator, spec, M: int, t: int) -> tuple[np.ndarray, ...]:
    """obs, action_mask, resets (all at t = 0, row 0 at t = 500, else 3 %), messages, heard (70 %), agent slots."""
    N, A = spec.n_agents, spec.n_actions
    obs = rng.normal(size=(B, spec.obs_dim)).astype(np.float32)
    mask = rng.random((B, A)) < 0.7
    mask[np.arange(B), rng.integers(0, A, B)] = True
    resets = (rng.random(B) < 0.03) | (t == 0)
    resets[0] |= t == 500
    messages = rng.normal(size=(B, N, M)).astype(np.float32)
    return obs, mask, resets, messages, rng.random((B, N)) < 0.7, rng.integers(0, N, B)


def test_graph_checks_names_and_metadata(setup):
    spec, model, policy, paths = setup
    graph = onnx.load(str(paths["sample"]))
    onnx.checker.check_model(graph)
    assert not {n.op_type for n in graph.graph.node} & {"Loop", "Scan", "If"}
    c = model.rssm.config
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    N, M, D, A = spec.n_agents, model.message_dim, spec.obs_dim, spec.n_actions
    assert shapes == {
        "obs": ["batch", D], "action_mask": ["batch", A], "reset": ["batch"], "agent": ["batch"],
        "messages": ["batch", N, M], "heard": ["batch", N], "deter": ["batch", c.deter],
        "stoch": ["batch", c.stoch * c.classes], "prev_action": ["batch"], "h": ["batch", 1, 32],
        "noise": ["batch", c.stoch, c.classes],
    }  # fmt: skip
    assert [o.name for o in graph.graph.output] == [
        "logits", "action", "message", "new_deter", "new_stoch", "new_prev_action", "new_h"
    ]  # fmt: skip
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["wmenv.kind"] == "world_model" and meta["wmenv.message_dim"] == str(M) and meta["wmenv.n_agents"] == str(N)
    assert '"id": "mpe:simple_spread_v3"' in meta["wmenv.env"] and meta["wmenv.latent"] == "sample"
    assert "noise" not in [i.name for i in onnx.load(str(paths["mode"])).graph.input]


def test_thousand_steps_with_resets_and_dropouts_match_pytorch(setup):
    """OnnxAgent (latent "sample") = the exported module run in PyTorch with the same noise, states fed back."""
    spec, model, policy, paths = setup
    c, M = model.rssm.config, model.message_dim
    agent = OnnxAgent(paths["sample"], providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    ref = WorldModelStep(model, policy, ["h"], "sample").eval()
    state = {"deter": torch.zeros(B, c.deter), "stoch": torch.zeros(B, c.stoch * c.classes),
             "prev_action": torch.full((B,), -1), "h": policy.initial_state(B)["h"]}  # fmt: skip
    rng, agent_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(1), np.random.default_rng(1)
    for t in range(1000):
        inputs = random_inputs(rng, spec, M, t)
        action = agent.act(*inputs, rng=agent_rng)
        noise = torch.from_numpy(ref_rng.random((B, c.stoch, c.classes), dtype=np.float32))
        with torch.no_grad():
            obs, mask, resets, messages, heard, slots = map(torch.from_numpy, inputs)
            logits, greedy, message, *new = ref(obs, mask, resets, slots, messages, heard, state["deter"], state["stoch"],
                                                state["prev_action"], (state["h"],), noise)  # fmt: skip
        state = dict(zip(["deter", "stoch", "prev_action", "h"], new))
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, greedy.numpy()), f"step {t}"
        np.testing.assert_allclose(agent.outgoing, message.numpy(), atol=1e-5, rtol=0, err_msg=f"message at step {t}")
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")
    assert np.array_equal(agent.state["prev_action"], action)


def test_stateless_actor_exports_with_the_filter(setup, tmp_path):
    """A feed-forward actor (MAMBA's) on the features: the graph has only the filter's state, and matches PyTorch."""
    spec, model, _, _ = setup
    torch.manual_seed(2)
    policy = make_policy("mlp", model.rssm.feature_dim, spec.n_actions, MLPPolicyConfig(hidden=16)).eval()
    with torch.no_grad():
        policy.head.weight.mul_(100.0)
    path = export_wm_agent(model, policy, tmp_path / "mlp.onnx", latent="mode")
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["obs", "action_mask", "reset", "agent", "messages", "heard", "deter",
                                                   "stoch", "prev_action"]  # fmt: skip
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in graph.graph.input)
    agent = OnnxAgent(path, providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    ref = WorldModelStep(model, policy, [], "mode").eval()
    c, M = model.rssm.config, model.message_dim
    state = [torch.zeros(B, c.deter), torch.zeros(B, c.stoch * c.classes), torch.full((B,), -1)]
    rng = np.random.default_rng(3)
    for t in range(200):
        inputs = random_inputs(rng, spec, M, t)
        action = agent.act(*inputs)
        with torch.no_grad():
            obs, mask, resets, messages, heard, slots = map(torch.from_numpy, inputs)
            logits, greedy, _, *state = ref(obs, mask, resets, slots, messages, heard, *state, [])
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, greedy.numpy()), f"step {t}"


def test_mode_graph_is_the_models_filter_with_the_argmax_posterior(setup):
    """deter = `filter_step`'s, z = one_hot(argmax of the posterior logits it computes), logits = the actor's on [h, z]."""
    spec, model, policy, paths = setup
    c, M = model.rssm.config, model.message_dim
    agent = OnnxAgent(paths["mode"], spec=spec)
    agent.reset(B)
    posterior: list[torch.Tensor] = []
    hook = model.rssm.post_net.register_forward_hook(lambda mod, args, out: posterior.append(out))
    h, rng = policy.initial_state(B), np.random.default_rng(2)
    try:
        for t in range(200):
            inputs = random_inputs(rng, spec, M, t)
            before = {k: torch.from_numpy(v) for k, v in agent.state.items()}
            agent.act(*inputs)
            with torch.no_grad():
                obs, mask, resets, messages, heard, slots = map(torch.from_numpy, inputs)
                filt = {k: before[k] for k in ("deter", "stoch")}
                new, _ = model.filter_step(filt, obs, before["prev_action"], resets, slots, messages, heard)
                z = torch.nn.functional.one_hot(posterior[-1].view(B, c.stoch, c.classes).argmax(-1), c.classes)
                logits, h = policy.step(torch.cat([new["deter"], z.flatten(1).float()], -1), h, resets)
            np.testing.assert_allclose(agent.state["deter"], new["deter"].numpy(), atol=1e-5, rtol=0, err_msg=f"step {t}")
            assert np.array_equal(agent.state["stoch"], z.flatten(1).float().numpy()), f"step {t}"
            np.testing.assert_allclose(agent.logits, logits.masked_fill(~mask, float("-inf")).numpy(), atol=1e-5, rtol=1e-5)
    finally:
        hook.remove()


def test_written_out_attention_equals_comm_receive():
    """`receive` = `CommBlock.receive`, 2 layers (a message could leak through a first-layer output), pre- and post-norm."""
    torch.manual_seed(0)
    comm = CommBlock(7, 8, 4, layers=2, heads=2, dropout=0.1).eval()
    g = torch.Generator().manual_seed(1)
    messages, heard = torch.randn(64, 4, 7, generator=g), torch.rand(64, 4, generator=g) < 0.5
    receiver = torch.randint(0, 4, (64,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(receive(comm, messages, heard, receiver), comm.receive(messages, heard, receiver))
        for layer in comm.encoder.layers:
            layer.norm_first = False
        torch.testing.assert_close(receive(comm, messages, heard, receiver), comm.receive(messages, heard, receiver))


def test_three_agents_exchange_messages_in_a_real_episode(setup):
    spec, model, _, paths = setup
    env, _ = make("mpe:simple_spread_v3", max_cycles=25)
    agent = OnnxAgent(paths["sample"], spec=spec)
    ret = play_episode(agent, env, spec, seed=0)
    assert np.isfinite(ret) and agent.batch_size == spec.n_agents == 3
    c = model.rssm.config
    sent = agent.outgoing  # [one-hot z (S of K), one-hot greedy action]
    assert sent.shape == (3, model.message_dim)
    assert (sent[:, : c.stoch * c.classes].sum(1) == c.stoch).all() and (sent[:, c.stoch * c.classes :].sum(1) == 1).all()
    with pytest.raises(ValueError, match="neighbours: env mpe:simple_spread_v3 has no neighbours"):
        play_episode(agent, env, spec, seed=0, neighbours=2)


def test_bad_inputs_get_clear_errors(setup):
    spec, model, policy, paths = setup
    N, M, H = spec.n_agents, model.message_dim, model.rssm.config.deter
    agent = OnnxAgent(paths["mode"])
    agent.reset(B)
    obs = np.zeros((B, spec.obs_dim), np.float32)
    with pytest.raises(ValueError, match=rf"messages: expected shape \(B, N, M\) = \(3, 3, {M}\), got \(3, 3, {M + 1}\): "
                                         rf"each message must have width M={M}"):  # fmt: skip
        agent.act(obs, messages=np.zeros((B, N, M + 1), np.float32))
    with pytest.raises(ValueError, match=r"messages: .* got \(3, 4, \d+\): each row must hold N=3 messages"):
        agent.act(obs, messages=np.zeros((B, N + 1, M), np.float32))
    with pytest.raises(ValueError, match=r"heard: expected shape \(3, 3\)"):
        agent.act(obs, messages=np.zeros((B, N, M), np.float32), heard=np.ones((B, 2), bool))
    with pytest.raises(ValueError, match=r"agent: expected slots in \[0, 3\), got \[0, 1, 3\]"):
        agent.act(obs, agent=np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=rf"deter: expected shape \(3, {H}\) .* got \(3, 32\): a state of another model"):
        agent.set_state({**agent.state, "deter": np.zeros((B, 32), np.float32)})
    with pytest.raises(ValueError, match=r"deterministic: .* without action sampling \(world-model agents act greedily\)"):
        agent.act(obs, deterministic=False)
    # another env: other sizes, or the same sizes and another episode limit
    _, flatland = make("flatland:5")
    with pytest.raises(ValueError, match=r"spec: flatland:5 has obs_dim=\d+, n_actions=5; .* expects obs_dim=18, n_actions=5"):
        OnnxAgent(paths["mode"], spec=flatland)
    _, longer = make("mpe:simple_spread_v3", max_cycles=50)
    with pytest.raises(ValueError, match=r"exported for env 'mpe:simple_spread_v3', .* differ in episode_limit: 25 vs 50"):
        OnnxAgent(paths["mode"], spec=longer)
    # export: an actor that does not fit the model, another env, an unknown latent
    wrong = make_policy("gru", spec.obs_dim, spec.n_actions, GRUPolicyConfig(hidden=8))
    with pytest.raises(ValueError, match=rf"policy: expected obs_dim={model.rssm.feature_dim} \(the model's agent features"):
        export_wm_agent(model, wrong, paths["mode"].parent / "x.onnx")
    with pytest.raises(ValueError, match=r"spec: the model was made for env 'mpe:simple_spread_v3', got env 'flatland:5'"):
        export_wm_agent(model, policy, paths["mode"].parent / "x.onnx", spec=flatland)
    with pytest.raises(ValueError, match=r"latent: expected one of \['mode', 'sample'\], got 'argmax'"):
        export_wm_agent(model, policy, paths["mode"].parent / "x.onnx", latent="argmax")
    with pytest.raises(TypeError, match="model: expected a MAMBAWorldModel"):
        export_wm_agent(torch.nn.Linear(2, 2), policy, paths["mode"].parent / "x.onnx")


@pytest.mark.parametrize(
    "env", [("mpe:simple_spread_v3", {}), ("mamujoco:HalfCheetah:2x3", {"max_episode_steps": 30})], ids=["mpe", "mamujoco"]
)
def test_example_exports_a_latent_model_based_run_and_plays_it(tmp_path, env):
    """examples/03_export_onnx.py on a model-based run with latent actors exports filter + actor and plays N agents,
    with discrete and with continuous actions."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    from agents.model_based import ModelBasedConfig, run
    from wmenv.fit import FitConfig

    env_id, kwargs = env
    if env_id.startswith("mamujoco") and importlib.util.find_spec("gymnasium_robotics") is None:
        pytest.skip("gymnasium-robotics not installed")
    root = Path(__file__).resolve().parents[2]
    cfg = ModelBasedConfig(env_id=env_id, env_kwargs=kwargs, iterations=1, real_steps=60, num_envs=2, fit_steps=5,
                           dream_updates=1, dream_worlds=8, fit=FitConfig(batch_size=4, progress=False), eval_episodes=1,
                           actor_input="latent", run_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    run(cfg)
    export = [sys.executable, "examples/03_export_onnx.py", "--run-dir", str(tmp_path / "run"), "--out",
              str(tmp_path / "a.onnx"), "--episodes", "1"]  # fmt: skip
    proc = subprocess.run(export, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"episode return per agent on {env_id} over 1 episodes" in proc.stdout
    agent = OnnxAgent(tmp_path / "a.onnx")
    assert agent.kind == "world_model" and agent.n_agents == (3 if env_id.startswith("mpe") else 2)
    assert agent.continuous == env_id.startswith("mamujoco")


@pytest.fixture(scope="module")
def mabl_setup(tmp_path_factory):
    """An untrained `small` MABL model on MPE simple_spread (N=3) and a GRU actor on its agent features."""
    from wmenv.models.mabl import MABLWorldModel, mabl_preset

    _, spec = make("mpe:simple_spread_v3", max_cycles=25)
    torch.manual_seed(0)
    model = MABLWorldModel(spec, mabl_preset("small")).eval()
    policy = make_policy("gru", model.feature_widths()[0], spec.n_actions, GRUPolicyConfig(hidden=32)).eval()
    with torch.no_grad():
        policy.head.weight.mul_(100.0)
    folder = tmp_path_factory.mktemp("mabl")
    paths = {latent: export_wm_agent(model, policy, folder / f"{latent}.onnx", latent=latent) for latent in ("sample", "mode")}
    return spec, model, policy, paths


def test_mabl_agent_exports_without_messages_and_matches_pytorch_for_1000_steps(mabl_setup):
    """MABL's execution graph: the agent level and the actor, no messages or slot; onnxruntime = PyTorch with resets."""
    from exports.wm_agent import AgentLevelStep

    spec, model, policy, paths = mabl_setup
    graph = onnx.load(str(paths["sample"]))
    onnx.checker.check_model(graph)
    c = model.config
    assert [i.name for i in graph.graph.input] == ["obs", "action_mask", "reset", "deter_a", "stoch_a", "prev_action", "h",
                                                   "noise"]  # fmt: skip
    assert [o.name for o in graph.graph.output] == ["logits", "action", "new_deter_a", "new_stoch_a", "new_prev_action",
                                                    "new_h"]  # fmt: skip
    meta = {p.key: p.value for p in graph.metadata_props}
    assert (meta["wmenv.kind"], meta["wmenv.message_dim"], meta["wmenv.model"]) == ("world_model", "0", "MABLWorldModel")
    agent = OnnxAgent(paths["sample"], providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    assert not agent.messaging and agent.outgoing.shape == (B, 0)
    ref = AgentLevelStep(model, policy, ["h"], "sample").eval()
    state = {"deter_a": torch.zeros(B, c.agent_deter), "stoch_a": torch.zeros(B, c.stoch * c.classes),
             "prev_action": torch.full((B,), -1), "h": policy.initial_state(B)["h"]}  # fmt: skip
    rng, agent_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(1), np.random.default_rng(1)
    for t in range(1000):
        obs, mask, resets, *_ = random_inputs(rng, spec, 0, t)
        action = agent.act(obs, mask, resets, rng=agent_rng)
        noise = torch.from_numpy(ref_rng.random((B, c.stoch, c.classes), dtype=np.float32))
        with torch.no_grad():
            feeds = (torch.from_numpy(obs), torch.from_numpy(mask), torch.from_numpy(resets))
            logits, greedy, *new = ref(*feeds, state["deter_a"], state["stoch_a"], state["prev_action"], (state["h"],), noise)
        state = dict(zip(["deter_a", "stoch_a", "prev_action", "h"], new))
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, greedy.numpy()), f"step {t}"
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")
    with pytest.raises(ValueError, match="is a world-model agent without messages, it takes no messages"):
        agent.act(obs, mask, resets, np.zeros((B, 3, 0), np.float32))
    assert np.isfinite(play_episode(agent, make("mpe:simple_spread_v3", max_cycles=25)[0], spec, seed=0))


def test_mabl_graph_is_the_models_filter_step(mabl_setup):
    """The exported module's agent level = `MABLWorldModel.filter_step` (same GRU update; its argmax posterior is the
    mode of the filter's posterior logits)."""
    from exports.wm_agent import AgentLevelStep

    spec, model, policy, _ = mabl_setup
    c, g = model.config, torch.Generator().manual_seed(0)
    obs = torch.randn(B, spec.obs_dim, generator=g)
    state = {"deter_a": torch.randn(B, c.agent_deter, generator=g),
             "stoch_a": torch.eye(c.stoch * c.classes)[:B]}  # fmt: skip
    prev, reset = torch.tensor([2, -1, 0]), torch.tensor([False, False, True])
    with torch.no_grad():
        new, _ = model.filter_step(state, obs, prev, reset, torch.arange(B), generator=g)
        _, _, deter, stoch, *_ = AgentLevelStep(model, policy, ["h"], "mode")(
            obs, torch.ones(B, spec.n_actions, dtype=torch.bool), reset, state["deter_a"], state["stoch_a"], prev,
            (policy.initial_state(B)["h"],),
        )  # fmt: skip
        torch.testing.assert_close(deter, new["deter_a"])
        embed = model.obs_encoder(obs)
        logits = model.agent_post(torch.cat([deter, embed], -1)).view(B, c.stoch, c.classes)
        assert torch.equal(stoch.view(B, c.stoch, c.classes).argmax(-1), logits.argmax(-1))


def test_mamba2_dynamics_export_their_filter_and_match_pytorch_and_the_model(tmp_path):
    """Mamba-2 dynamics: the graph carries z and the blocks' states (no h); OnnxAgent ("sample") = the module in PyTorch
    with the same noise over 300 steps with resets and dropped messages; the "mode" graph's block states and h are
    `filter_step`'s, its z the argmax of the posterior logits."""
    _, spec = make("mpe:simple_spread_v3", max_cycles=25)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small-mamba2")).eval()
    policy = make_policy("mamba", model.rssm.feature_dim, spec.n_actions).eval()  # its own "conv" / "ssm" state names
    c, M, names = model.rssm.config, model.message_dim, list(policy.initial_state(1))
    paths = {latent: export_wm_agent(model, policy, tmp_path / f"{latent}.onnx", latent=latent) for latent in LATENTS}
    graph = onnx.load(str(paths["sample"]))
    inputs = [i.name for i in graph.graph.input]
    assert inputs[:10] == ["obs", "action_mask", "reset", "agent", "messages", "heard", "stoch", "prev_action", "wm_conv0",
                           "wm_ssm0"] and "deter" not in inputs and inputs[-1] == "noise"  # fmt: skip
    agent = OnnxAgent(paths["sample"], providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    ref = Mamba2FilterStep(model, policy, names, "sample").eval()
    blocks = [n for n in agent.state if n.startswith("wm_")]
    state = {n: torch.from_numpy(v) for n, v in agent.state.items()}
    rng, agent_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(1), np.random.default_rng(1)
    for t in range(300):
        step_inputs = random_inputs(rng, spec, M, t)
        action = agent.act(*step_inputs, rng=agent_rng)
        noise = torch.from_numpy(ref_rng.random((B, c.stoch, c.classes), dtype=np.float32))
        with torch.no_grad():
            obs, mask, resets, messages, heard, slots = map(torch.from_numpy, step_inputs)
            listed = [state[n] for n in [*blocks, *names]]
            logits, greedy, message, *new = ref(obs, mask, resets, slots, messages, heard, state["stoch"],
                                                state["prev_action"], listed, noise)  # fmt: skip
        state = dict(zip(["stoch", *blocks, "prev_action", *names], new))
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, greedy.numpy()), f"step {t}"
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")
    mode = OnnxAgent(paths["mode"], spec=spec)
    mode.reset(B)
    posterior: list[torch.Tensor] = []
    hook = model.rssm.post_net.register_forward_hook(lambda mod, args, out: posterior.append(out))
    try:
        for t in range(50):
            step_inputs = random_inputs(rng, spec, M, t)
            before = {k: torch.from_numpy(v) for k, v in mode.state.items()}
            mode.act(*step_inputs)
            with torch.no_grad():
                obs, _, resets, messages, heard, slots = map(torch.from_numpy, step_inputs)
                filt = {"deter": torch.zeros(B, c.deter), "stoch": before["stoch"],
                        **{n.removeprefix("wm_"): before[n] for n in blocks}}  # fmt: skip
                new, _ = model.filter_step(filt, obs, before["prev_action"], resets, slots, messages, heard)
            z = torch.nn.functional.one_hot(posterior[-1].view(B, c.stoch, c.classes).argmax(-1), c.classes)
            assert np.array_equal(mode.state["stoch"], z.flatten(1).float().numpy()), f"step {t}"
            for n in blocks:
                np.testing.assert_allclose(mode.state[n], new[n.removeprefix("wm_")].numpy(), atol=1e-5, rtol=0)
    finally:
        hook.remove()


def test_mabl_with_mamba2_dynamics_exports_its_agent_level_and_matches_pytorch_and_the_model(tmp_path):
    """MABL with Mamba-2 dynamics: the graph carries z^a and the agent level's block states (no h^a, no messages);
    OnnxAgent ("sample") = the module in PyTorch with the same noise over 300 steps with resets; the "mode" graph's
    block states are `filter_step`'s and its z^a the argmax of the posterior logits."""
    from exports.wm_agent import AgentLevelMamba2Step
    from wmenv.models.mabl import MABLWorldModel, mabl_preset

    _, spec = make("mpe:simple_spread_v3", max_cycles=25)
    torch.manual_seed(0)
    model = MABLWorldModel(spec, mabl_preset("small-mamba2")).eval()
    policy = make_policy("gru", model.feature_widths()[0], spec.n_actions, GRUPolicyConfig(hidden=32)).eval()
    with torch.no_grad():
        policy.head.weight.mul_(100.0)
    c = model.config
    paths = {latent: export_wm_agent(model, policy, tmp_path / f"{latent}.onnx", latent=latent) for latent in LATENTS}
    graph = onnx.load(str(paths["sample"]))
    assert [i.name for i in graph.graph.input] == ["obs", "action_mask", "reset", "stoch_a", "prev_action", "wm_conv0",
                                                   "wm_ssm0", "wm_conv1", "wm_ssm1", "h", "noise"]  # fmt: skip
    assert [o.name for o in graph.graph.output][:4] == ["logits", "action", "new_stoch_a", "new_wm_conv0"]
    agent = OnnxAgent(paths["sample"], providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    assert not agent.messaging
    ref = AgentLevelMamba2Step(model, policy, ["h"], "sample").eval()
    blocks = [n for n in agent.state if n.startswith("wm_")]
    state = {n: torch.from_numpy(v) for n, v in agent.state.items()}
    rng, agent_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(1), np.random.default_rng(1)
    for t in range(300):
        obs, mask, resets, *_ = random_inputs(rng, spec, 0, t)
        action = agent.act(obs, mask, resets, rng=agent_rng)
        noise = torch.from_numpy(ref_rng.random((B, c.stoch, c.classes), dtype=np.float32))
        with torch.no_grad():
            feeds = (torch.from_numpy(obs), torch.from_numpy(mask), torch.from_numpy(resets))
            listed = [state[n] for n in [*blocks, "h"]]
            logits, greedy, *new = ref(*feeds, state["stoch_a"], state["prev_action"], listed, noise)
        state = dict(zip(["stoch_a", *blocks, "prev_action", "h"], new))
        np.testing.assert_allclose(agent.logits, logits.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert np.array_equal(action, greedy.numpy()), f"step {t}"
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")
    assert np.isfinite(play_episode(agent, make("mpe:simple_spread_v3", max_cycles=25)[0], spec, seed=0))
    mode = OnnxAgent(paths["mode"], spec=spec)
    mode.reset(B)

    def own(name: str) -> str:  # the graph's wm_conv<i> -> the model's agent-level conv_a<i>
        return name.removeprefix("wm_").replace("conv", "conv_a").replace("ssm", "ssm_a")

    for t in range(50):
        obs, mask, resets, *_ = random_inputs(rng, spec, 0, t)
        before = {k: torch.from_numpy(v) for k, v in mode.state.items()}
        mode.act(obs, mask, resets)
        with torch.no_grad():
            filt = {"deter_a": torch.zeros(B, c.agent_deter), "stoch_a": before["stoch_a"],
                    **{own(n): before[n] for n in blocks}}  # fmt: skip
            new, _ = model.filter_step(filt, torch.from_numpy(obs), before["prev_action"], torch.from_numpy(resets),
                                       torch.arange(B))  # fmt: skip
            logits = model.agent_post(model.obs_encoder(torch.from_numpy(obs))).view(B, c.stoch, c.classes)
        z = torch.nn.functional.one_hot(logits.argmax(-1), c.classes).flatten(1).float()
        assert np.array_equal(mode.state["stoch_a"], z.numpy()), f"step {t}"
        for n in blocks:
            np.testing.assert_allclose(mode.state[n], new[own(n)].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
@pytest.mark.parametrize("preset", ["small", "small-mamba2"])
def test_continuous_agents_export_and_match_pytorch_and_the_models_filter(kind, preset, tmp_path):
    """Continuous actions, 3 agents with their own bounds (one with a padded dim): the graph takes (B, A) float previous
    actions (NaN rows: none) and each row's slot, outputs the Gaussian's mean and the mean clipped to the row's bounds
    (0 on padded dims); onnxruntime = the module in PyTorch over 1000 steps with resets (the same latent noise), GRU
    and Mamba-2 dynamics; the message is the model's `message`, and (GRU) the module's h_t is the model's
    `filter_step` on the same inputs."""
    import gymnasium as gym

    from exports.wm_agent import Mamba2FilterStep, SlottedAgentLevelMamba2Step, SlottedAgentLevelStep
    from wmenv.envs.spec import EnvSpec, action_bounds, own_action_dims
    from wmenv.models.registry import build_model

    low, high = {"a0": -2.0, "a1": 0.0, "a2": -1.0}, {"a0": 2.0, "a1": 1.0, "a2": 3.0}
    act = {a: gym.spaces.Box(low[a], high[a], (2 if a == "a2" else 3,), np.float32) for a in low}
    obs_space = gym.spaces.Box(-1, 1, (4,))
    spec = EnvSpec("tiny-box", tuple(low), {a: obs_space for a in low}, act, gym.spaces.Box(-1, 1, (6,)), False, None)
    A, gru, messaging = 3, preset == "small", kind == "mamba"
    torch.manual_seed(0)
    model = build_model(kind, spec, preset).eval()
    policy = make_policy("gru", model.feature_widths()[0], A, GRUPolicyConfig(hidden=16)).eval()
    path = export_wm_agent(model, policy, tmp_path / "c.onnx", latent="sample")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert shapes["prev_action"] == ["batch", A] and shapes["agent"] == ["batch"]
    assert [o.name for o in graph.graph.output][:2] == ["mean", "action"]
    agent = OnnxAgent(path, providers=["CPUExecutionProvider"], spec=spec)
    agent.reset(B)
    assert agent.continuous and np.isnan(agent.state["prev_action"]).all() and agent.state["prev_action"].shape == (B, A)
    step = {(True, True): WorldModelStep, (True, False): SlottedAgentLevelStep,
            (False, True): Mamba2FilterStep, (False, False): SlottedAgentLevelMamba2Step}[gru, messaging]  # fmt: skip
    ref = step(model, policy, ["h"], "sample").eval()
    names = list(agent.state)  # the filter's state, prev_action, the actor's: also the order of the new states
    filt = [n for n in names if n != "h" and not n.startswith("wm_")]  # deter(_a), stoch(_a), prev_action
    listed = [n for n in names if n.startswith("wm_")] + ["h"]  # the graph's state list
    state = {k: torch.from_numpy(v.copy()) for k, v in agent.state.items()}
    lo, hi = (torch.from_numpy(b) for b in action_bounds(spec))
    own = torch.from_numpy(own_action_dims(spec))
    rng, agent_rng, ref_rng = np.random.default_rng(0), np.random.default_rng(1), np.random.default_rng(1)
    for t in range(1000):
        obs, _, resets, messages, heard, slots = random_inputs(rng, spec, model.message_dim, t)
        mask = own[slots].numpy()
        talk = {"messages": messages, "heard": heard} if messaging else {}
        action = agent.act(obs, mask, resets, **talk, agent=slots, rng=agent_rng)
        noise = torch.from_numpy(ref_rng.random((B, *agent.latent_shape), dtype=np.float32))
        o, m, r, msgs, hrd, sl = map(torch.from_numpy, (obs, mask, resets, messages, heard, slots))
        inputs = (o, m, r, sl, *((msgs, hrd) if messaging else ()), *(state[n] for n in filt))
        lists = (state["h"],) if gru else [state[n] for n in listed]
        with torch.no_grad():
            mean, greedy, *out = ref(*inputs, lists, noise)
            if gru:
                before = {n: state[n] for n in filt[:2]}
                filtered, _ = model.filter_step(before, o, state["prev_action"], r, sl, *((msgs, hrd) if messaging else ()))
        message, new = (out[0], out[1:]) if messaging else (None, out)
        state = dict(zip(names, new))
        np.testing.assert_allclose(agent.logits, mean.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(action, greedy.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"step {t}")
        assert torch.equal(greedy, torch.where(m, torch.minimum(torch.maximum(mean, lo[sl]), hi[sl]), 0.0))
        if gru:
            torch.testing.assert_close(state[filt[0]], filtered[filt[0]], atol=1e-5, rtol=1e-5)
        if messaging:
            torch.testing.assert_close(message, model.message({"stoch": state["stoch"]}, greedy, sl), atol=1e-6, rtol=0)
            np.testing.assert_allclose(agent.outgoing, message.numpy(), atol=1e-5, rtol=0, err_msg=f"message at step {t}")
        for name, value in state.items():
            np.testing.assert_allclose(agent.state[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=f"{name} at step {t}")
    assert np.array_equal(agent.state["prev_action"], action) and (action[~own[slots].numpy()] == 0).all()
    with pytest.raises(ValueError, match="world-model agents act greedily"):
        agent.act(obs, mask, resets, **talk, agent=slots, deterministic=False)
