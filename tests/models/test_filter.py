"""The execution-time filter: each agent's own posterior update from its observation, previous action, reset flag,
own state and received messages, faithful to `observe` and decentralized (pinned with autograd)."""

import gymnasium as gym
import pytest
import torch

from wmenv.envs.spec import EnvSpec
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel
from wmenv.models.rssm import RSSMConfig

B, T, N = 2, 6, 3


def spec_of(n_agents: int = N) -> EnvSpec:
    """N agents, D=3, A=4, masked actions."""
    agents = tuple(f"a{i}" for i in range(n_agents))
    box, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4)
    return EnvSpec("tiny", agents, {a: box for a in agents}, {a: act for a in agents}, gym.spaces.Box(-1, 1, (5,)), True, None)


DYNAMICS = ["gru", "mamba2"]
"""Every test here runs on both sequence models over time (`RSSMConfig.dynamics`)."""


def model_of(dtype: torch.dtype = torch.float32, extra: int = 0, dynamics: str = "gru") -> MAMBAWorldModel:
    """Two communication layers, so that a message could leak through another agent's first-layer output. H = 5 + extra
    for the GRU, 8 + extra for Mamba-2 (two blocks of 4-channel heads)."""
    torch.manual_seed(0)
    mamba2 = {"deter": 8 + extra, "dynamics": dynamics, "d_state": 3, "headdim": 4}
    sizes = {"deter": 5 + extra} if dynamics == "gru" else mamba2
    rssm = RSSMConfig(stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=2, comm_heads=2, dropout=0.0, **sizes)
    return MAMBAWorldModel(spec_of(), MAMBAConfig(rssm=rssm, head_hidden=9, head_layers=1)).to(dtype).eval()


