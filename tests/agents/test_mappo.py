"""MAPPO: masked sampling, collection semantics, dead agents, chunked recurrence, learning, checkpoints, configs."""

import copy
import shutil
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from toyvec import ToySpec, ToyVecEnv

from agents.gae import gae
from agents.mappo import MAPPO, MAPPOConfig, ppo_policy_loss
from agents.policies.base import log_prob_entropy, mask_logits
from agents.policies.gru import GRUPolicyConfig
from agents.train import TrainConfig, latest_checkpoint, load_checkpoint, save_checkpoint, train
from wmenv.envs import make
from wmenv.envs.vector import VecEnv

MPE = "mpe:simple_spread_v3"


@pytest.fixture
def toy_env():
    return ToyVecEnv()


pytestmark = pytest.mark.usefixtures("one_thread")


def _agent(spec=None, seed=0, **cfg):
    torch.manual_seed(seed)
    return MAPPO(spec or ToySpec(), MAPPOConfig(**cfg), seed=seed)


def test_masked_actions_never_sampled():
    """act never samples a masked action, samples every available one, and greedy picks an available action."""
    agent = _agent()
    g = torch.Generator().manual_seed(0)
    B, A = 4096, ToySpec.n_actions
    mask = torch.rand(B, A, generator=g) < 0.5
    mask[torch.arange(B), torch.randint(A, (B,), generator=g)] = True  # at least one available per row
    obs = torch.randn(B, ToySpec.obs_dim, generator=g) * 3
    counts = torch.zeros(B, A)
    for _ in range(5):  # 20k samples
        actions, log_probs, _ = agent.act(obs, agent.policy.initial_state(B), torch.ones(B, dtype=torch.bool), mask)
        assert mask[torch.arange(B), actions].all(), "a masked action was sampled"
        assert torch.isfinite(log_probs).all()
        counts[torch.arange(B), actions] += 1
    # every available action does get sampled (the near-uniform initial policy has no reason to avoid any)
    assert (counts.sum(0) > 0).eq(mask.any(0)).all() and (counts[mask].sum() == 5 * B)
    greedy, _, _ = agent.act(obs, agent.policy.initial_state(B), torch.ones(B, dtype=torch.bool), mask, deterministic=True)
    assert mask[torch.arange(B), greedy].all()


