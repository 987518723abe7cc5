"""Multi-agent RSSM: straight-through categorical samples, MLP layout, prior / posterior steps and sequence filtering."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmenv.models import rssm as rssm_module
from wmenv.models.rssm import MultiAgentRSSM, RSSMConfig, mlp, onehot_from_uniform, sample_onehot

# D=3 observations, A=4 actions, N=2 agents; H=5, S×K=2×3, hidden 8, E=4: every size distinct
CONFIG = RSSMConfig(deter=5, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=1, comm_heads=2, dropout=0.0)


def tiny_rssm(seed: int = 0, n_agents: int = 2) -> MultiAgentRSSM:
    torch.manual_seed(seed)
    return MultiAgentRSSM(3, 4, n_agents, CONFIG).eval()


def test_config_defaults_are_the_papers_smac_sizes():
    """RSSMConfig(): GRU 256, 32×32 categoricals, MLPs 256, a 3-layer 4-head transformer of width 256, dropout 0.1."""
    c = RSSMConfig()
    assert (c.deter, c.stoch, c.classes, c.hidden, c.comm_width, c.comm_layers, c.comm_heads, c.dropout) == (
        256, 32, 32, 256, 256, 3, 4, 0.1,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["deter", "stoch", "classes", "hidden", "comm_width", "comm_layers", "comm_heads"])
def test_config_rejects_non_positive_sizes(name):
    """Each size must be an integer >= 1; the message names the field."""
    with pytest.raises(ValueError, match=rf"^RSSMConfig.{name}: expected an integer >= 1, got 0$"):
        RSSMConfig(**{name: 0})


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_config_rejects_dropout_outside_0_1(dropout):
    """dropout must lie in [0, 1)."""
    with pytest.raises(ValueError, match=rf"^RSSMConfig.dropout: expected a number in \[0, 1\), got {dropout}$"):
        RSSMConfig(dropout=dropout)
    assert RSSMConfig(dropout=0.0).dropout == 0.0 and RSSMConfig(dropout=0.99).dropout == 0.99


def test_mlp_layout():
    """mlp(in, hidden, out, layers): layers × (Linear, LayerNorm, ELU), then a Linear; one hidden layer by default."""
    kinds = lambda m: [type(x).__name__ for x in m]  # noqa: E731
    linears = lambda m: [(x.in_features, x.out_features) for x in m if isinstance(x, nn.Linear)]  # noqa: E731
    two = mlp(3, 5, 2, layers=2)
    assert kinds(two) == ["Linear", "LayerNorm", "ELU", "Linear", "LayerNorm", "ELU", "Linear"]
    assert linears(two) == [(3, 5), (5, 5), (5, 2)] and two[1].normalized_shape == (5,)
    assert linears(mlp(3, 5, 2)) == [(3, 5), (5, 2)]
    assert linears(mlp(3, 5, 2, layers=0)) == [(3, 2)]


def test_sample_onehot_is_one_hot_per_categorical_with_straight_through_gradients():
    """Forward: one one-hot per categorical, flattened (..., S·K); backward: the gradient of the softmax probabilities."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 3, 5, generator=g, requires_grad=True)  # (..., S=3, K=5)
    sample = sample_onehot(logits, torch.Generator().manual_seed(1))
    assert sample.shape == (4, 2, 15)
    groups = sample.detach().view(4, 2, 3, 5)
    # onehot + p - sg(p) is one-hot up to rounding
    torch.testing.assert_close(groups, F.one_hot(groups.argmax(-1), 5).float())
    w = torch.randn(4, 2, 15, generator=g)
    (grad,) = torch.autograd.grad((sample * w).sum(), logits)
    (expected,) = torch.autograd.grad((torch.softmax(logits, -1).flatten(-2) * w).sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_onehot_from_uniform_inverts_the_cdf():
    """Class k is drawn where CDF(k-1) <= u < CDF(k); u just under 1 whose CDF rounds below it takes the last class."""
    logits = torch.tensor([0.2, 0.3, 0.5]).log().expand(5, 1, 3)  # (5 draws, S=1, K=3): CDF 0.2, 0.5, 1.0
    u = torch.tensor([0.0, 0.19, 0.21, 0.6, 1 - 1e-7])[:, None]
    picked = onehot_from_uniform(logits, u).argmax(-1)
    assert picked.tolist() == [0, 0, 1, 2, 2]
    rounding = onehot_from_uniform(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[1.5]]))  # past every CDF value
    assert rounding.tolist() == [[0.0, 1.0]]  # (S·K) flattened


