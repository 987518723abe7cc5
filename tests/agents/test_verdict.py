"""The verdict loss: the improved policy's math, the branched futures read from the right worlds and agents, the actor
pulled toward the targets (and the critic left alone), and the loop (logged, seeded, resumed exactly, refused where it
cannot apply)."""

import copy

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from toyvec import ToySpec, one_update_each, toy_rollout

from agents.critic import AttentionCritic, CriticConfig
from agents.mappo import MAPPO, MAPPOConfig
from agents.model_based import DreamSpec, ModelBasedConfig, run
from agents.policies import GRUPolicyConfig, make_policy
from agents.policies.base import mask_logits, sample_actions
from agents.verdict import PolicyTargets, VerdictConfig, branched_returns, improved_policy, verdict_targets
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.fit import FitConfig
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_improved_policy_reweighs_the_mixed_prior_by_the_standardized_values():
    values = torch.tensor([[1.0, -1.0, 7.0], [0.5, 0.5, 2.0], [3.0, 0.0, 1.0]])
    available = torch.tensor([[True, True, False], [True, True, False], [True, True, True]])
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    target = improved_policy(values, available, probs, temperature=0.5, mix=0.1)
    torch.testing.assert_close(target.sum(-1), torch.ones(3))
    assert (target[~available] == 0).all()
    # by hand: relative values [1, -1], [0, 0], [5/3, -4/3, -1/3]; RMS over the 7 available entries
    rel = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    rms = float(torch.cat([rel.flatten(), torch.tensor([5 / 3, -4 / 3, -1 / 3])]).pow(2).mean().sqrt())
    prior = torch.tensor([0.05, 0.95])  # 0.9 π + 0.1 uniform over the two available
    want = prior * torch.exp(rel[0] / rms / 0.5)
    torch.testing.assert_close(target[0, :2], want / want.sum())
    torch.testing.assert_close(target[1, :2], torch.tensor([0.5, 0.5]))  # equal values: the prior
    assert target[0, 0] > 0.5, "an action the actor never takes comes back where the verdict prefers it"
    assert improved_policy(values, available, probs, 0.5, mix=0.0)[0, 0] == 0, "without the mixture it cannot"
    flat = improved_policy(torch.zeros(3, 3), available, probs, 0.5, 0.1)  # no cell's values differ: the prior
    torch.testing.assert_close(flat[2], 0.9 * probs[2] + 0.1 / 3)
    with pytest.raises(ValueError, match="at least one available action"):
        improved_policy(values, available & False, probs, 1.0, 0.1)
    with pytest.raises(ValueError, match="expected the shape of available"):
        improved_policy(values[:, :2], available, probs, 1.0, 0.1)


@pytest.mark.parametrize("kw", [{"coef": -1.0}, {"coef": float("inf")}, {"coef": True}, {"cells": 0}, {"starts": 0},
                                {"samples": 0}, {"temperature": 0.0}, {"mix": 1.5}])  # fmt: skip
def test_bad_verdict_settings_are_refused(kw):
    with pytest.raises(ValueError, match=f"VerdictConfig.{next(iter(kw))}"):
        VerdictConfig(**kw)


@pytest.fixture(scope="module")
def mpe():
    _, spec = make("mpe:simple_spread_v3")
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    features, state = model.feature_widths()
    policy = make_policy("gru", features, spec.n_actions, GRUPolicyConfig())
    critic = AttentionCritic(state, spec.n_agents, CriticConfig(recurrent=False))
    agent = MAPPO(DreamSpec(spec.n_agents, features, state, spec.n_actions), MAPPOConfig(rollout_length=3),
                  policy=policy, critic=critic, seed=0)  # fmt: skip
    return model, agent


def _branching(model, horizon):
    """Four worlds from one seeded start, each with its deciding agent and forced action, and a maker of fresh dreams
    over them (the same imagined draws each time)."""
    W, N, gamma = 4, model.spec.n_agents, 0.9
    start = model.initial(W, generator=torch.Generator().manual_seed(1))

    def dream():
        env = DreamVecEnv(model, W, horizon, seed=3, terminations="expected")
        return env, env.reset(start=start)

    return (W, N, gamma), (torch.tensor([0, 1, 2, 1]), torch.tensor([4, 0, 2, 3])), dream


