"""Mamba and SP-Mamba policies: sequence forward == step loop on real rollouts with resets; the self-prediction loss."""

import numpy as np
import pytest
import torch

from agents.policies import SPMambaConfig, SPMambaPolicy, make_policy
from agents.policies.mamba import MambaPolicy, MambaPolicyConfig
from agents.policies.sp_mamba import grouped_kl
from wmenv.envs.vector import VecEnv

VARIANTS = {
    "mamba": lambda d, a: MambaPolicy(d, a, MambaPolicyConfig(hidden=16, d_state=4)),
    "sp-mamba": lambda d, a: SPMambaPolicy(d, a, SPMambaConfig(d_model=16, d_state=4)),
    "sp-mamba k=3 categorical": lambda d, a: SPMambaPolicy(
        d, a, SPMambaConfig(d_model=16, d_state=4, k=3, encoder="categorical")
    ),
    "sp-mamba k=4 simnorm pred-h": lambda d, a: SPMambaPolicy(
        d, a, SPMambaConfig(d_model=16, d_state=4, k=4, encoder="simnorm", pred_from="h", rep_loss=True, rec_loss=True)
    ),
}


@pytest.fixture(scope="module")
def rollout():
    """Real MPE rollouts of random available actions: obs (E*N, T, D), resets (E*N, T), actions (E*N, T)."""
    rng = np.random.default_rng(0)
    obs, resets, actions = [], [], []
    with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=0, max_cycles=12) as vec:
        s, ended = vec.reset(), np.ones(2, dtype=bool)
        for _ in range(40):  # three episodes per copy, so resets fall mid-sequence
            a = (rng.random(s.action_mask.shape) * s.action_mask).argmax(-1)
            obs.append(s.obs.reshape(-1, s.obs.shape[-1]))
            resets.append(np.repeat(ended, s.obs.shape[1]))
            actions.append(a.reshape(-1))
            s = vec.step(a)
            ended = s.done
    return (torch.tensor(np.stack(obs, 1)), torch.tensor(np.stack(resets, 1)), torch.tensor(np.stack(actions, 1)))


def _policy(name, dtype, obs_dim, seed=0):
    torch.manual_seed(seed)
    policy = VARIANTS[name](obs_dim, 5).to(dtype)
    return policy.eval()  # the categorical encoder takes its mode, so step and sequence see the same z


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_sequence_equals_step_loop_on_real_rollouts(rollout, name, dtype, tol):
    obs, resets, _ = rollout
    obs = obs.to(dtype)
    policy = _policy(name, dtype, obs.shape[-1])
    assert resets[:, 1:].any() and resets[:, 0].all(), "episode starts inside the rollout"
    state, steps, states = policy.initial_state(obs.shape[0]), [], []
    for t in range(obs.shape[1]):
        states.append(state)
        logits, state = policy.step(obs[:, t], state, resets[:, t])
        steps.append(logits)
    loop = torch.stack(steps, 1)
    torch.testing.assert_close(policy.forward_sequence(obs, resets, states[0]), loop, rtol=tol, atol=tol)
    # training chunks restart from the state stored at their first step, as MAPPO's chunks do
    for start in (7, 19):
        chunk = policy.forward_sequence(obs[:, start : start + 10], resets[:, start : start + 10], states[start])
        torch.testing.assert_close(chunk, loop[:, start : start + 10], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_train_gives_the_sequence_logits_and_a_trainable_aux_loss(rollout, name):
    obs, resets, actions = rollout
    policy = _policy(name, torch.float32, obs.shape[-1]).train()
    valid = torch.ones_like(resets)
    logits, loss, stats = policy.forward_train(obs, resets, policy.initial_state(obs.shape[0]), actions, valid)
    assert logits.shape == (obs.shape[0], obs.shape[1], 5)
    if name == "mamba":
        assert loss.item() == 0 and stats == {}
        return
    policy.eval()
    torch.testing.assert_close(
        logits, policy.forward_sequence(obs, resets, policy.initial_state(obs.shape[0]))
    ) if "categ" not in name else None
    assert stats["pred_kl"] > 0 and loss.item() > 0
    loss.backward()
    for part in (policy.decoder, policy.mamba.in_proj, policy.encoder.linear):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0, part
    if "rep_kl" in stats:
        assert "rec_mse" in stats and policy.reconstruct.weight.grad.abs().sum() > 0


def test_pred_loss_counts_only_steps_with_a_next_observation_of_the_same_episode():
    torch.manual_seed(0)
    policy = SPMambaPolicy(6, 3, SPMambaConfig(d_model=8, d_state=2, mu=0.0, alpha=1.0))
    obs, actions = torch.randn(2, 5, 6), torch.randint(0, 3, (2, 5))
    resets = torch.zeros(2, 5, dtype=torch.bool)
    state0 = policy.initial_state(2)
    only_first = torch.zeros(2, 5, dtype=torch.bool)
    only_first[0, 0] = only_first[0, 1] = True  # a single (t, t+1) pair counts: row 0, t = 0
    _, loss, stats = policy.forward_train(obs, resets, state0, actions, only_first)
    out = policy._sequence(obs, resets, state0)
    onehot = torch.nn.functional.one_hot(actions[0, 0], 3).float()
    pred = policy.decoder(torch.cat([out["y"][0, 0], onehot])).reshape(1, -1)
    expected = grouped_kl(out["targets"][0, 1], pred)
    torch.testing.assert_close(loss, expected)
    resets[0, 1] = True  # the next observation belongs to a new episode: nothing counts
    _, loss, stats = policy.forward_train(obs, resets, state0, actions, only_first)
    assert loss.item() == 0 and stats["pred_kl"] == 0


def test_mu_floor_stops_the_self_prediction_gradient():
    torch.manual_seed(0)
    policy = SPMambaPolicy(6, 3, SPMambaConfig(d_model=8, d_state=2, mu=1e6))
    obs, resets = torch.randn(2, 5, 6), torch.zeros(2, 5, dtype=torch.bool)
    _, loss, _ = policy.forward_train(obs, resets, policy.initial_state(2), torch.randint(0, 3, (2, 5)), ~resets)
    assert loss.item() == pytest.approx(0.1 * 1e6)
    loss.backward()
    assert policy.decoder.weight.grad is None or policy.decoder.weight.grad.abs().sum() == 0


def test_grouped_kl_matches_torch_distributions():
    p, q = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    ).sum(-1)
    torch.testing.assert_close(grouped_kl(p, q), expected)