def trajectory(model: MAMBAWorldModel, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real-looking windows: agent 2 of world 0 leaves after row 2, world 1 restarts at row 3."""
    g = torch.Generator().manual_seed(seed)
    spec = model.spec
    alive = torch.ones(B, T, N, dtype=torch.bool)
    alive[0, 3:, 2] = False
    actions = torch.randint(0, spec.n_actions, (B, T, N), generator=g) * alive  # the replay stores 0 where none
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 0] = resets[1, 3] = True
    obs = torch.randn(B, T, N, spec.obs_dim, generator=g, dtype=dtype) * alive[..., None]
    return {"obs": obs, "action": actions, "reset": resets, "alive": alive}


def step_filters(model, traj, seed: int, hears: torch.Tensor | None = None, obs: torch.Tensor | None = None):
    """Run the B·N agents' own filters along ``traj`` as one batch of rows; features (B, T, N, F)."""
    obs = traj["obs"] if obs is None else obs
    agent = torch.arange(N).repeat(B)  # rows b-major, like (B, N) flattened
    state, prev = model.filter_initial(B * N), torch.full((B * N,), -1)
    g, out = torch.Generator().manual_seed(seed), []
    for t in range(T):
        reset = traj["reset"][:, t].repeat_interleave(N)
        alive = traj["alive"][:, t].reshape(-1)
        sent = model.message(state, torch.where(reset, -1, prev)).view(B, N, -1)  # what each agent broadcasts
        messages = sent.repeat_interleave(N, 0)  # (B·N, N, M): every receiver gets its world's messages
        heard = traj["alive"][:, t].repeat_interleave(N, 0)  # absent agents send nothing
        if hears is not None:
            heard = heard & hears[:, t].reshape(B * N, N)
        state, feat = model.filter_step(state, obs[:, t].reshape(B * N, -1), prev, reset, agent, messages, heard, alive, g)
        out.append(feat.view(B, N, -1))
        acted = traj["alive"][:, t + 1].reshape(-1) if t + 1 < T else alive  # present next row = acted now
        prev = torch.where(acted, traj["action"][:, t].reshape(-1), -1)
    return torch.stack(out, 1)


def observed(model, traj, seed: int, hears: torch.Tensor | None = None) -> torch.Tensor:
    prev = model._prev_actions(traj["action"], traj["reset"], traj["alive"])
    g = torch.Generator().manual_seed(seed)
    posts, _ = model.rssm.observe_sequence(traj["obs"], prev, traj["reset"], None, g, traj["alive"], hears)
    return model.features(posts)


@pytest.mark.parametrize("dynamics", DYNAMICS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_stepping_the_filter_along_a_real_trajectory_equals_observe(dtype, tol, dynamics):
    """Each agent's own filter, stepped row by row, gives observe's features on the whole window (samples included)."""
    model = model_of(dtype, dynamics=dynamics)
    traj = trajectory(model, dtype)
    with torch.no_grad():
        ref, got = observed(model, traj, seed=3), step_filters(model, traj, seed=3)
        last = model.observe(traj["obs"], traj["action"], traj["reset"], None, torch.Generator().manual_seed(3), traj["alive"])
    assert ref.dtype == got.dtype == dtype
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)
    torch.testing.assert_close(got[:, -1], model.features(last), atol=tol, rtol=0)
    # neighbour-restricted messages: the filter with each receiver's heard slots = observe with the same matrix
    hears = torch.rand(B, T, N, N, generator=torch.Generator().manual_seed(1)) < 0.5
    with torch.no_grad():
        torch.testing.assert_close(step_filters(model, traj, 4, hears), observed(model, traj, 4, hears), atol=tol, rtol=0)
        assert not torch.allclose(observed(model, traj, 4, hears), observed(model, traj, 4))  # the masks matter


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_an_agents_features_reach_others_only_through_its_messages(dynamics):
    """d f_i,t / d o_j,s = 0 for j != i at s = t (no message yet carries it) and with messages off at every s;
    != 0 for s < t while j is heard."""
    model = model_of(torch.float64, dynamics=dynamics)
    traj = trajectory(model, torch.float64)
    traj["alive"][:] = True
    traj["reset"][1, 3] = False
    obs = traj["obs"].clone().requires_grad_()
    feats = step_filters(model, traj, 0, obs=obs)
    (grad,) = torch.autograd.grad(feats[0, -1, 0].sum(), obs)  # agent 0 of world 0 at the last row
    assert grad[1].abs().max() == 0  # other worlds
    assert grad[0, -1, 1:].abs().max() == 0  # others' current observations
    assert grad[0, :-1, 1:].abs().sum(-1).min() > 0  # others' earlier observations, through their messages
    assert grad[0, :, 0].abs().sum() > 0
    silent = torch.zeros(B, T, N, N, dtype=torch.bool)  # messages switched off: each agent hears only itself
    obs2 = traj["obs"].clone().requires_grad_()
    (grad,) = torch.autograd.grad(step_filters(model, traj, 0, hears=silent, obs=obs2)[0, -1, 0].sum(), obs2)
    assert grad[0, :, 1:].abs().max() == 0 and grad[0, :, 0].abs().sum() > 0
    # ...and then agent 0's features are the same whatever the others see
    garbage = traj["obs"].clone()
    garbage[:, :, 1:] = 1e3
    with torch.no_grad():
        a = step_filters(model, traj, 0, hears=silent)
        b = step_filters(model, traj, 0, hears=silent, obs=garbage)
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0], atol=0, rtol=0)


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_filter_shapes_and_message(dynamics):
    """filter_initial is blank; a message is [z, one-hot action] (zeros for no action); features are [h, z]."""
    model = model_of(dynamics=dynamics)
    c = model.rssm.config
    state = model.filter_initial(4)
    assert tuple(state["deter"].shape) == (4, c.deter) and tuple(state["stoch"].shape) == (4, c.stoch * c.classes)
    blocks = {f"{kind}{i}" for i in range(c.ssm_layers) for kind in ("conv", "ssm")} if dynamics == "mamba2" else set()
    assert set(state) == {"deter", "stoch", *blocks}
    assert {k: v[0].numel() for k, v in state.items()} == model.rssm.state_widths()
    assert not any(v.any() for v in state.values())
    state["stoch"] = torch.rand(4, c.stoch * c.classes)
    msg = model.message(state, torch.tensor([-1, 0, 2, 3]))
    assert msg.shape == (4, model.message_dim) and model.message_dim == c.stoch * c.classes + model.spec.n_actions
    torch.testing.assert_close(msg[:, : c.stoch * c.classes], state["stoch"])
    assert msg[0, c.stoch * c.classes :].sum() == 0 and msg[2, c.stoch * c.classes + 2] == 1
    obs = torch.randn(4, model.spec.obs_dim)
    new, feat = model.filter_step(state, obs, torch.tensor([-1, 0, 1, 2]), torch.tensor([1, 0, 0, 1]).bool(),
                                  torch.tensor([0, 1, 2, 0]))  # fmt: skip
    assert feat.shape == (4, model.rssm.feature_dim)
    torch.testing.assert_close(feat, torch.cat([new["deter"], new["stoch"]], -1))


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_filter_refuses_bad_inputs(dynamics):
    model = model_of(dynamics=dynamics)
    state, obs = model.filter_initial(2), torch.zeros(2, model.spec.obs_dim)
    prev, reset, agent = torch.tensor([-1, -1]), torch.tensor([True, True]), torch.tensor([0, 1])
    M = model.message_dim
    with pytest.raises(ValueError, match=rf"messages: expected shape \(2, 3, {M}\), got \(2, 3, {M + 1}\)"):
        model.filter_step(state, obs, prev, reset, agent, torch.zeros(2, 3, M + 1))
    with pytest.raises(ValueError, match=rf"messages: expected shape \(2, 3, {M}\), got \(2, 2, {M}\)"):
        model.filter_step(state, obs, prev, reset, agent, torch.zeros(2, 2, M))
    with pytest.raises(ValueError, match=r"heard: expected shape \(2, 3\)"):
        model.filter_step(state, obs, prev, reset, agent, torch.zeros(2, 3, M), torch.ones(2, 4, dtype=torch.bool))
    other, H = model_of(extra=2, dynamics=dynamics).filter_initial(2), model.rssm.config.deter
    with pytest.raises(ValueError, match=rf"state: 'deter' has shape \(2, {H + 2}\), expected \(2, {H}\).*another model"):
        model.filter_step(other, obs, prev, reset, agent)
    with pytest.raises(ValueError, match=r"prev_action: expected actions in \[-1, 4\), got \[-1, 4\]"):
        model.filter_step(state, obs, torch.tensor([-1, 4]), reset, agent)
    with pytest.raises(ValueError, match=r"agent: expected slots in \[0, 3\), got \[0, 3\]"):
        model.filter_step(state, obs, prev, reset, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"obs: expected a \(B, 3\) tensor, got \(2, 4\)"):
        model.filter_step(state, torch.zeros(2, 4), prev, reset, agent)