def test_branched_returns_force_each_worlds_agent_and_value_its_own_future(mpe):
    """One imagined step by hand: the deciding agent of each world takes its forced action, the others the actor's
    draws; ``own`` is its reward, ``team`` the agents' mean, ``valued`` adds γ × its continuation × V(last state)."""
    model, agent = mpe
    (W, N, gamma), (who, choose), dream = _branching(model, horizon=1)
    env, first = dream()
    out = branched_returns(env, first, agent.policy, agent.critic, who, choose, gamma, torch.Generator().manual_seed(5))
    env, first = dream()
    with torch.no_grad():
        logits, _ = agent.policy.step(
            first.obs.flatten(0, 1), agent.policy.initial_state(W * N), torch.ones(W * N, dtype=torch.bool)
        )
        actions = sample_actions(mask_logits(logits, first.action_mask.flatten(0, 1)), torch.Generator().manual_seed(5))
        actions = actions.view(W, N)
        actions[torch.arange(W), who] = choose
        s = env.step(actions)
        value, _ = agent.critic.step(s.final_state.repeat_interleave(N, 0), torch.arange(N).repeat(W), {},
                                     torch.zeros(W * N, dtype=torch.bool))  # fmt: skip
        value = agent.critic.value_norm.denormalize(value).view(W, N)[torch.arange(W), who]
    own = s.reward[torch.arange(W), who]
    torch.testing.assert_close(out["own"], own)
    torch.testing.assert_close(out["team"], s.reward.mean(-1))
    torch.testing.assert_close(out["valued"], own + gamma * s.discount[torch.arange(W), who] * value)
    torch.testing.assert_close(out["negative"], own.clamp(max=0))
    assert (out["ended"] == 0).all(), "expected terminations never end an agent"


@pytest.mark.parametrize("persist", [False, True])
def test_branched_returns_persist_keeps_the_deciding_agents_action_for_the_horizon(mpe, persist):
    """Two imagined steps by hand: at the second the deciding agent takes the actor's draw, or with ``persist`` its
    first action again (every MPE move is always offered); the others take the actor's draws throughout."""
    model, agent = mpe
    (W, N, gamma), (who, choose), dream = _branching(model, horizon=2)
    env, first = dream()
    out = branched_returns(env, first, agent.policy, None, who, choose, gamma, torch.Generator().manual_seed(5),
                           persist=persist)  # fmt: skip
    env, s = dream()
    g, h, resets = torch.Generator().manual_seed(5), agent.policy.initial_state(W * N), torch.ones(W * N, dtype=torch.bool)
    own, weight, taken = torch.zeros(W), torch.ones(W), []
    with torch.no_grad():
        for t in range(2):
            logits, h = agent.policy.step(s.obs.flatten(0, 1), h, resets)
            actions = sample_actions(mask_logits(logits, s.action_mask.flatten(0, 1)), g).view(W, N)
            if t == 0 or persist:
                actions[torch.arange(W), who] = choose
            taken.append(actions[torch.arange(W), who])
            s = env.step(actions)
            own += gamma**t * weight * s.reward[torch.arange(W), who]
            weight = weight * s.discount[torch.arange(W), who]
            resets = torch.zeros(W * N, dtype=torch.bool)
    torch.testing.assert_close(out["own"], own)
    assert "valued" not in out
    assert torch.equal(taken[0], choose)
    assert torch.equal(taken[1], choose) == persist, "without persist the second action is the actor's draw"


def test_verdict_targets_cover_agents_with_a_choice_and_repeat_with_the_seed(mpe):
    model, agent = mpe
    config = VerdictConfig(coef=0.5, cells=5, starts=3, samples=2)

    def targets(seed):
        dream = DreamVecEnv(model, 8, 4, seed=0)
        return verdict_targets(agent, dream, config, torch.Generator().manual_seed(seed), seed=seed)

    pt, stats = targets(0)
    A = model.spec.n_actions
    assert pt.obs.shape == (5, model.feature_widths()[0]) and pt.action_mask.shape == pt.target.shape == (5, A)
    assert pt.action_mask.all() and pt.weight == 0.5  # every MPE agent has all five moves
    torch.testing.assert_close(pt.target.sum(-1), torch.ones(5))
    assert stats["verdict_cells"] == 5 and 0 <= stats["verdict_agree"] <= 1 and stats["verdict_spread"] > 0
    again, _ = targets(0)
    other, _ = targets(1)
    assert torch.equal(pt.target, again.target) and torch.equal(pt.obs, again.obs)
    assert not torch.equal(pt.target, other.target)


