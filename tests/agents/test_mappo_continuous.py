"""MAPPO with continuous actions (issue 14, item 1): the diagonal-Gaussian twins of the discrete tests in test_mappo.py."""

import copy
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from toyvec import ToyContinuousSpec, ToyContinuousVecEnv, ToyVecEnv

from agents.mappo import MAPPO, MAPPOConfig
from agents.policies import make_policy
from agents.policies.base import gaussian_log_prob_entropy, gaussian_sample
from agents.train import TrainConfig, evaluate, latest_checkpoint, policy_from_checkpoint, train
from wmenv.envs import make

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy_env():
    return ToyContinuousVecEnv()


def _agent(seed=0, policy=None, **cfg):
    torch.manual_seed(seed)
    return MAPPO(ToyContinuousSpec(), MAPPOConfig(**cfg), policy=policy, seed=seed)


def test_gaussian_log_prob_and_entropy_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 7, 3, generator=g, requires_grad=True)
    log_std = (torch.randn(3, generator=g) * 0.5).requires_grad_()
    actions = torch.randn(5, 7, 3, generator=g) * 2
    dims = torch.ones(5, 7, 3, dtype=torch.bool)
    dims[:, :, 2] = torch.rand(5, 7, generator=g) < 0.5  # some rows have two dims
    log_prob, entropy = gaussian_log_prob_entropy(mean, log_std, actions, dims)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(log_prob, (normal.log_prob(actions) * dims).sum(-1))
    torch.testing.assert_close(entropy, (normal.entropy() * dims).sum(-1))
    (log_prob.sum() + entropy.sum()).backward()
    assert (mean.grad[..., 2][~dims[..., 2]] == 0).all(), "padded dims must not move the mean"
    assert torch.isfinite(log_std.grad).all() and (mean.grad[dims] != 0).any()
    with pytest.raises(ValueError, match=r"actions, dims: expected shape \(5, 7, 3\)"):
        gaussian_log_prob_entropy(mean, log_std, actions[..., :2], dims)


def test_gaussian_samples_have_the_policy_mean_and_std():
    mean, log_std = torch.tensor([[0.3, -2.0]]).repeat(50_000, 1), torch.tensor([-1.0, 0.5])
    x = gaussian_sample(mean, log_std, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), log_std.exp(), atol=0.02, rtol=0)
    assert torch.equal(gaussian_sample(mean, log_std, deterministic=True), mean)


