"""ValueNorm: debiased running moments, exact inverse, identity when off; travels in the critic's state_dict."""

import numpy as np
import pytest
import torch

from agents.critic import AttentionCritic, CentralCritic, CriticConfig, ValueNorm, agent_groups


def test_value_norm_tracks_moments_and_inverts():
    """ValueNorm converges to the targets' mean and std, denormalize inverts normalize, and one update is already debiased."""
    vn = ValueNorm(beta=0.99)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        vn.update(torch.randn(256, generator=g, dtype=torch.float64) * 3.0 - 20.0)
    mean, var = vn.mean_var()
    assert abs(float(mean) + 20.0) < 0.1 and abs(float(var.sqrt()) - 3.0) < 0.1
    x = torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(vn.denormalize(vn.normalize(x)), x, rtol=1e-12, atol=1e-12)
    # debiasing: one update of a constant batch already gives its mean (not beta-shrunk toward 0)
    fresh = ValueNorm(beta=0.99999)
    fresh.update(torch.full((10,), 5.0))
    assert abs(float(fresh.mean_var()[0]) - 5.0) < 1e-6
    with pytest.raises(ValueError, match="x: expected at least one value target"):
        fresh.update(torch.zeros(0))


def test_value_norm_off_is_identity_and_state_is_saved():
    """A disabled ValueNorm is the identity; an enabled one travels in the critic's state_dict."""
    critic = CentralCritic(4, 2, CriticConfig(value_norm=False))
    x = torch.randn(7)
    critic.value_norm.update(x * 100)
    assert torch.equal(critic.value_norm.normalize(x), x) and torch.equal(critic.value_norm.denormalize(x), x)
    on = CentralCritic(4, 2)
    on.value_norm.update(torch.full((3,), 2.0))
    restored = CentralCritic(4, 2)
    restored.load_state_dict(on.state_dict())
    torch.testing.assert_close(restored.value_norm.mean_var(), on.value_norm.mean_var())
    assert "value_norm.running_mean" in on.state_dict()


def test_value_norm_update_math_by_hand():
    """Running moments with β = 0.9, debiasing, the 1e-2 variance floor and the empty-state epsilon, by hand."""
    vn = ValueNorm(beta=0.9)
    assert all(b.dtype == torch.float64 for b in vn.buffers())  # moments accumulate in float64
    # before any update: debiasing term floored at 1e-5, mean 0, variance floored at 1e-2 -> std 0.1
    torch.testing.assert_close(vn.normalize(torch.tensor([1.0, -2.0])), torch.tensor([10.0, -20.0]))
    vn.update(torch.tensor([1.0, 3.0]))
    # running mean 0.1 * 2 = 0.2, mean square 0.1 * 5 = 0.5, debiasing 0.1 -> mean 2, var 5 - 4 = 1
    torch.testing.assert_close(vn.running_mean, torch.tensor(0.2, dtype=torch.float64))
    torch.testing.assert_close(vn.running_mean_sq, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(vn.mean_var(), (torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)))
    vn.update(torch.tensor([4.0]))
    # 0.9 * 0.2 + 0.1 * 4 = 0.58; 0.9 * 0.5 + 0.1 * 16 = 2.05; 0.9 * 0.1 + 0.1 = 0.19
    # mean 0.58 / 0.19 = 3.0526316, E[x²] = 2.05 / 0.19 = 10.789474, var = 10.789474 - 9.3185596 = 1.4709141
    mean, var = vn.mean_var()
    torch.testing.assert_close(
        (mean, var), (torch.tensor(0.58 / 0.19).double(), torch.tensor(1.4709141).double()), atol=1e-6, rtol=0
    )
    x = torch.tensor([3.0526316 + 1.2128125, 0.0])  # std = sqrt(1.4709141) = 1.2128125
    out = vn.normalize(x)
    assert out.dtype == torch.float32 and vn.denormalize(out).dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([1.0, -3.0526316 / 1.2128125]))
    torch.testing.assert_close(vn.denormalize(torch.tensor([1.0, 0.0])), torch.tensor([3.0526316 + 1.2128125, 3.0526316]))
    # a constant target has variance 0: floored at 1e-2 (std 0.1)
    flat = ValueNorm(beta=0.9)
    flat.update(torch.full((4,), 7.0))
    torch.testing.assert_close(flat.mean_var()[1], torch.tensor(1e-2, dtype=torch.float64))
    # the default β is MAPPO's 0.99999: one update moves the raw running mean by 1e-5 of the batch mean
    default = ValueNorm()
    default.update(torch.tensor([2.0]))
    torch.testing.assert_close(default.running_mean, torch.tensor(2e-5, dtype=torch.float64))