def test_without_bootstrap_the_critic_does_not_enter_the_verdict(mpe):
    model, agent = mpe
    shifted = copy.deepcopy(agent)
    with torch.no_grad():
        shifted.critic.head.bias.add_(torch.linspace(-3.0, 3.0, shifted.critic.head.bias.numel()))
        for p in shifted.critic.parameters():
            p.mul_(1.5)

    def targets(a, bootstrap):
        config = VerdictConfig(coef=1.0, cells=5, starts=3, samples=2, bootstrap=bootstrap)
        return verdict_targets(a, DreamVecEnv(model, 8, 4, seed=0), config, torch.Generator().manual_seed(0), seed=0)[0]

    assert torch.equal(targets(agent, False).target, targets(shifted, False).target)
    assert not torch.equal(targets(agent, True).target, targets(shifted, True).target)


def test_policy_targets_pull_the_actor_toward_them_and_leave_the_critic_alone():
    agent, storage = toy_rollout()
    obs = torch.randn(6, ToySpec.obs_dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(6, ToySpec.n_actions, dtype=torch.bool)
    mask[:3, 0] = False
    target = torch.zeros(6, ToySpec.n_actions)
    target[:, 2] = 1.0
    pt = PolicyTargets(obs, mask, target, 1.0)

    def p2(a):
        with torch.no_grad():
            logits, _ = a.policy.step(obs, a.policy.initial_state(6), torch.ones(6, dtype=torch.bool))
            return float(torch.softmax(mask_logits(logits, mask), -1)[:, 2].mean())

    plain, pulled = one_update_each(agent, storage, "verdict_loss", "critic", policy_targets=pt)
    for _ in range(10):
        plain.update(copy.deepcopy(storage))
        pulled.update(copy.deepcopy(storage), policy_targets=pt)
    assert p2(pulled) > 0.8 and p2(pulled) > p2(plain) + 0.3, (p2(agent), p2(plain), p2(pulled))


def _small(run_dir, iterations, **kw):
    kw = {"verdict": VerdictConfig(coef=1.0, cells=4, starts=4, samples=2), **kw}
    return ModelBasedConfig(
        iterations=iterations, real_steps=60, num_envs=2, fit_steps=5, dream_updates=2, dream_worlds=8, eval_episodes=1,
        fit=FitConfig(batch_size=4, progress=False), run_dir=str(run_dir), progress=False, **kw,
    )  # fmt: skip


def test_the_loop_logs_the_verdict_and_resumes_exactly(tmp_path):
    """The verdict's draws are seeded by the update count, so a resumed run repeats the uninterrupted one; the targets
    change the actor (off: another run)."""
    straight = run(_small(tmp_path / "a", 2))
    tags = set(EventAccumulator(str(tmp_path / "a")).Reload().Tags()["scalars"])
    assert {"dream/verdict_loss", "dream/verdict_cells", "dream/verdict_agree", "dream/verdict_spread"} <= tags, tags
    run(_small(tmp_path / "b", 1))
    resumed = run(_small(tmp_path / "b", 2, resume=True))
    assert resumed["eval_returns"] == straight["eval_returns"] and resumed["real_returns"] == straight["real_returns"]
    off = run(_small(tmp_path / "c", 2, verdict=VerdictConfig()))
    assert "dream/verdict_loss" not in EventAccumulator(str(tmp_path / "c")).Reload().Tags()["scalars"]
    assert off["eval_returns"][1:] != straight["eval_returns"][1:]


def test_the_verdict_is_refused_on_continuous_actions(tmp_path):
    cfg = _small(tmp_path, 1, env_kwargs={"continuous_actions": True})
    with pytest.raises(ValueError, match="ModelBasedConfig.verdict.coef: .* continuous actions"):
        run(cfg)