def test_collect_clips_at_the_env_and_scores_the_unclipped_sample(toy_env):
    agent = _agent(rollout_length=7, log_std_init=1.0)  # std e: most samples fall outside [-1, 1]
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    agent.collect(toy_env, storage, carry)  # the env asserts every action it gets is clipped, finite, float32
    a = storage.actions
    assert a.shape == (7, 2, 3, 3) and a.dtype == torch.float32
    assert (a.abs() > 1).float().mean() > 0.3, "the stored actions are the unclipped samples"
    assert np.abs(toy_env.last_actions).max() <= 1 and (toy_env.last_actions[:, 2, 2] == 0).all(), "padded dim sent as 0"
    with torch.no_grad():  # the stored log-probabilities score the unclipped samples under the policy at collection
        mean = agent.policy.forward_sequence(
            storage.obs.permute(1, 2, 0, 3).flatten(0, 1),
            storage.resets.permute(1, 2, 0).flatten(0, 1),
            agent.policy.initial_state(2 * 3),
        )  # (E*N, T, A)
        lp, _ = gaussian_log_prob_entropy(
            mean, agent.log_std, a.permute(1, 2, 0, 3).flatten(0, 1), storage.action_mask.permute(1, 2, 0, 3).flatten(0, 1)
        )
    torch.testing.assert_close(lp, storage.log_probs.permute(1, 2, 0).flatten(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_length", [3, 7])
def test_chunks_recompute_stored_log_probs(toy_env, chunk_length):
    agent = _agent(rollout_length=7, chunk_length=chunk_length)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    for _ in range(2):
        carry, _ = agent.collect(toy_env, storage, carry)
    chunks = storage.chunks(chunk_length, *agent.advantages(storage))
    with torch.no_grad():
        mean = agent.policy.forward_sequence(chunks.obs, chunks.resets, chunks.actor_state)
        log_probs, _ = gaussian_log_prob_entropy(mean, agent.log_std, chunks.actions, chunks.action_mask)
    v = chunks.valid
    torch.testing.assert_close(log_probs[v], chunks.log_probs[v], rtol=1e-5, atol=1e-5)


def test_dead_agents_and_padded_dims_are_excluded_from_the_loss(toy_env):
    """Rewriting dead agents' data (actions included) or a padded action dim leaves the update unchanged; a living
    agent's reward does not."""
    agent = _agent(rollout_length=10, epochs=3, num_minibatches=2)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    agent.collect(toy_env, storage, carry)
    dead = ~storage.alive
    assert dead.sum() == 4
    results = []
    for perturb in (None, "dead", "padded", "alive"):
        a, s = copy.deepcopy(agent), copy.deepcopy(storage)
        g = torch.Generator().manual_seed(1)
        if perturb == "dead":
            for k in ("obs", "log_probs", "values", "rewards", "actions"):
                x = s.data[k]
                x[dead] = (torch.randn(x.shape, generator=g) * 5)[dead]
        elif perturb == "padded":
            s.data["actions"][:, :, 2, 2] = torch.randn(s.actions[:, :, 2, 2].shape, generator=g) * 5
        elif perturb == "alive":
            s.data["rewards"][0, 1, 2] += 1.0
        metrics = a.update(s)
        assert all(np.isfinite(v) for v in metrics.values())
        results.append(torch.cat([p.detach().flatten() for p in a.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=1e-7)
    assert (results[3] - results[0]).abs().max() > 1e-5, "the check must see a change in living agents' data"


@pytest.mark.parametrize("kind", ["gru", "mamba", "sp-mamba", "mlp"])
def test_every_actor_kind_learns_a_continuous_target(kind):
    """PPO moves each actor's Gaussian mean towards the rewarded action (a_0 = 0.5) and shrinks its std."""
    torch.manual_seed(0)
    spec = ToyContinuousSpec()
    policy = make_policy(kind, spec.obs_dim, spec.n_actions)
    agent = _agent(policy=policy, rollout_length=10, epochs=4, lr=3e-3, entropy_coef=0.0, log_std_init=-0.5)
    env = ToyContinuousVecEnv(num_envs=8)
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)

    def greedy_error():
        s = env.reset()
        obs = torch.as_tensor(s.obs).flatten(0, 1)
        mean = agent.policy.step(obs, agent.policy.initial_state(obs.shape[0]), torch.ones(obs.shape[0], dtype=bool))[0]
        return float((mean[:, 0] - 0.5).abs().mean())

    with torch.no_grad():
        before = greedy_error()
    for _ in range(50):
        carry, _ = agent.collect(env, storage, carry)
        metrics = agent.update(storage)
        assert all(np.isfinite(v) for v in metrics.values())
    with torch.no_grad():
        after = greedy_error()
    assert after < 0.5 * before, f"{kind}: |mean - 0.5| went from {before:.3f} to {after:.3f}"
    assert agent.log_std[0] < -0.5, "the std of the rewarded dim shrinks"


def test_policy_kind_and_config_errors():
    with pytest.raises(ValueError, match="MAPPOConfig.log_std_init: expected a number in"):
        MAPPOConfig(log_std_init=float("nan"))
    agent = _agent()
    assert not agent.discrete and agent.log_std.shape == (3,)
    assert any(p is agent.log_std for p in agent.optimizer.param_groups[0]["params"]), "log-std learns at the actor lr"
    assert ToyVecEnv.A == ToyContinuousSpec.n_actions


@pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics not installed")
def test_mamujoco_trains_checkpoints_evaluates_and_resumes(tmp_path):
    """A real continuous env end to end: HalfCheetah 2x3 (two 3-dim agents) and Humanoid 9|8 (padded widths)."""
    for env_id, name in (("mamujoco:HalfCheetah:2x3", "cheetah"), ("mamujoco:Humanoid:9|8", "humanoid")):
        cfg = TrainConfig(env_id=env_id, total_steps=160, num_envs=2, eval_every=80, eval_episodes=1,
                          checkpoint_every=80, run_dir=str(tmp_path / name), progress=False,
                          env_kwargs={"max_episode_steps": 40}, mappo=MAPPOConfig(rollout_length=40, epochs=2))  # fmt: skip
        result = train(cfg)
        assert result.env_steps == 160 and all(np.isfinite(r) for _, r in result.eval_returns)
        policy, saved = policy_from_checkpoint(latest_checkpoint(tmp_path / name))
        assert saved["env_id"] == env_id
        assert train(dataclasses.replace(cfg, resume=True, total_steps=240)).env_steps == 240
    agent = MAPPO(make("mamujoco:HalfCheetah:2x3")[1])
    assert np.isfinite(evaluate(agent, "mamujoco:HalfCheetah:2x3", episodes=1, seed=0, max_episode_steps=20))
    from exports.onnx import export_agent

    path = export_agent(policy, tmp_path / "agent.onnx", spec=make("mamujoco:Humanoid:9|8")[1])  # Gaussian: greedy mean
    assert path.stat().st_size > 0  # parity: tests/exports/test_onnx_continuous.py
