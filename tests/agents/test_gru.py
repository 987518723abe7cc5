"""GRU policy and critic: sequence forward with resets mid-sequence equals the step loop; resets mean new episodes."""

import pytest
import torch

from agents.critic import CentralCritic, CriticConfig
from agents.policies.base import RecurrentPolicy
from agents.policies.gru import GRUPolicy, GRUPolicyConfig

B, T, D, A = 5, 11, 7, 4


def _resets(seed=0):
    g = torch.Generator().manual_seed(seed)
    resets = torch.rand(B, T, generator=g) < 0.2
    resets[0, 0] = True  # a reset on the very first step
    resets[1, 4] = True  # and in the middle, in some rows only
    resets[2] = False  # a row that never resets
    return resets


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("gru_layers", [1, 2])
def test_policy_sequence_equals_step_loop(dtype, tol, gru_layers):
    torch.manual_seed(0)
    policy = GRUPolicy(D, A, GRUPolicyConfig(hidden=16, gru_layers=gru_layers)).to(dtype)
    obs = torch.randn(B, T, D, dtype=dtype)
    resets = _resets()
    state0 = {"h": torch.randn(B, gru_layers, 16, dtype=dtype)}  # a non-initial state, as a chunk start has
    seq = policy.forward_sequence(obs, resets, state0)
    assert seq.shape == (B, T, A)
    state, steps = state0, []
    for t in range(T):
        logits, state = policy.step(obs[:, t], state, resets[:, t])
        steps.append(logits)
    torch.testing.assert_close(seq, torch.stack(steps, 1), rtol=tol, atol=tol)
    # the base class's generic step loop gives the same result
    torch.testing.assert_close(RecurrentPolicy.forward_sequence(policy, obs, resets, state0), seq, rtol=tol, atol=tol)


def test_reset_starts_a_new_episode():
    """After a reset at t, outputs equal those of a fresh sequence started at t, whatever came before."""
    torch.manual_seed(1)
    policy = GRUPolicy(D, A, GRUPolicyConfig(hidden=16)).double()
    obs = torch.randn(B, T, D, dtype=torch.float64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 6] = True
    state0 = {"h": torch.randn(B, 1, 16, dtype=torch.float64)}
    full = policy.forward_sequence(obs, resets, state0)
    fresh = policy.forward_sequence(obs[:, 6:], torch.zeros(B, T - 6, dtype=torch.bool), policy.initial_state(B))
    torch.testing.assert_close(full[:, 6:], fresh, rtol=1e-10, atol=1e-10)
    # without the reset the carried state changes the outputs
    no_reset = policy.forward_sequence(obs, torch.zeros_like(resets), state0)
    assert (no_reset[:, 6:] - fresh).abs().max() > 1e-4


def test_step_state_shapes_and_init():
    torch.manual_seed(0)
    policy = GRUPolicy(D, A, GRUPolicyConfig(hidden=8, gru_layers=2))
    assert policy.state_shapes() == {"h": (2, 8)}
    state = policy.initial_state(3)
    assert state["h"].shape == (3, 2, 8) and not state["h"].any()
    logits, new = policy.step(torch.randn(3, D), state, torch.zeros(3, dtype=torch.bool))
    assert logits.shape == (3, A) and new["h"].shape == (3, 2, 8)
    # head gain 0.01: the initial policy is close to uniform
    assert logits.abs().max() < 0.1


@pytest.mark.parametrize("recurrent", [True, False])
def test_critic_sequence_equals_step_loop(recurrent):
    torch.manual_seed(0)
    S, N = 9, 3
    critic = CentralCritic(S, N, CriticConfig(hidden=16, recurrent=recurrent)).double()
    state = torch.randn(B, T, S, dtype=torch.float64)
    agent = torch.tensor([0, 1, 2, 0, 1])
    resets = _resets(1)
    h0 = critic.initial_state(B)
    assert (h0 == {}) != recurrent
    if recurrent:
        h0 = {"h": torch.randn(B, 1, 16, dtype=torch.float64)}
    seq = critic.forward_sequence(state, agent, resets, h0)
    assert seq.shape == (B, T)
    h, steps = h0, []
    for t in range(T):
        v, h = critic.step(state[:, t], agent, h, resets[:, t])
        steps.append(v)
    torch.testing.assert_close(seq, torch.stack(steps, 1), rtol=1e-10, atol=1e-10)
    # the agent one-hot matters: the same state valued for another agent differs
    other = critic.forward_sequence(state, (agent + 1) % N, resets, h0)
    assert (other - seq).abs().max() > 1e-6


def test_same_seed_same_weights():
    def build():
        torch.manual_seed(3)
        return GRUPolicy(D, A)

    for (k, a), (_, b) in zip(build().state_dict().items(), build().state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_input():
    policy = GRUPolicy(D, A)
    with pytest.raises(ValueError, match=r"obs: expected shape \(B, 7\)"):
        policy.step(torch.zeros(2, D + 1), policy.initial_state(2), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"resets: expected shape \(2,\)"):
        policy.step(torch.zeros(2, D), policy.initial_state(2), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"resets: expected shape \(2, 4\)"):
        policy.forward_sequence(torch.zeros(2, 4, D), torch.zeros(2, 3, dtype=torch.bool), policy.initial_state(2))
    with pytest.raises(ValueError, match="obs_dim: expected an integer >= 1, got 0"):
        GRUPolicy(0, A)
    with pytest.raises(TypeError, match="config: expected a GRUPolicyConfig"):
        GRUPolicy(D, A, CriticConfig())
    with pytest.raises(ValueError, match="GRUPolicyConfig.hidden"):
        GRUPolicyConfig(hidden=0)
    with pytest.raises(ValueError, match="GRUPolicyConfig.activation"):
        GRUPolicyConfig(activation="gelu")
    with pytest.raises(ValueError, match="CriticConfig.value_norm_beta"):
        CriticConfig(value_norm_beta=1.0)
    critic = CentralCritic(4, 2)
    h, no_reset = critic.initial_state(3), torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"state: expected shape \(B, 4\)"):
        critic.step(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), h, no_reset)
    with pytest.raises(ValueError, match=r"agent: expected shape \(3,\)"):
        critic.step(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), h, no_reset)