def test_encoder_kinds():
    torch.manual_seed(0)
    obs = torch.randn(3, 10)
    cat = SPMambaPolicy(10, 4, SPMambaConfig(encoder="categorical")).eval()
    z, _ = cat.encoder(obs)
    groups = z.reshape(3, 8, 8)
    torch.testing.assert_close(groups.sum(-1), torch.ones(3, 8))
    assert ((groups.detach() - groups.detach().round()).abs() < 1e-6).all(), (
        "one-hot values (up to the straight-through rounding)"
    )
    cat.train()
    z, _ = cat.encoder(obs)
    z.sum().backward()  # straight-through: the one-hot samples pass gradients to the logits
    assert cat.encoder.linear.weight.grad.abs().sum() > 0
    simnorm = SPMambaPolicy(10, 4, SPMambaConfig(encoder="simnorm", tau=0.5))
    z, logits = simnorm.encoder(obs)
    torch.testing.assert_close(z.reshape(3, 8, 8).sum(-1), torch.ones(3, 8))
    assert SPMambaPolicy(10, 4).encoder(obs)[0].shape == (3, 128), "the MLP-VAE's z has d·ε features"


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ValueError, match="SPMambaConfig.k: expected an integer >= 1, got 0"):
        SPMambaConfig(k=0)
    with pytest.raises(ValueError, match="SPMambaConfig.mu: expected a number >= 0, got -0.1"):
        SPMambaConfig(mu=-0.1)
    with pytest.raises(ValueError, match="SPMambaConfig.encoder: expected 'mlp', 'categorical' or 'simnorm', got 'vq'"):
        SPMambaConfig(encoder="vq")
    policy = SPMambaPolicy(6, 3, SPMambaConfig(d_model=8, d_state=2, k=3))
    state = policy.initial_state(2)
    with pytest.raises(ValueError, match=r"state\['z_hist'\]: expected the last k-1 encodings, shape \(2, 2, 16\)"):
        policy.step(torch.randn(2, 6), {**state, "z_hist": torch.zeros(2, 3, 16)}, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"state\['z_hist'\]: expected .* got \(2, 2, 9\)"):
        policy.forward_sequence(
            torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool), {**state, "z_hist": torch.zeros(2, 2, 9)}
        )
    with pytest.raises(ValueError, match=r"obs: expected shape \(B, 6\), got \(2, 5\)"):
        policy.step(torch.randn(2, 5), state, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"kind: expected one of \['gru', 'mamba', 'sp-mamba', 'mlp'\], got 'lstm'"):
        make_policy("lstm", 6, 3)
    with pytest.raises(TypeError, match="config: expected a MambaPolicyConfig, got SPMambaConfig"):
        make_policy("mamba", 6, 3, SPMambaConfig())
