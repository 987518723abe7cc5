"""MAPPO's learning math by hand: PPO and value losses, masked categoricals, GAE as MAPPO calls it, loss and update."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical
from toyvec import ToySpec, ToyVecEnv

from agents.critic import CentralCritic, CriticConfig
from agents.mappo import (
    ENTROPY_FLOOR_WEIGHT_RANGE,
    MAPPO,
    MAPPOConfig,
    entropy_floor_step,
    normalized_choice_entropy,
    ppo_policy_loss,
    ppo_value_loss,
)
from agents.policies.base import RecurrentPolicy, log_prob_entropy, mask_logits, masked_mean, sample_actions
from agents.policies.gru import GRUPolicy, GRUPolicyConfig

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _t(*xs):
    return torch.tensor(xs, dtype=F64)


# --- ppo_policy_loss -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "adv", "surrogate", "clipped"),
    [
        (1.1, 2.0, 1.1 * 2.0, False),  # inside 1 ± 0.2: ρA
        (1.5, 1.0, 1.2 * 1.0, True),  # above 1 + ε, A > 0: clip(ρ)A = 1.2 is the smaller
        (1.5, -1.0, 1.5 * -1.0, False),  # above 1 + ε, A < 0: ρA = -1.5 is the smaller (no clipping of a bad move)
        (0.5, 1.0, 0.5 * 1.0, False),  # below 1 - ε, A > 0: ρA = 0.5 is the smaller
        (0.5, -1.0, 0.8 * -1.0, True),  # below 1 - ε, A < 0: clip(ρ)A = -0.8 is the smaller
    ],
)
def test_policy_loss_clips_on_each_side(ratio, adv, surrogate, clipped):
    """One entry: the loss is -min(ρA, clip(ρ, 0.8, 1.2)A), with zero gradient exactly where the clipped term wins."""
    log_probs = _t(math.log(ratio)).requires_grad_()
    loss, stats = ppo_policy_loss(log_probs, _t(0.0), _t(adv), torch.tensor([True]), clip=0.2)
    torch.testing.assert_close(loss, torch.tensor(-surrogate, dtype=F64))
    loss.backward()
    # d(-ρA)/d log π = -ρA where unclipped; the clamp is flat where clipped
    torch.testing.assert_close(log_probs.grad, _t(0.0 if clipped else -ratio * adv))
    assert float(stats["clip_frac"]) == float(abs(ratio - 1) > 0.2)


def test_policy_loss_mean_over_valid_entries_and_stats():
    """The five cases together, plus an invalid entry that would change everything: loss, approx_kl and clip_frac by hand."""
    ratios = [1.1, 1.5, 1.5, 0.5, 0.5, 2.0]
    adv = _t(2.0, 1.0, -1.0, 1.0, -1.0, 100.0)
    valid = torch.tensor([True] * 5 + [False])
    old = _t(-1.0, -2.0, -0.5, -1.5, -3.0, -1.0)  # log_probs - old_log_probs = log ρ
    log_probs = old + torch.log(_t(*ratios))
    loss, stats = ppo_policy_loss(log_probs, old, adv, valid, clip=0.2)
    # surrogates 2.2, 1.2, -1.5, 0.5, -0.8 -> mean 1.6 / 5 = 0.32
    torch.testing.assert_close(loss, torch.tensor(-0.32, dtype=F64))
    assert set(stats) == {"approx_kl", "clip_frac"}
    # approx_kl = mean((ρ - 1) - log ρ) over the valid five
    kl = [(r - 1) - math.log(r) for r in ratios[:5]]  # 0.0046898, 0.0945349 (x2), 0.1931472 (x2)
    torch.testing.assert_close(stats["approx_kl"], torch.tensor(sum(kl) / 5, dtype=F64))
    torch.testing.assert_close(stats["approx_kl"], torch.tensor(0.5800544 / 5, dtype=F64), rtol=0, atol=1e-7)
    # |ρ - 1| > 0.2 for 1.5, 1.5, 0.5, 0.5 (not 1.1; the invalid 2.0 does not count) -> 4 / 5
    torch.testing.assert_close(stats["clip_frac"], torch.tensor(0.8))
    assert not stats["approx_kl"].requires_grad and not stats["clip_frac"].requires_grad
    # no valid entry: zero loss and stats (masked_mean's empty mean), not NaN
    loss, stats = ppo_policy_loss(log_probs, old, adv, torch.zeros(6, dtype=torch.bool), clip=0.2)
    assert float(loss) == 0.0 and float(stats["approx_kl"]) == 0.0 and float(stats["clip_frac"]) == 0.0


def test_policy_loss_ratio_exactly_at_the_bound_is_not_clipped():
    """|ρ - 1| == ε exactly counts as unclipped in clip_frac (strict >), and the surrogate is ρA there."""
    log_ratio = _t(0.25, -0.25)
    clip = float((log_ratio[0].exp() - 1).abs())  # ε equal to ρ - 1 of the first entry, bit for bit
    loss, stats = ppo_policy_loss(log_ratio, _t(0.0, 0.0), _t(1.0, 0.0), torch.tensor([True, False]), clip=clip)
    assert float(stats["clip_frac"]) == 0.0
    torch.testing.assert_close(loss, -log_ratio[0].exp())


# --- ppo_value_loss --------------------------------------------------------------------------------

# Shared case: old values 1.0, clip 0.2 -> clipped predictions lie in [0.8, 1.2]; the last entry is invalid.
VALUES = (2.0, 2.0, 1.1, 0.0, 0.0, 9.0)
OLD = (1.0,) * 6
TARGETS = (3.0, 1.0, -1.0, 1.5, -1.0, -9.0)
VALID = (True,) * 5 + (False,)


def _value_loss(clip, huber_delta, valid=VALID):
    return ppo_value_loss(_t(*VALUES), _t(*OLD), _t(*TARGETS), torch.tensor(valid), clip, huber_delta)


def test_value_loss_squared_without_clipping():
    """clip=None, huber_delta=None: mean of e²/2 over valid entries."""
    # e = target - value = 1, -1, -2.1, 1.5, -1 -> e²/2 = 0.5, 0.5, 2.205, 1.125, 0.5 -> 4.83 / 5
    torch.testing.assert_close(_value_loss(None, None), torch.tensor(4.83 / 5, dtype=F64))


def test_value_loss_huber_both_branches():
    """Huber with δ = 1.5: e²/2 for |e| <= δ, δ(|e| - δ/2) beyond, for either sign of e."""
    e = _t(0.5, -1.0, 3.0, -2.5)
    loss = ppo_value_loss(torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64), e, torch.ones(4, dtype=torch.bool), None, 1.5)
    # 0.125, 0.5 (quadratic); 1.5 * (3 - 0.75) = 3.375, 1.5 * (2.5 - 0.75) = 2.625 (linear) -> 6.625 / 4
    torch.testing.assert_close(loss, torch.tensor(6.625 / 4, dtype=F64))
    # the two branches meet at |e| = δ (value 0.5 · 1.5² = 1.125), so the loss is continuous
    at = ppo_value_loss(
        torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), _t(1.5, -1.5), torch.ones(2, dtype=torch.bool), None, 1.5
    )
    torch.testing.assert_close(at, torch.tensor(1.125, dtype=F64))


def test_value_loss_clipping_is_pessimistic():
    """With clipping, each entry takes the larger of the unclipped and the clipped error (max, not min)."""
    # entry: clipped prediction; unclipped e²/2 vs clipped e²/2 -> max
    # 0: 1.2; e=1 -> 0.5 vs e=1.8 -> 1.62 -> 1.62 (clipped above, clipped error larger)
    # 1: 1.2; e=-1 -> 0.5 vs e=-0.2 -> 0.02 -> 0.5 (clipped above, unclipped error larger)
    # 2: 1.1 (inside the range); e=-2.1 -> 2.205 both -> 2.205
    # 3: 0.8; e=1.5 -> 1.125 vs e=0.7 -> 0.245 -> 1.125 (clipped below, unclipped error larger)
    # 4: 0.8; e=-1 -> 0.5 vs e=-1.8 -> 1.62 -> 1.62 (clipped below, clipped error larger)
    # mean = (1.62 + 0.5 + 2.205 + 1.125 + 1.62) / 5 = 7.07 / 5   (min instead of max would give 3.47 / 5)
    torch.testing.assert_close(_value_loss(0.2, None), torch.tensor(7.07 / 5, dtype=F64))
    # Huber δ = 1 on the same entries: 0: max(0.5, 1.3) 1: max(0.5, 0.02) 2: 1.6 3: max(1.0, 0.245) 4: max(0.5, 1.3)
    torch.testing.assert_close(_value_loss(0.2, 1.0), torch.tensor((1.3 + 0.5 + 1.6 + 1.0 + 1.3) / 5, dtype=F64))


def test_value_loss_clip_gradient_and_masking():
    """Where the clipped error wins the prediction gets no gradient; invalid entries never count."""
    values = _t(*VALUES).requires_grad_()
    loss = ppo_value_loss(values, _t(*OLD), _t(*TARGETS), torch.tensor(VALID), 0.2, None)
    loss.backward()
    # unclipped winners (1, 2, 3): d(e²/2)/dv = -e / 5; clipped winners (0, 4) and the invalid entry: 0
    torch.testing.assert_close(values.grad, _t(0.0, 1.0 / 5, 2.1 / 5, -1.5 / 5, 0.0, 0.0))
    only_first = (True,) + (False,) * 5
    torch.testing.assert_close(_value_loss(None, None, only_first), torch.tensor(0.5, dtype=F64))
    assert float(_value_loss(0.2, 1.0, (False,) * 6)) == 0.0


# --- masked categoricals -----------------------------------------------------------------------------


def _masked_case(seed=0, B=6, A=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, A, generator=g, dtype=F64) * 2
    mask = torch.rand(B, A, generator=g) < 0.5
    mask[torch.arange(B), torch.randint(A, (B,), generator=g)] = True
    mask[0] = True  # one full row
    mask[1] = False
    mask[1, 3] = True  # one row with a single available action
    return logits, mask


def test_log_prob_entropy_match_categorical_on_available_actions():
    """Log-probabilities and entropy of masked logits equal a Categorical over the available actions alone."""
    logits, mask = _masked_case()
    masked = mask_logits(logits, mask)
    for a in range(logits.shape[1]):
        actions = torch.full((logits.shape[0],), a)
        log_prob, entropy = log_prob_entropy(masked, actions)
        for b in range(logits.shape[0]):
            sub = Categorical(logits=logits[b][mask[b]])  # renormalized over the available actions
            torch.testing.assert_close(entropy[b], sub.entropy())
            if mask[b, a]:
                index = int(mask[b, :a].sum())  # position of action a among the available ones
                torch.testing.assert_close(log_prob[b], sub.log_prob(torch.tensor(index)))
            else:
                assert log_prob[b] == float("-inf")
    assert entropy[1] == 0.0  # one available action: no uncertainty
    torch.testing.assert_close(entropy[0], Categorical(logits=logits[0]).entropy())  # nothing masked: unchanged


def test_mask_logits_bad_input():
    """mask_logits names its argument in both errors."""
    logits, mask = _masked_case()
    with pytest.raises(ValueError, match=r"^action_mask: expected shape \(6, 5\) \(as logits\), got \(6, 4\)$"):
        mask_logits(logits, mask[:, :4])
    mask[2] = False
    with pytest.raises(ValueError, match=r"^action_mask: expected at least one available action per row"):
        mask_logits(logits, mask)


def test_sample_actions_follow_renormalized_probabilities():
    """Sampling draws available actions with Categorical's renormalized probabilities; deterministic takes their argmax."""
    logits, mask = _masked_case(seed=1, B=3, A=4)
    masked = mask_logits(logits, mask)
    n = 20000
    actions = sample_actions(masked.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 3)
    for b in range(3):
        probs = torch.zeros(4, dtype=F64)
        probs[mask[b]] = Categorical(logits=logits[b][mask[b]]).probs
        freq = torch.bincount(actions[:, b], minlength=4).to(F64) / n
        torch.testing.assert_close(freq, probs, rtol=0, atol=0.015)  # binomial std <= 0.0036
        assert (freq[~mask[b]] == 0).all()
    again = sample_actions(masked.repeat(n, 1), torch.Generator().manual_seed(0)).view(n, 3)
    assert torch.equal(actions, again)  # the generator alone decides
    best = torch.where(mask, logits, torch.tensor(float("-inf"), dtype=F64)).argmax(-1)
    assert torch.equal(sample_actions(masked, deterministic=True), best)