@pytest.mark.parametrize("dynamics", DYNAMICS)
def test_imagine_and_observe_pass_presence_and_hears_to_the_rssm(dynamics):
    """imagine(present=p): absent agents send nothing (= img_step with hears p as senders); observe(hears=H) = the
    last row of observe_sequence with H; filter_step without messages / heard = zero messages, all slots heard."""
    model = model_of(dynamics=dynamics)
    g = torch.Generator().manual_seed(0)
    state = model.initial(2, g)
    actions = torch.randint(0, 4, (2, N), generator=g)
    present = torch.tensor([[True, False, True], [True, True, True]])
    nxt, _ = model.imagine(state, actions, torch.Generator().manual_seed(1), present=present)
    senders = present[:, None, :].expand(-1, N, -1)
    ref = model.rssm.img_step(
        state, torch.nn.functional.one_hot(actions, 4).float(), torch.Generator().manual_seed(1), senders
    )
    torch.testing.assert_close(nxt["deter"], ref["deter"])
    everyone, _ = model.imagine(state, actions, torch.Generator().manual_seed(1))
    assert not torch.allclose(nxt["deter"][0], everyone["deter"][0])  # agent 1 of world 0 is not heard
    torch.testing.assert_close(nxt["deter"][1], everyone["deter"][1])  # world 1: everyone present
    traj = trajectory(model, torch.float32)
    hears = torch.rand(B, T, N, N, generator=g) < 0.5
    last = model.observe(
        traj["obs"], traj["action"], traj["reset"], None, torch.Generator().manual_seed(2), traj["alive"], hears
    )
    torch.testing.assert_close(model.features(last), observed(model, traj, 2, hears)[:, -1])
    state, obs = model.filter_initial(2), torch.randn(2, 3, generator=g)
    state["stoch"] = torch.rand(2, 6, generator=g)
    args = (obs, torch.tensor([1, 2]), torch.tensor([False, False]), torch.tensor([0, 2]))
    a = model.filter_step(dict(state), *args, generator=torch.Generator().manual_seed(3))[1]
    full = model.filter_step(dict(state), *args, torch.zeros(2, N, model.message_dim), torch.ones(2, N, dtype=torch.bool),
                             generator=torch.Generator().manual_seed(3))[1]  # fmt: skip
    torch.testing.assert_close(a, full)
