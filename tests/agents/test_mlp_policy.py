"""Feed-forward actor: sequence equals the step loop, each step depends on its own input only, empty state, and it
runs through MAPPO's storage and chunked update like the recurrent actors."""

import pytest
import torch
from toyvec import ToySpec, ToyVecEnv

from agents.mappo import MAPPO, MAPPOConfig
from agents.policies import POLICIES, GRUPolicyConfig, MLPPolicy, MLPPolicyConfig, make_policy
from agents.policies.base import RecurrentPolicy, log_prob_entropy, mask_logits

B, T, D, A = 5, 11, 7, 4


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_sequence_equals_step_loop_and_ignores_resets(dtype, tol):
    torch.manual_seed(0)
    policy = MLPPolicy(D, A, MLPPolicyConfig(hidden=16, layers=3)).to(dtype)
    obs = torch.randn(B, T, D, dtype=dtype)
    resets = torch.rand(B, T) < 0.3
    seq = policy.forward_sequence(obs, resets, {})
    assert seq.shape == (B, T, A)
    torch.testing.assert_close(RecurrentPolicy.forward_sequence(policy, obs, resets, {}), seq, rtol=tol, atol=tol)
    torch.testing.assert_close(policy.forward_sequence(obs, torch.zeros_like(resets), {}), seq, rtol=0, atol=0)


def test_each_step_sees_only_its_own_input():
    """No memory: the logits at t change only when the observation at t changes (autograd)."""
    torch.manual_seed(1)
    policy = MLPPolicy(D, A).double()
    obs = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    logits = policy.forward_sequence(obs, torch.zeros(B, T, dtype=torch.bool), {})
    (grad,) = torch.autograd.grad(logits[:, 5].sum(), obs)
    assert grad[:, 5].abs().sum() > 0
    assert grad[:, :5].abs().sum() == 0 and grad[:, 6:].abs().sum() == 0


def test_layout_state_and_init():
    torch.manual_seed(0)
    policy = make_policy("mlp", D, A, MLPPolicyConfig(hidden=8, layers=2, feature_norm=False))
    assert "mlp" in POLICIES and isinstance(policy, MLPPolicy)
    assert policy.initial_state(3) == {} and policy.state_shapes() == {}
    linears = [m for m in policy.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, 8), (8, 8)]
    assert not any(isinstance(m, torch.nn.LayerNorm) and m.normalized_shape == (D,) for m in policy.encoder)
    logits, state = policy.step(torch.randn(6, D), {}, torch.zeros(6, dtype=torch.bool))
    assert logits.shape == (6, A) and state == {}
    assert logits.abs().max() < 0.5  # the head's small init: near-uniform start
    assert policy.head.bias.abs().sum() == 0


def test_bad_input():
    with pytest.raises(ValueError, match="MLPPolicyConfig.layers"):
        MLPPolicyConfig(layers=0)
    with pytest.raises(ValueError, match="MLPPolicyConfig.activation"):
        MLPPolicyConfig(activation="gelu")
    with pytest.raises(ValueError, match="MLPPolicyConfig.head_gain"):
        MLPPolicyConfig(head_gain=0.0)
    with pytest.raises(TypeError, match="expected a MLPPolicyConfig"):
        make_policy("mlp", D, A, GRUPolicyConfig())
    policy = MLPPolicy(D, A)
    with pytest.raises(ValueError, match=r"obs: expected shape \(B, 7\)"):
        policy.step(torch.randn(3, D + 1), {}, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="resets"):
        policy.forward_sequence(torch.randn(3, T, D), torch.zeros(3, T + 1, dtype=torch.bool), {})


@pytest.mark.usefixtures("one_thread")
def test_mappo_collects_and_updates_with_a_stateless_actor():
    """Storage keeps no actor state; recomputed chunk log-probs equal those taken while acting; an update moves it."""
    env, spec = ToyVecEnv(), ToySpec()
    torch.manual_seed(0)
    policy = make_policy("mlp", spec.obs_dim, spec.n_actions, MLPPolicyConfig(hidden=16))
    agent = MAPPO(spec, MAPPOConfig(rollout_length=7, chunk_length=3, epochs=2), policy=policy, seed=0)
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)
    carry, _ = agent.collect(env, storage, carry)
    assert storage.actor_state == {}
    adv, ret = agent.advantages(storage)
    chunks = storage.chunks(3, adv, ret)
    with torch.no_grad():
        logits = mask_logits(agent.policy.forward_sequence(chunks.obs, chunks.resets, chunks.actor_state), chunks.action_mask)
        log_probs, _ = log_prob_entropy(logits, chunks.actions)
    torch.testing.assert_close(log_probs[chunks.valid], chunks.log_probs[chunks.valid], rtol=1e-5, atol=1e-5)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.update(storage)
    assert any((a - p).abs().max() > 0 for a, p in zip(before, agent.policy.parameters()))