def test_masked_mean_ignores_masked_entries():
    """masked_mean averages the True entries only; NaN / inf under the mask never leak into the value or the gradient."""
    x = _t(1.0, 2.0, float("nan"), float("inf")).requires_grad_()
    mask = torch.tensor([True, True, False, False])
    out = masked_mean(x, mask)
    torch.testing.assert_close(out, torch.tensor(1.5, dtype=F64))  # (1 + 2) / 2
    out.backward()
    torch.testing.assert_close(x.grad, _t(0.5, 0.5, 0.0, 0.0))
    assert float(masked_mean(x.detach(), torch.zeros(4, dtype=torch.bool))) == 0.0  # empty mask: 0, not NaN


# --- MAPPO.advantages --------------------------------------------------------------------------------


def _agent(seed=0, policy=None, **cfg):
    torch.manual_seed(seed)
    return MAPPO(ToySpec(), MAPPOConfig(**cfg), policy=policy, seed=seed)


def _set_value_norm(vn, mean, std):
    """Moments as if debiased: mean, E[x²] = std² + mean²."""
    vn.debiasing_term.fill_(1.0)
    vn.running_mean.fill_(mean)
    vn.running_mean_sq.fill_(std**2 + mean**2)


def _gae_storage(agent):
    """T=3, E=1, N=3 by hand; values in normalized units (denormalize: 3x + 2)."""
    st = agent.new_storage(1)
    d = st.data
    d["rewards"][:, 0] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    d["values"][:, 0] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    d["dones"][1, 0, 1] = d["truncated"][1, 0, 1] = True  # agent 1 is truncated after step 1 ...
    d["bootstrap_values"][1, 0, 1] = 2.0  # ... in a state worth 3 * 2 + 2 = 8
    d["alive"][:] = True
    st.last_values = torch.tensor([[1.0, 0.0, 0.0]])
    return st