def test_sample_onehot_draws_from_the_softmax():
    """Class frequencies over 20000 seeded draws match softmax(logits) (within 0.015; std ≈ 0.0035)."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, -1.0, 0.5]]).log_softmax(-1).expand(20000, 2, 3)
    freq = sample_onehot(logits, torch.Generator().manual_seed(0)).view(20000, 2, 3).mean(0)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    double = sample_onehot(logits[:3].double())
    assert double.dtype == torch.float64


def test_sample_onehot_uses_only_the_given_generator():
    """Same seed, same samples, whatever the global RNG did in between."""
    logits = torch.zeros(50, 4, 6)
    torch.manual_seed(0)
    a = sample_onehot(logits, torch.Generator().manual_seed(9))
    torch.manual_seed(1)
    b = sample_onehot(logits, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_modules_have_the_documented_sizes():
    """Comm on [z, a] (S·K + A), a GRU cell E -> H, prior H -> S·K, encoder D -> hidden (ELU), posterior H + hidden -> S·K."""
    rssm = tiny_rssm()
    assert rssm.feature_dim == 5 + 2 * 3 and (rssm.n_actions, rssm.n_agents) == (4, 2)
    assert rssm.comm.embed.in_features == 6 + 4 and rssm.comm.embed.out_features == 4
    assert len(rssm.comm.encoder.layers) == 1 and rssm.comm.encoder.layers[0].self_attn.num_heads == 2
    assert [m.p for m in rssm.comm.modules() if isinstance(m, nn.Dropout)] == [0.0] * 3  # the config's, not CommBlock's 0.1
    assert (rssm.cell.input_size, rssm.cell.hidden_size) == (4, 5)
    first_last = lambda m: (m[0].in_features, m[-1].out_features)  # noqa: E731
    assert first_last(rssm.prior_net) == (5, 6) and first_last(rssm.post_net) == (5 + 8, 6)
    assert rssm.obs_encoder[0][0].in_features == 3
    big = rssm.obs_encoder(torch.randn(1000, 3) * 100)  # (1000, 8), ends with an ELU: > -1 everywhere
    assert big.shape == (1000, 8) and big.min() > -1 and (big < -0.5).any()


def test_blank_state_follows_the_parameters_dtype_and_device():
    """blank(B): zeros of (B, N, H), (B, N, S·K), (B, N, S, K) with the model's dtype and device."""
    state = tiny_rssm().double().blank(3)
    assert {k: tuple(v.shape) for k, v in state.items()} == {"deter": (3, 2, 5), "stoch": (3, 2, 6), "logits": (3, 2, 2, 3)}
    assert all(v.dtype == torch.float64 and not v.any() for v in state.values())
    meta = tiny_rssm().to("meta").blank(1)
    assert all(v.device.type == "meta" for v in meta.values())


def test_img_step_and_post_step_wire_comm_gru_and_nets():
    """Prior: h' = GRU(comm([z, a]), h), logits = prior(h'); posterior: logits = post([h', embed]), same h'."""
    rssm = tiny_rssm()
    g = torch.Generator().manual_seed(0)
    state = {"deter": torch.randn(3, 2, 5, generator=g), "stoch": torch.randn(3, 2, 6, generator=g)}
    action = F.one_hot(torch.tensor([[0, 3], [1, 1], [2, 0]]), 4).float()
    prior = rssm.img_step(state, action, torch.Generator().manual_seed(4))
    e = rssm.comm(torch.cat([state["stoch"], action], -1))  # (3, 2, 4)
    deter = rssm.cell(e.reshape(6, 4), state["deter"].reshape(6, 5)).view(3, 2, 5)
    logits = rssm.prior_net(deter).view(3, 2, 2, 3)
    torch.testing.assert_close(prior["deter"], deter)
    torch.testing.assert_close(prior["logits"], logits)
    torch.testing.assert_close(prior["stoch"], sample_onehot(logits, torch.Generator().manual_seed(4)))
    embed = torch.randn(3, 2, 8, generator=g)
    post = rssm.post_step(prior, embed, torch.Generator().manual_seed(5))
    post_logits = rssm.post_net(torch.cat([deter, embed], -1)).view(3, 2, 2, 3)
    assert post["deter"] is prior["deter"]
    torch.testing.assert_close(post["logits"], post_logits)
    torch.testing.assert_close(post["stoch"], sample_onehot(post_logits, torch.Generator().manual_seed(5)))