def test_critic_config_reaches_the_value_norm():
    """CriticConfig.value_norm_beta and value_norm configure the critic's ValueNorm."""
    critic = CentralCritic(4, 2, CriticConfig(value_norm_beta=0.9))
    assert critic.value_norm.enabled
    critic.value_norm.update(torch.tensor([10.0]))
    torch.testing.assert_close(critic.value_norm.running_mean, torch.tensor(1.0, dtype=torch.float64))  # 0.1 * 10
    assert not CentralCritic(4, 2, CriticConfig(value_norm=False)).value_norm.enabled


def _rollout(critic, state, agent, resets):
    """The step loop over (B, T, S) from the initial state."""
    h, out = critic.initial_state(state.shape[0]), []
    for t in range(state.shape[1]):
        v, h = critic.step(state[:, t], agent, h, resets[:, t])
        out.append(v)
    return torch.stack(out, 1)


@pytest.mark.parametrize("recurrent", [True, False])
def test_critic_sequence_equals_step_loop_and_recurrence(recurrent):
    """forward_sequence equals the step loop; a recurrent critic remembers the past, a feed-forward one does not."""
    torch.manual_seed(0)
    cfg = CriticConfig(hidden=8, recurrent=recurrent, gru_layers=2)
    critic = CentralCritic(4, 3, cfg)
    state, agent = torch.randn(5, 6, 4), torch.tensor([0, 1, 2, 0, 1])
    resets = torch.zeros(5, 6, dtype=torch.bool)
    resets[:, 0] = resets[2, 3] = True
    with torch.no_grad():
        seq = critic.forward_sequence(state, agent, resets, critic.initial_state(5))
        torch.testing.assert_close(seq, _rollout(critic, state, agent, resets), rtol=1e-5, atol=1e-6)
        assert seq.shape == (5, 6)
        other = state.clone()
        other[:, 1] += 1.0  # change step 1 only
        later = critic.forward_sequence(other, agent, resets, critic.initial_state(5))[:, 2]
    if recurrent:
        assert critic.initial_state(5)["h"].shape == (5, 2, 8) and critic.state_shapes() == {"h": (2, 8)}
        assert (later - seq[:, 2]).abs().min() > 1e-6  # step 2 depends on step 1
    else:
        assert critic.initial_state(5) == {} and critic.state_shapes() == {}
        torch.testing.assert_close(later, seq[:, 2])


def test_critic_inputs_agent_id_and_feature_norm():
    """agent_id makes values differ per agent, without it they do not; feature_norm standardizes the state row."""
    torch.manual_seed(0)
    state = torch.randn(3, 4)
    with torch.no_grad():
        with_id = CentralCritic(4, 3, CriticConfig(recurrent=False))
        v = [with_id.step(state, torch.full((3,), n), {}, torch.zeros(3, dtype=torch.bool))[0] for n in range(3)]
        assert (v[0] - v[1]).abs().min() > 1e-6 and (v[1] - v[2]).abs().min() > 1e-6
        no_id = CentralCritic(4, 3, CriticConfig(recurrent=False, agent_id=False))
        v = [no_id.step(state, torch.full((3,), n), {}, torch.zeros(3, dtype=torch.bool))[0] for n in range(3)]
        torch.testing.assert_close(v[0], v[2])
        # LayerNorm on the raw input: scaling and shifting a state row leaves its value unchanged
        moved = no_id.step(3.0 * state + 1.0, torch.zeros(3, dtype=torch.long), {}, torch.zeros(3, dtype=torch.bool))[0]
        torch.testing.assert_close(moved, v[0], rtol=1e-4, atol=1e-5)
        raw = CentralCritic(4, 3, CriticConfig(recurrent=False, agent_id=False, feature_norm=False))
        a = raw.step(state, torch.zeros(3, dtype=torch.long), {}, torch.zeros(3, dtype=torch.bool))[0]
        b = raw.step(3.0 * state + 1.0, torch.zeros(3, dtype=torch.long), {}, torch.zeros(3, dtype=torch.bool))[0]
        assert (a - b).abs().max() > 1e-3
    # the value head starts orthogonal with gain 1 (a unit row) and zero bias, as in MAPPO
    torch.testing.assert_close(with_id.head.weight.norm(), torch.tensor(1.0))
    assert (with_id.head.bias == 0).all()