def test_advantages_use_config_gamma_lambda_and_denormalized_values():
    """MAPPO.advantages = GAE with config.gamma, config.gae_lambda on denormalized values, by hand."""
    agent = _agent(rollout_length=3, gamma=0.9, gae_lambda=0.5, normalize_advantages=False)
    _set_value_norm(agent.critic.value_norm, mean=2.0, std=3.0)
    adv, ret = agent.advantages(_gae_storage(agent))
    # γ = 0.9, γλ = 0.45
    # agent 0: V = 3 * [0, 1, -1] + 2 = [2, 5, -1], V(s_3) = 5, r = [1, 0, 2]
    #   δ2 = 2 + 0.9 * 5 + 1 = 7.5; δ1 = 0 - 0.9 - 5 = -5.9; δ0 = 1 + 4.5 - 2 = 3.5
    #   A2 = 7.5; A1 = -5.9 + 0.45 * 7.5 = -2.525; A0 = 3.5 + 0.45 * -2.525 = 2.36375
    # agent 1: V = 2 everywhere, r = [0, 1, 0], truncated after step 1 with bootstrap 8
    #   A2 = 0.9 * 2 - 2 = -0.2; A1 = 1 + 0.9 * 8 - 2 = 6.2 (no carry across the end); A0 = -0.2 + 0.45 * 6.2 = 2.59
    # agent 2: V = 2, r = 0: δ = -0.2; A2 = -0.2; A1 = -0.2 - 0.09 = -0.29; A0 = -0.2 - 0.1305 = -0.3305
    expected = torch.tensor([[2.36375, 2.59, -0.3305], [-2.525, 6.2, -0.29], [7.5, -0.2, -0.2]])[:, None]
    torch.testing.assert_close(adv, expected)
    values = torch.tensor([[2.0, 2.0, 2.0], [5.0, 2.0, 2.0], [-1.0, 2.0, 2.0]])[:, None]
    torch.testing.assert_close(ret, expected + values)  # targets in return units