def test_masked_logits_entropy_and_gradients():
    """Masked logits give the two-action log-probability and entropy, finite gradients and zero gradient on masked logits."""
    logits = torch.randn(6, 4, requires_grad=True)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 1:3] = False
    masked = mask_logits(logits, mask)
    log_prob, entropy = log_prob_entropy(masked, torch.zeros(6, dtype=torch.long))
    two = torch.log_softmax(logits[:, [0, 3]], -1)
    torch.testing.assert_close(log_prob, two[:, 0])
    torch.testing.assert_close(entropy, -(two.exp() * two).sum(-1))
    (log_prob.sum() + entropy.sum()).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 1:3] == 0).all()
    with pytest.raises(ValueError, match="action_mask: expected at least one available action"):
        mask_logits(logits, torch.zeros(6, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"action_mask: expected shape \(6, 4\)"):
        mask_logits(logits, mask[:, :3])


def test_collect_ends_bootstrap_and_resets(toy_env):
    """Per-agent ends, truncation bootstrap from the final state, resets and episode stats (toy env: death at 3, limit 5)."""
    agent = _agent(rollout_length=7)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    carry, episodes = agent.collect(toy_env, storage, carry)
    d, tr, alive, resets = storage.dones, storage.truncated, storage.alive, storage.resets
    # agent 1 of env 0 terminates on step 2 (its 3rd): an end without bootstrap, then it is dead until the reset
    assert d[2, 0, 1] and not tr[2, 0, 1] and not alive[3:5, 0, 1].any() and alive[5, 0, 1]
    # the episode limit truncates every live agent on step 4; everyone restarts on step 5
    assert d[4].all() and tr[4].sum() == 5 and not tr[4, 0, 1]
    assert resets[0].all() and resets[5].all() and resets[3, 0, 1] and resets.sum() == 2 * 3 * 2 + 1
    assert d.sum() == 2 * 3 + 1
    # the bootstrap value is the critic's value of the *final* state, continuing the critic's recurrent state
    E, N = toy_env.num_envs, ToyVecEnv.N
    h, vals = agent.critic.initial_state(E * N), []
    agent_ids = torch.arange(N).repeat(E)
    with torch.no_grad():
        for t in range(5):
            v, h = agent.critic.step(storage.state[t].repeat_interleave(N, 0), agent_ids, h, storage.resets[t].flatten())
            vals.append(v)
        final_state = torch.tensor(np.array([[1.0, np.cos(5.0), e, 1.0, 1.0] for e in range(E)]), dtype=torch.float32)
        boot, _ = agent.critic.step(final_state.repeat_interleave(N, 0), agent_ids, h, torch.zeros(E * N, dtype=torch.bool))
    torch.testing.assert_close(storage.values[:5], torch.stack(vals).view(5, E, N))
    torch.testing.assert_close(storage.bootstrap_values[4][tr[4]], boot.view(E, N)[tr[4]])
    assert (storage.bootstrap_values[:4] == 0).all()
    # episode statistics; the masked action 2 of agent 0 never reached the env (the env asserts it)
    assert episodes.lengths.tolist() == [5, 5] and episodes.returns.shape == (2, N)
    torch.testing.assert_close(torch.as_tensor(episodes.returns).sum(), (storage.rewards[:5]).sum())
    assert not (storage.actions[:, :, 0] == 2).any()


def test_a_steps_discount_is_stored_and_multiplies_gamma(toy_env):
    """A step with a ``discount`` (a dream with expected terminations) is stored and enters GAE as a factor on γ;
    steps without one (real envs) store 1."""
    agent = _agent(rollout_length=4, normalize_advantages=False)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    agent.collect(toy_env, storage, carry)
    assert torch.equal(storage.discounts, torch.ones(4, toy_env.num_envs, ToyVecEnv.N))
    plain_adv, _ = agent.advantages(storage)
    factors = torch.linspace(0.2, 0.9, 4 * toy_env.num_envs * ToyVecEnv.N).reshape(4, toy_env.num_envs, -1)

    class Discounted(ToyVecEnv):
        calls = 0

        def step(self, actions):
            out = super().step(actions)
            self.calls += 1
            return SimpleNamespace(**{f.name: getattr(out, f.name) for f in fields(out)}, discount=factors[self.calls - 1])

    env = Discounted()
    storage, carry = agent.new_storage(env.num_envs), agent.start(env)
    agent.collect(env, storage, carry)
    assert torch.equal(storage.discounts, factors)
    adv, _ = agent.advantages(storage)
    vn = agent.critic.value_norm
    expected, _ = gae(storage.rewards, vn.denormalize(storage.values), storage.dones, storage.truncated,
                      vn.denormalize(storage.bootstrap_values), vn.denormalize(storage.last_values), agent.config.gamma,
                      agent.config.gae_lambda, discounts=factors)  # fmt: skip
    torch.testing.assert_close(adv, expected)
    assert not torch.allclose(adv, plain_adv)


@pytest.mark.parametrize("chunk_length", [3, 7, 1])
def test_chunks_recompute_stored_log_probs_and_values(toy_env, chunk_length):
    """Restarting each chunk from its stored recurrent state reproduces what was computed while acting."""
    agent = _agent(rollout_length=7, chunk_length=chunk_length)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    for _ in range(2):  # the second rollout starts from carried, non-initial states
        carry, _ = agent.collect(toy_env, storage, carry)
    adv, ret = agent.advantages(storage)
    chunks = storage.chunks(chunk_length, adv, ret)
    assert len(chunks) == -(-7 // chunk_length) * toy_env.num_envs * ToyVecEnv.N
    with torch.no_grad():
        logits = mask_logits(agent.policy.forward_sequence(chunks.obs, chunks.resets, chunks.actor_state), chunks.action_mask)
        log_probs, _ = log_prob_entropy(logits, chunks.actions)
        values = agent.critic.forward_sequence(chunks.state, chunks.agent, chunks.resets, chunks.critic_state)
    inside = chunks.log_probs != 0  # padding is zero
    assert chunks.valid.sum() == storage.alive.sum()
    torch.testing.assert_close(log_probs[chunks.valid], chunks.log_probs[chunks.valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values[inside], chunks.values[inside], rtol=1e-5, atol=1e-5)


def _perturb_dead(storage, seed):
    g = torch.Generator().manual_seed(seed)
    dead = ~storage.alive  # (T, E, N)
    assert dead.any()
    for k in ("obs", "log_probs", "values", "rewards"):
        x = storage.data[k]
        noise = torch.randn(x.shape, generator=g) * 5
        x[dead] = noise[dead]
    storage.data["actions"][dead] = torch.randint(ToyVecEnv.A, storage.actions.shape, generator=g)[dead]
    for st in (storage.actor_state, storage.critic_state):
        for v in st.values():
            v[dead] = torch.randn(v.shape, generator=g)[dead]


def test_dead_agents_excluded_from_loss(toy_env):
    """Rewriting dead agents' data leaves the update unchanged; changing a living agent's reward does not."""
    agent = _agent(rollout_length=10, epochs=3, num_minibatches=2)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    agent.collect(toy_env, storage, carry)
    assert (~storage.alive).sum() == 2 * 2  # agent 1 of env 0 is dead on 2 steps of each of the two episodes
    results = []
    for perturb in (None, "dead", "alive"):
        a, s = copy.deepcopy(agent), copy.deepcopy(storage)
        if perturb == "dead":
            _perturb_dead(s, 1)
        elif perturb == "alive":
            s.data["rewards"][0, 1, 2] += 1.0  # one living agent's reward
        metrics = a.update(s)
        assert all(np.isfinite(v) for v in metrics.values())
        results.append(torch.cat([p.detach().flatten() for p in a.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-7)
    assert (results[2] - results[0]).abs().max() > 1e-5, "the check must see a change in living agents' data"


def test_short_training_run_on_mpe():
    """A few real iterations: finite losses, and each update improves the PPO objective on its own data."""
    agent = _agent(make(MPE)[1], epochs=5)
    with VecEnv(MPE, num_envs=4, seed=0) as vec:
        storage, carry = agent.new_storage(4), agent.start(vec)
        for _ in range(3):
            carry, episodes = agent.collect(vec, storage, carry)
            assert len(episodes.lengths) == 4 and (episodes.lengths == 25).all()
            adv, ret = agent.advantages(storage)  # the targets the update sees, kept fixed for the comparison
            batch = storage.chunks(agent.config.chunk_length, adv, ret)
            before = _objective(agent, batch)
            metrics = agent.update(storage)
            after = _objective(agent, batch)
            assert all(np.isfinite(v) for v in metrics.values()), metrics
            assert after[0] < before[0] - 1e-3, "the clipped surrogate did not improve"
            assert after[1] < before[1], "the critic's error on the rollout did not decrease"
            assert 0 < metrics["entropy"] <= np.log(5) + 1e-6


def _objective(agent, batch):
    """(PPO policy loss, critic squared error in return units) of a whole rollout under the current networks."""
    with torch.no_grad():
        logits = mask_logits(agent.policy.forward_sequence(batch.obs, batch.resets, batch.actor_state), batch.action_mask)
        log_probs, _ = log_prob_entropy(logits, batch.actions)
        policy_loss, _ = ppo_policy_loss(log_probs, batch.log_probs, batch.advantages, batch.valid, agent.config.clip)
        values = agent.critic.forward_sequence(batch.state, batch.agent, batch.resets, batch.critic_state)
        error = (agent.critic.value_norm.denormalize(values) - batch.returns)[batch.valid]
    return float(policy_loss), float((error**2).mean())


def test_checkpoint_roundtrip_gives_identical_continuation(tmp_path):
    """A saved and loaded agent continues bit for bit like the original; old checkpoints are pruned."""
    spec = make(MPE)[1]
    cfg = TrainConfig(num_envs=2, mappo=MAPPOConfig(epochs=2), run_dir=str(tmp_path), keep_checkpoints=1)
    agent = _agent(spec, epochs=2)
    with VecEnv(MPE, num_envs=2, seed=0) as vec:
        storage, carry = agent.new_storage(2), agent.start(vec)
        agent.collect(vec, storage, carry)
        agent.update(storage)
    path = save_checkpoint(tmp_path, agent, cfg, spec, {"iteration": 1, "env_steps": 50, "episodes": 2})
    restored = _agent(spec, seed=123, epochs=2)  # other weights and sampling stream until loaded
    assert load_checkpoint(path, restored, spec) == {"iteration": 1, "env_steps": 50, "episodes": 2}
    for (k, a), (_, b) in zip(agent.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), k
    runs = []
    for a in (agent, restored):
        with VecEnv(MPE, num_envs=2, seed=7) as vec:
            storage, carry = a.new_storage(2), a.start(vec)
            for _ in range(2):
                carry, _ = a.collect(vec, storage, carry)
                a.update(storage)
            runs.append((storage.actions.clone(), torch.cat([p.detach().flatten() for p in a.parameters()])))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # atomic writes leave no temporary files; keep_checkpoints prunes older folders
    save_checkpoint(tmp_path, agent, cfg, spec, {"iteration": 2, "env_steps": 100, "episodes": 4})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000000000100"] and latest_checkpoint(tmp_path).name == "step_000000000100"
    other = make(MPE, N=2)[1]
    with pytest.raises(ValueError, match="checkpoint was made for env"):
        load_checkpoint(latest_checkpoint(tmp_path), _agent(other), other)


def test_train_resume_is_deterministic(tmp_path):
    """Resuming a training run from its checkpoint gives the same metrics and weights as a copy of it."""
    small = dict(num_envs=2, eval_every=0, progress=False, mappo=MAPPOConfig(epochs=2), checkpoint_every=50)
    first = train(TrainConfig(total_steps=100, run_dir=str(tmp_path / "a"), **small))
    assert first.env_steps == 100 and first.iterations == 2 and np.isfinite(list(first.metrics.values())).all()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runs = [train(TrainConfig(total_steps=150, run_dir=str(tmp_path / r), resume=True, **small)) for r in "ab"]
    assert runs[0].env_steps == runs[1].env_steps == 150 and runs[0].iterations == 3
    assert runs[0].metrics == runs[1].metrics and runs[0].train_returns == runs[1].train_returns
    assert {"policy_loss", "value_loss"} <= set(runs[0].metrics) and len(runs[0].train_returns) == 1  # not vacuous
    spec = make(MPE)[1]
    agents = [_agent(spec, seed=i) for i in range(2)]
    counters = [load_checkpoint(latest_checkpoint(tmp_path / r), a, spec) for r, a in zip("ab", agents)]
    assert counters[0] == counters[1] == {"iteration": 3, "env_steps": 150, "episodes": 6}
    for (k, x), (_, y) in zip(agents[0].state_dict().items(), agents[1].state_dict().items()):
        assert torch.equal(x, y), k


def test_bad_config_values():
    """Bad MAPPOConfig / TrainConfig values and bad update calls raise with the field named."""
    for kwargs, match in [
        (dict(lr=-1.0), "MAPPOConfig.lr: expected a positive"),
        (dict(epochs=0), "MAPPOConfig.epochs: expected an integer >= 1, got 0"),
        (dict(chunk_length=2.5), "MAPPOConfig.chunk_length"),
        (dict(gamma=1.5), r"MAPPOConfig.gamma: expected a value in \[0, 1\], got 1.5"),
        (dict(clip=float("nan")), "MAPPOConfig.clip"),
        (dict(entropy_coef=-0.01), "MAPPOConfig.entropy_coef: expected a non-negative"),
        (dict(device="gpu0"), "MAPPOConfig.device"),
    ]:
        with pytest.raises(ValueError, match=match):
            MAPPOConfig(**kwargs)
    with pytest.raises(ValueError, match="TrainConfig.num_envs: expected an integer >= 1, got 0"):
        TrainConfig(num_envs=0)
    with pytest.raises(ValueError, match="TrainConfig.eval_every"):
        TrainConfig(eval_every=-1)
    assert TrainConfig(total_steps=1001, num_envs=4).iterations == 11  # derived: ceil(1001 / (4 * 25))
    with pytest.raises(TypeError, match="config: expected a MAPPOConfig"):
        MAPPO(ToySpec(), TrainConfig())
    continuous = type("Spec", (ToySpec,), {"discrete": False})()  # a Gaussian actor (test_mappo_continuous.py)
    assert not MAPPO(continuous).discrete and MAPPO(continuous).new_storage(1).actions.dtype == torch.float32
    agent = _agent()
    with pytest.raises(ValueError, match="lr_scale"):
        agent.update(agent.new_storage(1), lr_scale=0.0)
    with pytest.raises(RuntimeError, match="were not written"):
        agent.update(agent.new_storage(1))


def test_checkpoint_corrupt_or_other_architecture_raises_value_error(tmp_path):
    """Loading a checkpoint into another architecture, a truncated file or broken JSON raises ValueError."""
    spec = make(MPE)[1]
    cfg = TrainConfig(num_envs=2, run_dir=str(tmp_path))
    path = save_checkpoint(tmp_path, _agent(spec), cfg, spec, {"iteration": 0, "env_steps": 0, "episodes": 0})
    wide = MAPPO(spec, MAPPOConfig(), policy_config=GRUPolicyConfig(hidden=32))
    with pytest.raises(ValueError, match="another architecture.*expected"):
        load_checkpoint(path, wide, spec)
    blob = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        load_checkpoint(path, _agent(spec), spec)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(path, _agent(spec), spec)


def test_choice_entropy_counts_only_rows_with_a_choice(toy_env):
    """``choice_entropy`` is the mean entropy over valid rows with more than one available action, and
    ``choice_fraction`` their share: rows with a single action (entropy 0) do not dilute it."""
    agent = _agent(rollout_length=6)
    storage, carry = agent.new_storage(toy_env.num_envs), agent.start(toy_env)
    agent.collect(toy_env, storage, carry)
    adv, ret = agent.advantages(storage)
    batch = storage.chunks(agent.config.chunk_length, adv, ret)
    single = torch.zeros(batch.valid.shape, dtype=torch.bool)
    single[::2] = True  # every other chunk offers one action only (the one taken)
    one_hot = torch.nn.functional.one_hot(batch.actions.long(), ToyVecEnv.A).bool()
    batch.action_mask[single] = one_hot[single]
    with torch.no_grad():
        _, stats = agent.loss(batch)
        logits = mask_logits(agent.policy.forward_sequence(batch.obs, batch.resets, batch.actor_state), batch.action_mask)
        _, entropy = log_prob_entropy(logits, batch.actions)
    choice = batch.valid & ~single & (batch.action_mask.sum(-1) > 1)
    assert 0 < choice.sum() < batch.valid.sum()
    torch.testing.assert_close(stats["choice_entropy"], entropy[choice].mean())
    torch.testing.assert_close(stats["choice_fraction"], choice.sum() / batch.valid.sum())
    assert stats["choice_entropy"] > stats["entropy"] + 1e-3, "single-action rows must not count"