def test_critic_bad_input_names_the_argument():
    """Sizes, config, and step / sequence shapes: anchored messages naming the argument."""
    for name, args in (("state_dim", (0, 2)), ("n_agents", (4, 0))):
        with pytest.raises(ValueError, match=rf"^{name}: expected an integer >= 1, got 0$"):
            CentralCritic(*args)
    with pytest.raises(TypeError, match=r"^config: expected a CriticConfig, got dict$"):
        CentralCritic(4, 2, {})
    critic = CentralCritic(4, 2)
    h, no = critic.initial_state(3), torch.zeros(3, dtype=torch.bool)
    agent = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^state: expected shape \(B, 4\), got \(3, 5\)$"):
        critic.step(torch.zeros(3, 5), agent, h, no)
    with pytest.raises(ValueError, match=r"^state: expected shape \(B, 4\), got \(3, 1, 4\)$"):
        critic.step(torch.zeros(3, 1, 4), agent, h, no)
    with pytest.raises(ValueError, match=r"^agent: expected shape \(3,\), got \(2,\)$"):
        critic.step(torch.zeros(3, 4), agent[:2], h, no)
    with pytest.raises(ValueError, match=r"^resets: expected shape \(3,\), got \(3, 1\)$"):
        critic.step(torch.zeros(3, 4), agent, h, no[:, None])
    with pytest.raises(ValueError, match=r"^state: expected shape \(B, T, 4\), got \(3, 4\)$"):
        critic.forward_sequence(torch.zeros(3, 4), agent, no, h)
    with pytest.raises(ValueError, match=r"^resets: expected shape \(3, 2\), got \(3,\)$"):
        critic.forward_sequence(torch.zeros(3, 2, 4), agent, no, h)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(hidden=0), r"^CriticConfig\.hidden: expected an integer >= 1, got 0$"),
        (dict(mlp_layers=0), r"^CriticConfig\.mlp_layers: expected an integer >= 1, got 0$"),
        (dict(gru_layers=0), r"^CriticConfig\.gru_layers: expected an integer >= 1, got 0$"),
        (dict(activation="gelu"), r"^CriticConfig\.activation: expected 'relu' or 'tanh', got 'gelu'$"),
        (dict(value_norm_beta=0.0), r"^CriticConfig\.value_norm_beta: expected a value in \(0, 1\), got 0\.0$"),
        (dict(value_norm_beta=1.0), r"^CriticConfig\.value_norm_beta: expected a value in \(0, 1\), got 1\.0$"),
        (dict(value_norm_beta=1.5), r"^CriticConfig\.value_norm_beta: expected a value in \(0, 1\), got 1\.5$"),
    ],
)
def test_critic_config_bad_values(kwargs, match):
    """Each CriticConfig check names its field."""
    with pytest.raises(ValueError, match=match):
        CriticConfig(**kwargs)


def test_critic_config_accepts_tanh():
    """Both documented activations build a working critic."""
    critic = CentralCritic(4, 2, CriticConfig(activation="tanh", recurrent=False))
    assert any(isinstance(m, torch.nn.Tanh) for m in critic.modules())


# --- AttentionCritic --------------------------------------------------------------------------------


def _attention_reference(critic, state, agent):
    """Row by row: embed each agent's features, add its position, attend across the N agents, take the valued agent's row."""
    N = critic.n_agents
    out = torch.empty(state.shape[:-1])
    for idx in np.ndindex(*state.shape[:-1]):
        x = critic.encoder(state[idx].view(N, -1)) + critic.position.weight  # (N, H)
        y = critic.attend(x[None])[0]  # one sample: attention runs over the agents only
        out[idx] = critic.head(critic.out(y[agent[idx[0]]])).squeeze(-1)
    return out


@pytest.mark.parametrize("recurrent", [False, True])
def test_attention_critic_values_the_agents_row(recurrent):
    """Values equal a row-by-row reference, for steps and sequences; each agent's value depends on the others' features."""
    torch.manual_seed(0)
    critic = AttentionCritic(3 * 4, 3, CriticConfig(hidden=8, recurrent=recurrent))
    critic.eval()
    state, agent = torch.randn(5, 7, 12), torch.tensor([0, 1, 2, 2, 1])
    resets = torch.zeros(5, 7, dtype=torch.bool)
    with torch.no_grad():
        seq = critic.forward_sequence(state, agent, resets, critic.initial_state(5))
        torch.testing.assert_close(seq, _rollout(critic, state, agent, resets), rtol=1e-5, atol=1e-6)
        if not recurrent:
            torch.testing.assert_close(seq, _attention_reference(critic, state, agent), rtol=1e-5, atol=1e-6)
            one, _ = critic.step(state[:, 0], agent, {}, resets[:, 0])
            torch.testing.assert_close(one, _attention_reference(critic, state[:, 0], agent), rtol=1e-5, atol=1e-6)
        other = state.clone()
        other[:, :, 8:] = torch.randn(5, 7, 4)  # only agent 2's features change (not a uniform shift: LayerNorm)
        moved = critic.forward_sequence(other, agent, resets, critic.initial_state(5))
    assert (moved - seq)[agent != 2].abs().min() > 1e-6  # agents 0 and 1 see agent 2 through attention
    with torch.no_grad(), torch.device("meta"):  # the row index follows the input's device, not torch's default one
        on_cpu = critic.forward_sequence(state, agent, resets, critic.initial_state(5))
    torch.testing.assert_close(on_cpu, seq)
    assert seq.shape == (5, 7)