def test_advantages_are_standardized_over_living_agents_only():
    """With normalize_advantages, the living entries get mean 0 / std 1; dead ones follow the same affine map."""
    agent = _agent(rollout_length=3, gamma=0.9, gae_lambda=0.5)
    raw_agent = _agent(rollout_length=3, gamma=0.9, gae_lambda=0.5, normalize_advantages=False)
    for a in (agent, raw_agent):
        _set_value_norm(a.critic.value_norm, mean=2.0, std=3.0)
    st = _gae_storage(agent)
    st.data["alive"][:, 0, 2] = False
    st.data["rewards"][:, 0, 2] = 1000.0  # dead agent 2: huge advantages that must not enter the statistics
    raw, raw_ret = raw_agent.advantages(st)
    adv, ret = agent.advantages(st)
    live = raw[st.alive]
    torch.testing.assert_close(adv, (raw - live.mean()) / (live.std() + 1e-5))
    torch.testing.assert_close(ret, raw_ret)  # returns are never standardized
    torch.testing.assert_close(adv[st.alive].mean(), torch.tensor(0.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(adv[st.alive].std(), torch.tensor(1.0), rtol=0, atol=1e-4)
    # two living entries a = 2.36375 < b = 2.59 (by hand above): standardized to ±(a - b)/2 / (|a - b|/√2) = ±1/√2
    st.data["alive"][:] = False
    st.data["alive"][0, 0, :2] = True
    adv, _ = agent.advantages(st)
    torch.testing.assert_close(adv[0, 0, :2], torch.tensor([-1.0, 1.0]) / math.sqrt(2), rtol=0, atol=1e-4)
    # one living entry: no standard deviation to divide by, advantages stay raw
    st.data["alive"][0, 0, 1] = False
    adv, _ = agent.advantages(st)
    torch.testing.assert_close(adv, raw)


# --- MAPPO.loss and update -----------------------------------------------------------------------------


class AuxPolicy(RecurrentPolicy):
    """A linear feed-forward policy with an auxiliary loss that depends on the actions and valid mask it is given."""

    def __init__(self):
        super().__init__()
        self.obs_dim, self.n_actions = ToySpec.obs_dim, ToySpec.n_actions
        self.linear = nn.Linear(self.obs_dim, self.n_actions)
        self.seen = []

    def initial_state(self, batch):
        return {}

    def step(self, obs, state, resets):
        return self.linear(obs), state

    def forward_train(self, obs, resets, state0, actions, valid):
        logits = self.linear(obs)
        self.seen.append((actions, valid))
        taken = logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return logits, masked_mean(taken**2 + 1.0, valid), {"probe": 1.5}


def _batch(agent, seed=0):
    """One collected rollout of the toy env as chunks, with old log-probs and values moved so that clipping matters."""
    env = ToyVecEnv()
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)
    agent.collect(env, storage, carry)
    adv, ret = agent.advantages(storage)
    batch = storage.chunks(agent.config.chunk_length, adv, ret)
    g = torch.Generator().manual_seed(seed)
    batch.log_probs += torch.randn(batch.log_probs.shape, generator=g) * 0.5
    batch.values += torch.randn(batch.values.shape, generator=g)
    assert not batch.valid.all() and batch.valid.any()  # the toy env's dead agent
    return batch


@pytest.mark.parametrize(("clip_value_loss", "huber_loss"), [(True, True), (True, False), (False, True), (False, False)])
def test_loss_combines_the_terms_with_their_coefficients(clip_value_loss, huber_loss):
    """loss = policy - c_ent·entropy + c_v·value + c_aux·aux, each term from the pure functions on the valid steps."""
    cfg = dict(rollout_length=7, chunk_length=3, entropy_coef=0.3, value_coef=0.7, aux_coef=0.5, value_clip=0.1,
               huber_delta=0.2, clip_value_loss=clip_value_loss, huber_loss=huber_loss)  # fmt: skip
    agent = _agent(policy=AuxPolicy(), **cfg)
    batch = _batch(agent)
    vn = copy.deepcopy(agent.critic.value_norm)
    vn.update(batch.returns[batch.valid])  # the loss folds the batch's valid returns in first
    with torch.no_grad():
        logits = mask_logits(agent.policy.linear(batch.obs), batch.action_mask)
        log_probs, entropy = log_prob_entropy(logits, batch.actions)
        policy, stats = ppo_policy_loss(log_probs, batch.log_probs, batch.advantages, batch.valid, 0.2)
        entropy = masked_mean(entropy, batch.valid)
        values = agent.critic.forward_sequence(batch.state, batch.agent, batch.resets, batch.critic_state)
        value = ppo_value_loss(values, batch.values, vn.normalize(batch.returns), batch.valid,
                               0.1 if clip_value_loss else None, 0.2 if huber_loss else None)  # fmt: skip
        taken = agent.policy.linear(batch.obs).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        aux = masked_mean(taken**2 + 1.0, batch.valid)
    loss, out = agent.loss(batch)
    torch.testing.assert_close(loss, policy - 0.3 * entropy + 0.7 * value + 0.5 * aux)
    assert loss.requires_grad
    assert set(out) == {"approx_kl", "clip_frac", "policy_loss", "value_loss", "entropy", "choice_entropy",
                        "choice_fraction", "aux/probe", "aux_loss"}  # fmt: skip
    want = dict(policy_loss=policy, value_loss=value, entropy=entropy, aux_loss=aux, **stats)
    want["aux/probe"] = torch.tensor(1.5)
    for k, v in want.items():
        torch.testing.assert_close(out[k], v.to(out[k].dtype), msg=k)
    # the policy got the taken actions and the valid mask; the value normalizer folded in the valid returns
    actions, valid = agent.policy.seen[-1]
    assert torch.equal(actions, batch.actions) and torch.equal(valid, batch.valid)
    torch.testing.assert_close(agent.critic.value_norm.mean_var(), vn.mean_var())
    # the four variants give four different value losses on this batch (clipping and Huber both matter)
    other = ppo_value_loss(values, batch.values, vn.normalize(batch.returns), batch.valid,
                           None if clip_value_loss else 0.1, None if huber_loss else 0.2)  # fmt: skip
    assert abs(float(other) - float(value)) > 1e-3


def test_loss_without_valid_steps_leaves_value_norm_alone():
    """A minibatch of padding and dead agents only: zero policy and value terms, and no value-normalizer update."""
    agent = _agent(rollout_length=7, chunk_length=3)
    batch = _batch(agent)
    batch.valid[:] = False
    before = copy.deepcopy(agent.critic.value_norm.state_dict())
    loss, stats = agent.loss(batch)
    for k, v in agent.critic.value_norm.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert float(stats["policy_loss"]) == 0.0 and float(stats["value_loss"]) == 0.0 and float(loss.detach()) == 0.0


def _collected(**cfg):
    """A toy-env agent with ``cfg`` and a storage it filled with one rollout: (agent, env, storage)."""
    agent, env = _agent(**cfg), ToyVecEnv()
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)
    agent.collect(env, storage, carry)
    return agent, env, storage