def test_observe_sequence_equals_a_step_loop_with_resets_and_absent_agents():
    """observe_sequence = a loop of img_step (no prior sample) / post_step; resets restart from blank; absent agents'
    obs are unseen and they send no message."""
    rssm = tiny_rssm()
    g = torch.Generator().manual_seed(1)
    obs, prev = torch.randn(3, 4, 2, 3, generator=g), F.one_hot(torch.randint(0, 4, (3, 4, 2), generator=g), 4).float()
    resets = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    alive = torch.rand(3, 4, 2, generator=g) < 0.7
    start = {"deter": torch.randn(3, 2, 5, generator=g), "stoch": torch.randn(3, 2, 6, generator=g)}
    start["logits"] = torch.randn(3, 2, 2, 3, generator=g)
    posts, priors = rssm.observe_sequence(obs, prev, resets, start, torch.Generator().manual_seed(2), alive)
    # by hand: blank the reset windows' state, one prior step, one posterior step on the masked embedding
    steps, blank, state = torch.Generator().manual_seed(2), rssm.blank(3), start
    embed = rssm.obs_encoder(obs) * alive[..., None]
    for t in range(4):
        state = {k: torch.stack([blank[k][b] if resets[b, t] else v[b] for b in range(3)]) for k, v in state.items()}
        senders = alive[:, t, None, :].expand(-1, 2, -1)  # (B, receiver, sender)
        prior = rssm.img_step(state, prev[:, t], steps, senders, sample=False)
        assert set(prior) == {"deter", "logits"}
        state = rssm.post_step(prior, embed[:, t], steps)
        for k in ("deter", "stoch", "logits"):
            torch.testing.assert_close(posts[k][:, t], state[k])
        for k in ("deter", "logits"):
            torch.testing.assert_close(priors[k][:, t], prior[k])
    assert posts["logits"].shape == (3, 4, 2, 2, 3) and set(priors) == {"deter", "logits"}
    assert not alive.all(1).all()  # some rows do take the masked path


def test_unheard_messages_cannot_reach_a_receiver():
    """img_step with hears: receiver i's h' ignores senders it does not hear; all-True hears equals hears=None."""
    rssm = tiny_rssm(n_agents=3)
    g = torch.Generator().manual_seed(0)
    state = {"deter": torch.randn(2, 3, 5, generator=g), "stoch": torch.randn(2, 3, 6, generator=g)}
    action = F.one_hot(torch.randint(0, 4, (2, 3), generator=g), 4).float()
    full = rssm.img_step(state, action, sample=False)
    torch.testing.assert_close(rssm.img_step(state, action, None, torch.ones(2, 3, 3, dtype=torch.bool), False)["deter"],
                               full["deter"])  # fmt: skip
    hears = torch.ones(2, 3, 3, dtype=torch.bool)
    hears[:, 0, 2] = False  # agent 0 does not hear agent 2
    hears[:, :, 1] = False  # nobody hears agent 1 (but agent 1 hears itself)
    base = rssm.img_step(state, action, None, hears, False)["deter"]
    moved = {k: v.clone() for k, v in state.items()}
    moved["stoch"][:, 2] += 5.0
    moved["stoch"][:, 1] -= 3.0
    out = rssm.img_step(moved, action, None, hears, False)["deter"]
    torch.testing.assert_close(out[:, 0], base[:, 0])  # hears neither 1 nor 2
    assert not torch.allclose(out[:, 2], base[:, 2]) and not torch.allclose(out[:, 1], base[:, 1])  # their own