def test_attention_critic_layout():
    """MAMBA's critic: per-agent LayerNorm + Linear embedding, position embedding, one pre-norm 4-head layer, no dropout."""
    critic = AttentionCritic(3 * 4, 3, CriticConfig(hidden=8))
    norm, linear = critic.encoder
    assert (
        isinstance(norm, torch.nn.LayerNorm)
        and norm.normalized_shape == (4,)
        and (linear.in_features, linear.out_features) == (4, 8)
    )
    assert critic.position.weight.shape == (3, 8)
    layer = critic.attend
    assert layer.self_attn.num_heads == 4 and layer.self_attn.batch_first and layer.norm_first
    assert (layer.linear1.in_features, layer.linear1.out_features) == (8, 16) and layer.dropout.p == 0.0
    assert isinstance(critic.out[0], torch.nn.LayerNorm) and critic.out[0].normalized_shape == (8,)
    assert isinstance(critic.out[1], torch.nn.ReLU)
    critic.train()  # no dropout: training mode is deterministic
    state, agent, no = torch.randn(4, 12), torch.tensor([0, 1, 2, 0]), torch.zeros(4, dtype=torch.bool)
    torch.testing.assert_close(
        critic.step(state, agent, critic.initial_state(4), no)[0], critic.step(state, agent, critic.initial_state(4), no)[0]
    )
    assert AttentionCritic(12, 3, CriticConfig(hidden=8), heads=2).attend.self_attn.num_heads == 2
    with pytest.raises(ValueError, match=r"^state_dim: expected a multiple of n_agents=3 \(N·F\), got 10$"):
        AttentionCritic(10, 3)


def test_agent_groups_detects_mappo_rows_only():
    """True only for N consecutive copies of one state valued for agents 0..N-1, per step or per sequence."""
    state = torch.randn(2, 5, 6)
    rows = state.repeat_interleave(3, dim=0)  # (6, 5, 6): env 0 for agents 0..2, then env 1
    agent = torch.arange(3).repeat(2)
    assert agent_groups(rows, agent, 3) and agent_groups(rows[:, 0], agent, 3)
    assert agent_groups(rows, agent.int(), 3)
    with torch.device("meta"):  # the agent order is built on the input's device, not torch's default one
        assert agent_groups(rows, agent, 3)
    assert not agent_groups(rows, agent.flip(0), 3)  # agents out of order
    assert not agent_groups(rows[:4], agent[:4], 3)  # not a whole number of groups
    assert not agent_groups(rows, agent[:3], 3)  # one agent per group only
    other = rows.clone()
    other[2, 4, 5] += 1e-3  # agent 2 of env 0 sees another state at the last step
    assert not agent_groups(other, agent, 3) and not agent_groups(other[:, 4], agent, 3)
    assert agent_groups(other[:, 3], agent, 3)
    assert agent_groups(torch.randn(4, 6), torch.zeros(4, dtype=torch.long), 1)


@pytest.mark.parametrize("recurrent", [False, True])
def test_attention_critic_grouped_rows_attend_once_with_the_same_values(recurrent):
    """MAPPO's row layout (N copies of a state) runs attention once per state and gives the general path's values."""
    torch.manual_seed(0)
    critic = AttentionCritic(3 * 4, 3, CriticConfig(hidden=8, recurrent=recurrent))
    state = torch.randn(4, 7, 12).repeat_interleave(3, dim=0)  # (12, 7, 12)
    agent, resets = torch.arange(3).repeat(4), torch.zeros(12, 7, dtype=torch.bool)
    resets[5, 3] = True
    sizes = []
    critic.attend.register_forward_hook(lambda m, a, out: sizes.append(a[0].shape[0]))
    perm = torch.tensor([3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11])  # one group broken: the general path
    with torch.no_grad():
        grouped = critic.forward_sequence(state, agent, resets, critic.initial_state(12))
        general = critic.forward_sequence(state[perm], agent[perm], resets[perm], critic.initial_state(12))
        step, _ = critic.step(state[:, 2], agent, critic.initial_state(12), resets[:, 2])
        step_general, _ = critic.step(state[perm, 2], agent[perm], critic.initial_state(12), resets[perm, 2])
    assert sizes == [4 * 7, 12 * 7, 4, 12]
    torch.testing.assert_close(grouped[perm], general, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step[perm], step_general, rtol=1e-5, atol=1e-6)
    if not recurrent:
        torch.testing.assert_close(step, grouped[:, 2], rtol=1e-5, atol=1e-6)
    assert grouped.shape == (12, 7) and step.shape == (12,)