def test_update_averages_stats_over_minibatches_and_scales_learning_rates():
    """update: epochs × minibatches calls of loss covering every chunk once per epoch, mean stats, lr × lr_scale."""
    agent, env, storage = _collected(rollout_length=7, chunk_length=3, epochs=3, num_minibatches=2, lr=1e-3, critic_lr=2e-3)
    calls, loss = [], agent.loss

    def probe(batch, entropy_coef=None, value_targets=None, policy_targets=None):
        out, stats = loss(batch, entropy_coef, value_targets, policy_targets)
        stats["probe"] = torch.tensor(float(len(calls)))
        calls.append(len(batch))
        return out, stats

    agent.loss = probe
    metrics = agent.update(storage, lr_scale=0.5)
    n = 3 * env.num_envs * ToyVecEnv.N  # C = ceil(7 / 3) = 3 chunks per (env, agent) sequence: 18
    assert calls == [9, 9] * 3  # ceil(18 / 2) per minibatch
    assert metrics["probe"] == (0 + 1 + 2 + 3 + 4 + 5) / 6
    assert set(metrics) == {"approx_kl", "clip_frac", "policy_loss", "value_loss", "entropy", "choice_entropy",
                            "choice_fraction", "grad_norm_actor", "grad_norm_critic", "probe"}  # fmt: skip
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["grad_norm_actor"] > 0 and metrics["grad_norm_critic"] > 0
    assert [g["lr"] for g in agent.optimizer.param_groups] == [0.5e-3, 1e-3]
    assert sum(calls) == 3 * n
    with pytest.raises(ValueError, match=r"^lr_scale: expected a value in \(0, 1\], got 1.5$"):
        agent.update(storage, lr_scale=1.5)
    agent.update(storage)  # lr_scale = 1 restores the configured rates
    assert [g["lr"] for g in agent.optimizer.param_groups] == [1e-3, 2e-3]