def test_observe_sequence_takes_a_hears_matrix_without_alive_and_filter_step_returns_the_posterior_logits():
    """hears alone (alive=None) restricts messages as in img_step; filter_step's logits are post_net([h', embed])."""
    rssm = tiny_rssm(n_agents=3)
    g = torch.Generator().manual_seed(0)
    obs, prev = torch.randn(2, 3, 3, 3, generator=g), F.one_hot(torch.randint(0, 4, (2, 3, 3), generator=g), 4).float()
    resets = torch.zeros(2, 3, dtype=torch.bool)
    hears = torch.rand(2, 3, 3, 3, generator=g) < 0.4
    posts, _ = rssm.observe_sequence(obs, prev, resets, None, torch.Generator().manual_seed(1), hears=hears)
    steps, state, embed = torch.Generator().manual_seed(1), rssm.blank(2), rssm.obs_encoder(obs)
    for t in range(3):
        state = rssm.post_step(rssm.img_step(state, prev[:, t], steps, hears[:, t], sample=False), embed[:, t], steps)
        torch.testing.assert_close(posts["deter"][:, t], state["deter"])
    deter, e = torch.randn(4, 5, generator=g), torch.randn(4, 8, generator=g)
    messages, heard, receiver = (
        torch.randn(4, 3, 10, generator=g),
        torch.ones(4, 3, dtype=torch.bool),
        torch.tensor([0, 1, 2, 0]),
    )
    out = rssm.filter_step({"deter": deter}, messages, heard, receiver, e, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out["logits"], rssm.post_net(torch.cat([out["deter"], e], -1)).view(4, 2, 3))


def test_observe_sequence_starts_blank_and_ignores_absent_agents_observations():
    """state=None is the blank state; an absent agent's observation changes nothing, a present one's changes its posterior."""
    rssm = tiny_rssm()
    g = torch.Generator().manual_seed(3)
    obs, prev = torch.randn(2, 3, 2, 3, generator=g), torch.zeros(2, 3, 2, 4)
    resets = torch.zeros(2, 3, dtype=torch.bool)
    alive = torch.ones(2, 3, 2, dtype=torch.bool)
    alive[0, 1, 1] = False
    run = lambda o, s=None: rssm.observe_sequence(o, prev, resets, s, torch.Generator().manual_seed(0), alive)  # noqa: E731
    posts, priors = run(obs)
    blank_posts, _ = run(obs, rssm.blank(2))
    assert all(torch.equal(posts[k], blank_posts[k]) for k in posts)
    garbage = obs.clone()
    garbage[0, 1, 1] = 1e3
    assert torch.equal(run(garbage)[0]["logits"], posts["logits"])
    garbage[0, 1, 0] = 1e3
    changed = run(garbage)[0]["logits"]
    assert not torch.allclose(changed[0, 1, 0], posts["logits"][0, 1, 0])
    # the prior of a row does not look at that row's observation
    torch.testing.assert_close(run(garbage)[1]["logits"][:, :2], priors["logits"][:, :2])
    all_alive = rssm.observe_sequence(garbage, prev, resets, None, torch.Generator().manual_seed(0))[0]
    assert not torch.allclose(all_alive["logits"][0, 1, 1], posts["logits"][0, 1, 1])  # alive=None: everyone is seen


def test_compiled_rows_give_the_plain_rows_results_and_gradients(monkeypatch):
    """observe_sequence(compile=True) runs every row through the compiled row function, with the same posteriors,
    priors and gradients as the plain rows (same seed, dropout on)."""
    torch.manual_seed(0)
    config = RSSMConfig(deter=5, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=1, comm_heads=2, dropout=0.5)
    rssm = MultiAgentRSSM(3, 4, 2, config).train()
    calls = []
    real = rssm_module._compiled_filter_row
    monkeypatch.setattr(rssm_module, "_compiled_filter_row", lambda *a: calls.append(a[-1] is None) or real(*a))
    g = torch.Generator().manual_seed(1)
    obs, prev = torch.randn(3, 4, 2, 3, generator=g), F.one_hot(torch.randint(0, 4, (3, 4, 2), generator=g), 4).float()
    resets = torch.tensor([[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    alive = torch.ones(3, 4, 2, dtype=torch.bool)
    outputs, grads = [], []
    for compile in (False, True):
        torch.manual_seed(5)  # dropout's stream
        posts, priors = rssm.observe_sequence(obs, prev, resets, None, torch.Generator().manual_seed(2), alive,
                                              compile=compile)  # fmt: skip
        loss = sum((v * torch.linspace(-1, 1, v.numel()).view(v.shape)).sum() for v in [*posts.values(), *priors.values()])
        grads.append(torch.autograd.grad(loss, list(rssm.parameters())))
        outputs.append((posts, priors))
    assert calls == [True] * 4  # every row, everyone heard
    for plain, fused in zip(outputs[0], outputs[1], strict=True):
        for k in plain:
            torch.testing.assert_close(fused[k], plain[k])
    for plain, fused in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain)
