"""World models with continuous (Box) actions (issue 14, item 2): actions rescaled to [-1, 1] per agent, a Gaussian
info loss, no mask head; the execution-time filter with NaN rows for "no action"; a fit on a real continuous env."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmenv.data.collect import random_continuous, random_replay
from wmenv.dream import DreamVecEnv
from wmenv.envs.spec import EnvSpec, action_bounds
from wmenv.fit import FitConfig, fit
from wmenv.latent import AgentFilters
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel
from wmenv.models.registry import build_model
from wmenv.models.rssm import RSSMConfig

B, T, N, A = 2, 6, 3, 3
LOW, HIGH = {"a0": -2.0, "a1": 0.0, "a2": -1.0}, {"a0": 2.0, "a1": 1.0, "a2": 3.0}


def spec_of() -> EnvSpec:
    """N=3, D=3, continuous A=3 with other bounds per agent; agent a2 has 2 dims (its third is padding)."""
    agents = tuple(LOW)
    box = gym.spaces.Box(-1, 1, (3,))
    act = {a: gym.spaces.Box(LOW[a], HIGH[a], (2 if a == "a2" else 3,), np.float32) for a in agents}
    return EnvSpec("tiny-box", agents, {a: box for a in agents}, act, gym.spaces.Box(-1, 1, (5,)), False, None)


def model_of(dtype=torch.float64) -> MAMBAWorldModel:
    torch.manual_seed(0)
    rssm = RSSMConfig(deter=5, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=2, comm_heads=2, dropout=0.0)
    return MAMBAWorldModel(spec_of(), MAMBAConfig(rssm=rssm, head_hidden=9, head_layers=1)).to(dtype).eval()


def trajectory(spec, dtype, seed=0) -> dict[str, torch.Tensor]:
    """Windows with in-bounds actions: agent 2 of world 0 leaves after row 2, world 1 restarts at row 3."""
    g = torch.Generator().manual_seed(seed)
    alive = torch.ones(B, T, N, dtype=torch.bool)
    alive[0, 3:, 2] = False
    rng = np.random.default_rng(seed)
    actions = torch.from_numpy(np.stack([random_continuous(spec, T, rng) for _ in range(B)])).to(dtype)
    actions = actions * alive[..., None]  # the replay stores zeros where an agent is absent
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 0] = resets[1, 3] = True
    obs = torch.randn(B, T, N, spec.obs_dim, generator=g, dtype=dtype) * alive[..., None]
    ended = torch.zeros(B, T, N, dtype=torch.bool)
    zeros = torch.zeros(B, T, N, dtype=dtype)
    return {"obs": obs, "action": actions, "reset": resets, "alive": alive, "reward": zeros, "terminated": ended,
            "truncated": ended, "action_mask": torch.ones(B, T, N, A, dtype=torch.bool)}  # fmt: skip


def test_actions_are_rescaled_per_agent_to_the_unit_box_with_padding_zero():
    model = model_of()
    low, high = (torch.from_numpy(b).double() for b in action_bounds(model.spec))
    assert model.mask_head is None, "continuous actions have no availability head"
    torch.testing.assert_close(model._encode_actions(low), -torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0]]).double())
    torch.testing.assert_close(model._encode_actions(high), torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0]]).double())
    mid = (low + high) / 2
    assert model._encode_actions(mid).abs().max() < 1e-12
    x = torch.randn(4, N, A, dtype=torch.float64)
    agent = torch.tensor([0, 1, 2])
    rows = model._encode_actions(x[0], agent)  # one agent per row, as the filter calls it
    torch.testing.assert_close(rows, model._encode_actions(x[:1])[0])
    nan = torch.full((N, A), float("nan"), dtype=torch.float64)
    assert (model._encode_or_none(nan, agent) == 0).all(), "a NaN row is no action: zeros"


def test_stepping_agent_filters_with_continuous_actions_equals_observe():
    """Each agent's own filter (NaN rows before the first action) gives observe's features on the whole window."""
    model = model_of()
    traj = trajectory(model.spec, torch.float64)
    prev = model._prev_actions(traj["action"], traj["reset"], traj["alive"])
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        posts, _ = model.rssm.observe_sequence(traj["obs"], prev, traj["reset"], None, g, traj["alive"])
        ref = model.features(posts)
        filters = AgentFilters(model, B, seed=3)
        got = []
        for t in range(T):
            got.append(filters.step(traj["obs"][:, t], traj["reset"][:, t], traj["alive"][:, t]))
            acted = traj["alive"][:, t + 1] if t + 1 < T else traj["alive"][:, t]  # present next row = acted now
            filters.record(traj["action"][:, t].float(), acted)
    torch.testing.assert_close(torch.stack(got, 1), ref, atol=1e-6, rtol=0)  # actions pass through float32 in record


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_padded_dims_and_absent_agents_actions_do_not_change_the_loss(kind):
    spec = spec_of()
    torch.manual_seed(0)
    model = build_model(kind, spec, "small")
    batch = trajectory(spec, torch.float32)
    batch["state"] = torch.randn(B, T, spec.state_dim)
    torch.manual_seed(1)
    ref, stats = model.loss(batch)
    assert np.isfinite(stats["info"]) and stats["info"] > 0
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["action"][:, :, 2, 2] = 7.0  # a2's padded dim
    torch.manual_seed(1)
    assert torch.equal(model.loss(noisy)[0], ref)
    noisy["action"][:, 1, 0, 0] += 0.5  # a real action: the model must see it
    torch.manual_seed(1)
    assert not torch.equal(model.loss(noisy)[0], ref)


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_fit_and_imagine_on_a_real_continuous_env(kind):
    """Pendulum (one agent, torque in [-2, 2]): the loss falls, and imagination takes float actions."""
    replay, spec = random_replay("gym:Pendulum-v1", 800, num_envs=2, seed=0)
    assert replay.sample(4, 5)["action"].shape == (4, 5, 1, 1)
    torch.manual_seed(0)
    model = build_model(kind, spec, "small")
    history = fit(model, replay, FitConfig(steps=60, batch_size=8, seq_len=10, seed=0, compile="off"))
    assert np.mean(history["loss"][-10:]) < 0.8 * np.mean(history["loss"][:5])
    assert np.isfinite(history["info"]).all()
    with torch.no_grad():
        state = model.initial(4, torch.Generator().manual_seed(0))
        nxt, pred = model.imagine(state, torch.full((4, 1, 1), 1.5), torch.Generator().manual_seed(1), decode=True)
    assert pred.reward.shape == (4, 1) and pred.obs.shape == (4, 1, spec.obs_dim) and pred.action_mask is None
    dream = DreamVecEnv(model, 4, seed=0)
    dream.reset()
    assert torch.isfinite(dream.step(torch.full((4, 1, 1), 3.0)).reward).all()  # 3 clipped to the bound 2


def test_bad_continuous_filter_inputs_are_named():
    model = model_of()
    state, obs = model.filter_initial(2), torch.zeros(2, 3, dtype=torch.float64)
    reset, agent = torch.zeros(2, dtype=torch.bool), torch.tensor([0, 2])
    for prev, match in [
        (torch.zeros(2, dtype=torch.long), r"prev_action: expected shape \(2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.long), "prev_action: expected float continuous actions"),
        (torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), r"prev_action: rows \[0\] are neither finite nor"),
        (torch.tensor([[0.0, float("inf"), 0.0], [0.0, 0.0, 0.0]]), r"prev_action: rows \[0\] are neither finite nor"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.filter_step(state, obs, prev, reset, agent)
    with pytest.raises(ValueError, match="agent: continuous actions are rescaled per agent"):
        model.message(state, torch.zeros(2, 3))