def test_entropy_weight_anneals_per_minibatch_step_and_resumes_from_earlier_updates():
    """Minibatch step k of an update weighs entropy by coef × entropy_scale × decay**k; the learners pass
    entropy_scale_after(u) = decay**(u × epochs × minibatches) for u earlier updates, as MAMBA's ×0.99998 per step."""
    agent, _, storage = _collected(rollout_length=7, chunk_length=3, epochs=3, num_minibatches=2, entropy_coef=0.01,
                                   entropy_decay=0.9)  # fmt: skip
    seen, loss = [], agent.loss

    def probe(batch, entropy_coef=None, value_targets=None, policy_targets=None):
        seen.append(entropy_coef)
        return loss(batch, entropy_coef, value_targets, policy_targets)

    agent.loss = probe
    assert agent.minibatch_steps() == 6 and agent.entropy_scale_after(0) == 1.0
    assert agent.entropy_scale_after(2) == pytest.approx(0.9**12)
    agent.update(storage, entropy_scale=agent.entropy_scale_after(2))
    np.testing.assert_allclose(seen, [0.01 * 0.9 ** (12 + k) for k in range(6)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"^entropy_scale: expected a value in \[0, 1\], got 2"):
        agent.update(storage, entropy_scale=2)
    with pytest.raises(ValueError, match=r"MAPPOConfig.entropy_decay: expected a value in \[0, 1\]"):
        MAPPOConfig(entropy_decay=1.5)
    # the coefficient reaches the loss: a larger weight on the same batch lowers the loss by weight × entropy
    batch = storage.chunks(3, *agent.advantages(storage))
    low, stats = type(agent).loss(copy.deepcopy(agent), batch, 0.0)  # copies: loss moves the value normalizer
    high, _ = type(agent).loss(copy.deepcopy(agent), batch, 0.5)
    torch.testing.assert_close(low - high, 0.5 * stats["entropy"], rtol=1e-5, atol=1e-6)


def test_update_with_one_minibatch_takes_chunks_in_storage_order_and_still_draws_the_permutation():
    """One minibatch: every chunk in (chunk, env, agent) order (no copy; N agent rows together); the shuffle is still drawn."""
    agent, env, storage = _collected(rollout_length=7, chunk_length=3, epochs=2, num_minibatches=1)
    batches, loss = [], agent.loss

    def probe(batch, entropy_coef=None, value_targets=None, policy_targets=None):
        batches.append(batch)
        return loss(batch, entropy_coef, value_targets, policy_targets)

    agent.loss = probe
    state = agent.generator.get_state()
    agent.update(storage)
    N = ToyVecEnv.N
    assert len(batches) == 2 and all(torch.equal(b.agent, torch.arange(N).repeat(3 * env.num_envs)) for b in batches)
    expected = torch.Generator().set_state(state)
    for _ in range(2):
        torch.randperm(3 * env.num_envs * N, generator=expected)
    assert torch.equal(agent.generator.get_state(), expected.get_state())


def test_update_keeps_tensors_on_the_configured_device():
    """Collection and update create their tensors on config.device, not on torch's default device."""
    agent = _agent(rollout_length=7, chunk_length=3, epochs=2, num_minibatches=2)
    env = ToyVecEnv()
    storage = agent.new_storage(env.num_envs)
    with torch.device("meta"):  # anything created without an explicit device would land here
        carry = agent.start(env)
        assert all(getattr(carry, k).device.type == "cpu" for k in ("obs", "state", "alive", "action_mask", "resets"))
        agent.collect(env, storage, carry)
        metrics = agent.update(storage)
    assert all(np.isfinite(v) for v in metrics.values())


# --- construction and inputs ---------------------------------------------------------------------------


def test_constructor_defaults_and_given_parts():
    """Defaults: MAPPOConfig(), seed 0; given policy, critic and critic_config are used; the optimizer has both rates."""
    agent = MAPPO(ToySpec())
    assert agent.config == MAPPOConfig() and agent.generator.initial_seed() == 0
    policy, critic = GRUPolicy(ToySpec.obs_dim, ToySpec.n_actions), CentralCritic(ToySpec.state_dim, ToySpec.n_agents)
    cfg = MAPPOConfig(lr=4e-4, critic_lr=3e-3, adam_eps=1e-6)  # not Adam's defaults (1e-3, 1e-8)
    agent = MAPPO(ToySpec(), cfg, policy=policy, critic=critic, seed=5)
    assert agent.policy is policy and agent.critic is critic and agent.generator.initial_seed() == 5
    groups = agent.optimizer.param_groups
    assert [g["lr"] for g in groups] == [4e-4, 3e-3] and [g["eps"] for g in groups] == [1e-6, 1e-6]
    assert [set(map(id, g["params"])) for g in groups] == [
        set(map(id, policy.parameters())),
        set(map(id, critic.parameters())),
    ]
    agent = MAPPO(ToySpec(), critic_config=CriticConfig(hidden=16), policy_config=GRUPolicyConfig(hidden=8))
    assert agent.critic.config.hidden == 16 and agent.policy.config.hidden == 8


def test_constructor_bad_parts_name_the_argument():
    """Wrong config type, policy or critic: errors that name the argument and both sizes."""
    with pytest.raises(TypeError, match=r"^config: expected a MAPPOConfig, got CriticConfig$"):
        MAPPO(ToySpec(), CriticConfig())
    with pytest.raises(ValueError, match=r"^policy: expected obs_dim=4, n_actions=3, got 4, 5$"):
        MAPPO(ToySpec(), policy=GRUPolicy(4, 5))
    with pytest.raises(ValueError, match=r"^critic: expected state_dim=5, n_agents=3, got 5, 2$"):
        MAPPO(ToySpec(), critic=CentralCritic(5, 2))


@pytest.mark.parametrize("name", ["lr", "critic_lr", "adam_eps", "clip", "value_clip", "huber_delta", "max_grad_norm"])
def test_config_positive_fields_reject_zero(name):
    """Rates, ε, clip ranges, δ and the gradient bound must be > 0."""
    with pytest.raises(ValueError, match=rf"^MAPPOConfig\.{name}: expected a positive finite number, got 0$"):
        MAPPOConfig(**{name: 0})


def test_config_closed_ranges_accept_their_bounds():
    """gamma and gae_lambda take 0 and 1; the loss coefficients take 0."""
    for v in (0.0, 1.0):
        assert MAPPOConfig(gamma=v, gae_lambda=v).gae_lambda == v
    assert MAPPOConfig(value_coef=0.0, entropy_coef=0.0, aux_coef=0.0).aux_coef == 0.0


def test_start_converts_env_arrays_to_the_storage_dtypes():
    """start: float64 observations / states and 0-1 integer flags become float32 and bool; all agents reset."""
    agent = _agent()
    E, N = 2, ToySpec.n_agents
    s = SimpleNamespace(
        obs=np.ones((E, N, ToySpec.obs_dim)), state=torch.ones(E, ToySpec.state_dim, dtype=torch.bfloat16),
        alive=np.ones((E, N), dtype=np.int64), action_mask=np.ones((E, N, ToySpec.n_actions), dtype=np.int64),
    )  # fmt: skip
    env = SimpleNamespace(num_envs=E, reset=lambda: s)
    carry = agent.start(env)
    dtypes = {k: getattr(carry, k).dtype for k in ("obs", "state", "alive", "action_mask", "resets")}
    assert dtypes == dict(obs=torch.float32, state=torch.float32, alive=torch.bool, action_mask=torch.bool, resets=torch.bool)
    assert carry.resets.shape == (E, N) and carry.resets.all() and torch.equal(carry.state, torch.ones(E, ToySpec.state_dim))
    assert carry.actor_state["h"].shape[0] == E * N and carry.critic_state["h"].shape[0] == E * N


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_everything_on_the_configured_cuda_device():
    """config.device='cuda': networks, sampling stream and storage live on the GPU, and a collect/update round runs."""
    torch.manual_seed(0)
    agent = MAPPO(ToySpec(), MAPPOConfig(rollout_length=7, epochs=1, device="cuda"))
    assert all(p.device.type == "cuda" for p in agent.parameters()) and agent.generator.device.type == "cuda"
    env = ToyVecEnv()
    storage = agent.new_storage(env.num_envs)
    assert storage.device.type == "cuda" and storage.obs.device.type == "cuda"
    agent.collect(env, storage, agent.start(env))
    assert all(np.isfinite(v) for v in agent.update(storage).values())


# --- short last chunks run at their own length -----------------------------------------------------


def _random_chunks(agent, num_envs=4, seed=0):
    """A rollout of random data (dead agents, mid-sequence resets, masks, random recurrent states) as chunks."""
    g = torch.Generator().manual_seed(seed)
    storage = agent.new_storage(num_envs)
    E, N, D, S, A = num_envs, agent.n_agents, agent.obs_dim, agent.state_dim, agent.n_actions
    for t in range(storage.length):
        mask = torch.rand(E, N, A, generator=g) < 0.7
        if agent.discrete:
            actions = torch.randint(A, (E, N), generator=g)
            mask.scatter_(-1, actions[..., None], True)
        else:
            actions = torch.randn(E, N, A, generator=g)
            mask[..., 0] = True
        storage[t] = {
            "obs": torch.randn(E, N, D, generator=g), "state": torch.randn(E, S, generator=g),
            "alive": torch.rand(E, N, generator=g) < 0.8, "action_mask": mask,
            "resets": torch.rand(E, N, generator=g) < (1.0 if t == 0 else 0.15), "actions": actions,
            "log_probs": torch.randn(E, N, generator=g) * 0.3 - 1.0, "values": torch.randn(E, N, generator=g),
            "rewards": torch.randn(E, N, generator=g), "dones": torch.zeros(E, N, dtype=torch.bool),
            "truncated": torch.zeros(E, N, dtype=torch.bool), "bootstrap_values": torch.zeros(E, N),
            "discounts": torch.ones(E, N),
            "actor_state": {k: torch.randn(E, N, *v.shape[3:], generator=g) for k, v in storage.actor_state.items()},
            "critic_state": {k: torch.randn(E, N, *v.shape[3:], generator=g) for k, v in storage.critic_state.items()},
        }  # fmt: skip
    T = storage.length
    return storage.chunks(agent.config.chunk_length, torch.randn(T, E, N, generator=g), torch.randn(T, E, N, generator=g))


@pytest.mark.parametrize(
    "case", ["gru", "mamba", "mlp", "gru-continuous", "gru-attention-critic", "gru-minibatch", "sp-mamba"]
)
def test_loss_runs_short_last_chunks_at_their_own_length_with_the_padded_loss_and_gradients(case):
    """T = 7 in chunks of 3: the 1-step last chunks run as their own group, and the loss, its stats and every gradient
    equal the padded pass's (the same chunks with every length L). SP-Mamba (an auxiliary loss) keeps the padded pass."""
    from dataclasses import replace
    from types import SimpleNamespace as NS

    from agents.critic import AttentionCritic
    from agents.policies import make_policy

    kind = case.split("-continuous")[0].split("-attention")[0].split("-minibatch")[0]
    discrete = "continuous" not in case
    spec = NS(n_agents=3, obs_dim=4, state_dim=6, n_actions=3, discrete=discrete)
    torch.manual_seed(0)
    critic = AttentionCritic(6, 3) if "attention" in case else CentralCritic(6, 3, CriticConfig(hidden=16))
    agent = MAPPO(spec, MAPPOConfig(rollout_length=7, chunk_length=3), make_policy(kind, 4, 3), critic, seed=0)
    batch = _random_chunks(agent)
    if "attention" in case:  # the critic's input is the env's state, the same for the N rows of an env
        batch = replace(batch, state=torch.randn(len(batch) // 3, 3, 6).repeat_interleave(3, 0))
    if "minibatch" in case:  # a shuffled subset: the groups' rows interleave
        batch = batch.index(torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))[:40])
    assert sorted(set(batch.lengths.tolist())) == [1, 3]
    padded = replace(batch, lengths=torch.full_like(batch.lengths, 3))
    results = []
    for chunks in (batch, padded):
        learner = copy.deepcopy(agent)
        lengths, forward_train = [], learner.policy.forward_train

        def spy(obs, *args, forward_train=forward_train, lengths=lengths):
            lengths.append(tuple(obs.shape[:2]))
            return forward_train(obs, *args)

        learner.policy.forward_train = spy
        loss, stats = learner.loss(chunks)
        loss.backward()
        results.append((loss, stats, {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}, lengths))
    (loss, stats, grads, lengths), (loss0, stats0, grads0, lengths0) = results
    B, long = len(batch), int((batch.lengths == 3).sum())
    assert lengths0 == [(B, 3)]
    assert lengths == ([(B, 3)] if kind == "sp-mamba" else [(long, 3), (B - long, 1)])
    torch.testing.assert_close(loss, loss0, rtol=1e-5, atol=1e-6)
    assert set(stats) == set(stats0) and torch.isfinite(loss)
    for k in stats:
        torch.testing.assert_close(stats[k], stats0[k], rtol=1e-5, atol=1e-6, msg=k)
    assert set(grads) == set(grads0) and len(grads) > 4
    for k in grads:
        torch.testing.assert_close(grads[k], grads0[k], rtol=1e-4, atol=1e-6, msg=k)


# --- the entropy floor ---------------------------------------------------------------------------------------


def test_normalized_choice_entropy_by_hand():
    """Entropy / log #available, averaged over valid rows with more than one available action."""
    entropy = _t(math.log(2), 0.5, 0.0, math.log(3), 0.3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    valid = torch.tensor([True, True, True, True, False])  # row 2 has no choice, row 4 is invalid
    want = (1.0 + 0.5 / math.log(3) + 1.0) / 3
    torch.testing.assert_close(normalized_choice_entropy(entropy, mask, valid), _t(want)[0])
    torch.testing.assert_close(normalized_choice_entropy(entropy, mask, torch.zeros(5, dtype=torch.bool)), _t(0.0)[0])


def test_entropy_floor_step_rises_below_the_floor_falls_above_and_stays_in_range():
    """log α + lr (floor − measured), clamped to log [1e-4, 10]."""
    low, high = (math.log(v) for v in ENTROPY_FLOOR_WEIGHT_RANGE)
    w = torch.tensor(math.log(0.01))
    torch.testing.assert_close(entropy_floor_step(w, 0.5, torch.tensor(0.2), 0.1), w + 0.03)
    torch.testing.assert_close(entropy_floor_step(w, 0.5, torch.tensor(0.9), 0.1), w - 0.04)
    assert float(entropy_floor_step(torch.tensor(high - 0.01), 0.9, torch.tensor(0.0), 1.0)) == pytest.approx(high)
    assert float(entropy_floor_step(torch.tensor(low + 0.01), 0.1, torch.tensor(1.0), 1.0)) == pytest.approx(low)
    measured = torch.tensor(0.2, requires_grad=True)
    assert not entropy_floor_step(w, 0.5, measured, 0.1).requires_grad  # the weight is not trained by the loss


def test_entropy_floor_adds_alpha_times_the_normalized_choice_entropy_and_adapts_alpha_per_step():
    """With a floor the loss is the plain loss − α × normalized choice entropy; α moves by the dual step after every
    minibatch step, from the entropy measured on that minibatch, and is saved with the agent."""
    agent, _, storage = _collected(rollout_length=7, chunk_length=3, epochs=2, num_minibatches=2, entropy_floor=0.9,
                                   entropy_floor_lr=0.5)  # fmt: skip
    plain = _agent(rollout_length=7, chunk_length=3, epochs=2, num_minibatches=2)
    assert "entropy_floor_log_weight" in agent.state_dict() and "entropy_floor_log_weight" not in plain.state_dict()
    batch = storage.chunks(3, *agent.advantages(storage))
    with_floor, stats = type(agent).loss(copy.deepcopy(agent), batch)
    plain.load_state_dict({k: v for k, v in agent.state_dict().items() if k != "entropy_floor_log_weight"})
    without, _ = type(plain).loss(copy.deepcopy(plain), batch)
    with torch.no_grad():
        logits = mask_logits(agent.policy.forward_sequence(batch.obs, batch.resets, batch.actor_state), batch.action_mask)
        _, entropy = log_prob_entropy(logits, batch.actions)
    measured = normalized_choice_entropy(entropy, batch.action_mask, batch.valid)
    torch.testing.assert_close(stats["floor_entropy"], measured)
    assert 0.3 < float(measured) < 1.0
    torch.testing.assert_close(without - with_floor, 0.01 * measured, rtol=1e-5, atol=1e-7)
    seen, loss = [], agent.loss

    def probe(batch, entropy_coef=None, value_targets=None, policy_targets=None):
        seen.append(float(agent.entropy_floor_log_weight))
        out, st = loss(batch, entropy_coef, value_targets, policy_targets)
        seen.append(float(st["floor_entropy"]))
        return out, st

    agent.loss = probe
    metrics = agent.update(storage)
    weights, measured = seen[0::2] + [float(agent.entropy_floor_log_weight)], seen[1::2]
    assert len(measured) == 4
    for k in range(4):
        assert weights[k + 1] == pytest.approx(weights[k] + 0.5 * (0.9 - measured[k]), abs=1e-6)
    assert all(m > 0.9 for m in measured) and weights[-1] < weights[0]  # a new policy is near uniform: α falls
    assert metrics["entropy_floor_weight"] == pytest.approx(np.mean(np.exp(weights[:4])), rel=1e-5)
    assert metrics["floor_entropy"] == pytest.approx(np.mean(measured), rel=1e-5)


def test_entropy_floor_holds_the_entropy_up_where_training_drives_it_down():
    """The toy env rewards action 0 only: PPO with no entropy bonus makes the policy nearly deterministic, while
    a floor of 0.6 keeps the normalized choice entropy near 0.6."""
    final = {}
    for floor in (0.0, 0.6):
        agent = _agent(rollout_length=10, epochs=4, lr=1e-2, entropy_coef=0.0, entropy_floor=floor)
        env = ToyVecEnv()
        storage, carry = agent.new_storage(env.num_envs), agent.start(env)
        for _ in range(40):
            carry, _ = agent.collect(env, storage, carry)
            stats = agent.update(storage)
        final[floor] = stats
    plain, floored = final[0.0], final[0.6]
    assert "floor_entropy" not in plain
    assert floored["floor_entropy"] > 0.5 and floored["entropy_floor_weight"] > 0.01
    assert plain["choice_entropy"] < 0.5 * floored["choice_entropy"]


def test_entropy_floor_config_errors():
    for bad in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match=r"^MAPPOConfig.entropy_floor: expected a value in \[0, 1\), got"):
            MAPPOConfig(entropy_floor=bad)
    with pytest.raises(ValueError, match=r"^MAPPOConfig.entropy_floor_lr: expected a positive finite number, got 0"):
        MAPPOConfig(entropy_floor_lr=0)
    spec = SimpleNamespace(n_agents=2, obs_dim=3, state_dim=4, n_actions=2, discrete=False)
    with pytest.raises(ValueError, match=r"^config.entropy_floor: applies to discrete actions"):
        MAPPO(spec, MAPPOConfig(entropy_floor=0.5))
