"""Dream environments: PettingZoo API and seeding, batched stepping, auto-reset, bad actions, NaN."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from pettingzoo.test import parallel_api_test, parallel_seed_test
from scripted_wm import ScriptedStarts, ScriptedWorldModel, make_spec
from torch.testing import assert_close

import wmenv
from wmenv.data.collect import random_replay
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@pytest.fixture(scope="module")
def flatland_model():
    _, spec = make("flatland:5")
    torch.manual_seed(0)
    return MAMBAWorldModel(spec, preset("small"))


@pytest.fixture(scope="module")
def mpe_model_and_replay():
    replay, spec = random_replay("mpe:simple_spread_v3", 200, num_envs=2)
    torch.manual_seed(0)
    return MAMBAWorldModel(spec, preset("small")), replay


@pytest.mark.parametrize("obs", ["latent", "decoded"])
def test_dream_env_passes_the_pettingzoo_api_test(flatland_model, obs):
    env = wmenv.DreamEnv(flatland_model, obs=obs, seed=0, masked_action="noop")
    parallel_api_test(env, num_cycles=40)
    assert env.observation_space("agent_0") is env.observation_space("agent_0")
    width = flatland_model.spec.obs_dim if obs == "decoded" else 128
    assert env.observation_space("agent_0").shape == (width,) and env.state().shape == (5 * 128,)  # latent critic view


def test_dream_env_is_seeded(flatland_model):
    parallel_seed_test(lambda: wmenv.DreamEnv(flatland_model, masked_action="noop"), num_cycles=30)


def test_dream_env_from_real_contexts_and_its_episode_ends(mpe_model_and_replay):
    model, replay = mpe_model_and_replay
    env = wmenv.DreamEnv(model, start=replay, seed=1, horizon=6)
    obs, infos = env.reset(seed=3)
    assert set(obs) == set(model.spec.agents) and all(np.isfinite(o).all() for o in obs.values())
    steps, ended = 0, {}
    while env.agents:
        live = list(env.agents)
        obs, rewards, terms, truncs, infos = env.step({a: 0 for a in live})
        steps += 1
        assert set(obs) == set(rewards) == set(terms) == set(truncs) == set(live)
        for a in live:
            assert not (terms[a] and truncs[a]), a
            assert truncs[a] == (steps == 6 and not terms[a]), (a, steps)  # the horizon cuts everyone left, only then
            if terms[a] or truncs[a]:
                ended[a] = steps
        assert env.agents == [a for a in live if a not in ended]
    assert 1 <= steps <= 6 and set(ended) == set(model.spec.agents) and max(ended.values()) == steps
    assert env.step({}) == ({}, {}, {}, {}, {})  # as PettingZoo's envs answer after the end (SuperSuit relies on it)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step({model.spec.agents[0]: 0})


def test_bad_actions_are_named(flatland_model):
    env = wmenv.DreamEnv(flatland_model, seed=0)
    _, infos = env.reset(seed=0)
    ok = {a: int(np.flatnonzero(infos[a]["action_mask"])[0]) for a in env.agents}
    agent = env.agents[0]
    with pytest.raises(ValueError, match=rf"^actions: missing actions for live agents \['{agent}'\]"):
        env.step({a: ok[a] for a in env.agents[1:]})  # a live agent without an action
    with pytest.raises(ValueError, match="^actions: unknown agent 'agent_99'"):
        env.step({**ok, "agent_99": 0})
    vec = DreamVecEnv(flatland_model, num_worlds=3, seed=0)
    vec.reset()
    with pytest.raises(ValueError, match=r"actions: expected shape \(3, 5\) \(worlds, agents\), got \(3, 4\)"):
        vec.step(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="actions: expected an integer dtype, got torch.float32"):
        vec.step(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"^actions: agent 'agent_0' in world 0: expected an action in \[0, 5\), got 7$"):
        vec.step(torch.full((3, 5), 7))


def _with_cont_bias(model, bias):
    copy = MAMBAWorldModel(model.spec, preset("small"))
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.cont_head[-1].bias.fill_(bias)
    return copy


def test_vec_env_steps_worlds_in_one_batch_and_auto_resets(mpe_model_and_replay):
    model, _ = mpe_model_and_replay
    forever = DreamVecEnv(_with_cont_bias(model, 30.0), num_worlds=64, horizon=5, seed=0)
    s = forever.reset()
    assert s.obs.shape == (64, 3, 128) and s.state.shape == (64, 3 * 128) and s.alive.all()
    for t in range(1, 11):
        s = forever.step(torch.zeros(64, 3, dtype=torch.long))
        assert bool(s.done.all()) == (t % 5 == 0), t  # truncated by the horizon, then reset in place
        assert bool(s.truncated.all()) == (t % 5 == 0) and not s.terminated.any()
        assert s.alive.all() and torch.isfinite(s.reward).all()
    assert (s.final_obs != 0).any()
    ending = DreamVecEnv(_with_cont_bias(model, -30.0), num_worlds=8, horizon=5, seed=0)
    ending.reset()
    s = ending.step(torch.zeros(8, 3, dtype=torch.long))
    assert s.terminated.all() and s.done.all() and not s.truncated.any()
    a, b = DreamVecEnv(model, num_worlds=8, seed=5), DreamVecEnv(model, num_worlds=8, seed=5)
    ra, rb = a.reset(), b.reset()
    for _ in range(5):
        ra, rb = a.step(torch.zeros(8, 3, dtype=torch.long)), b.step(torch.zeros(8, 3, dtype=torch.long))
    assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward) and torch.equal(ra.alive, rb.alive)


def test_nan_from_the_model_is_reported_with_step_and_agent(mpe_model_and_replay):
    model, _ = mpe_model_and_replay
    broken = MAMBAWorldModel(model.spec, preset("small"))
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.reward_head[-1].bias.fill_(float("nan"))
    vec = DreamVecEnv(broken, num_worlds=2, seed=0)
    vec.reset()
    with pytest.raises(FloatingPointError, match="NaN/inf at step 1 of world 0 for agent 'agent_0'"):
        vec.step(torch.zeros(2, 3, dtype=torch.long))


MASK = [[0.9, 0.5, 0.2, 0.7], [0.1, 0.2, 0.3, 0.4], [0.6, 0.6, 0.6, 0.6]]
"""Scripted availability: agent_0 may take 0 and 3, agent_1 none predicted (so all), agent_2 all."""


def test_an_agent_that_ends_leaves_while_the_world_goes_on():
    """An ending agent reports its last reward and terminated=True once, then leaves: no obs, reward or action after."""
    cont = torch.ones(8, 3)
    cont[2, 1] = 0.0  # agent_1 ends on step 2
    env = wmenv.DreamEnv(ScriptedWorldModel(make_spec(), cont=cont), horizon=4)
    env.reset(seed=0)
    env.step({a: 0 for a in env.agents})
    obs, rewards, terms, truncs, infos = env.step({a: 0 for a in env.agents})
    assert rewards == {"agent_0": 21.0, "agent_1": 22.0, "agent_2": 23.0}
    assert terms == {"agent_0": False, "agent_1": True, "agent_2": False} and not any(truncs.values())
    assert set(obs) == set(infos) == {"agent_0", "agent_1", "agent_2"}
    assert env.agents == ["agent_0", "agent_2"]
    with pytest.raises(
        ValueError, match=r"^actions: agent 'agent_1' is no longer alive; live agents are \['agent_0', 'agent_2'\]"
    ):
        env.step({"agent_0": 0, "agent_1": 0, "agent_2": 0})
    obs, rewards, terms, truncs, infos = env.step({"agent_0": 0, "agent_2": 0})
    assert set(obs) == set(rewards) == set(terms) == set(truncs) == set(infos) == {"agent_0", "agent_2"}
    assert rewards == {"agent_0": 31.0, "agent_2": 33.0}
    obs, rewards, terms, truncs, infos = env.step({"agent_0": 0, "agent_2": 0})
    assert truncs == {"agent_0": True, "agent_2": True} and terms == {"agent_0": False, "agent_2": False}
    assert_close(obs["agent_0"][:3], np.array([4.0, 0.0, -1.0], np.float32))  # the ended episode's last observation
    assert env.agents == []


def test_infos_carry_the_predicted_masks_and_masked_actions_are_refused():
    """infos[agent]["action_mask"] is the predicted availability; masked_action="raise" refuses what it forbids."""
    env = wmenv.DreamEnv(ScriptedWorldModel(make_spec(), mask=[MASK]))
    _, infos = env.reset(seed=0)
    assert_array_equal(infos["agent_0"]["action_mask"], [1, 0, 0, 1])
    assert_array_equal(infos["agent_1"]["action_mask"], [1, 1, 1, 1])
    assert_array_equal(infos["agent_2"]["action_mask"], [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"^actions\['agent_0'\]: action 2 is masked; available actions are \[0, 3\]$"):
        env.step({"agent_0": 2, "agent_1": 0, "agent_2": 0})
    _, _, _, _, infos = env.step({"agent_0": 3, "agent_1": 2, "agent_2": 1})
    assert_array_equal(infos["agent_0"]["action_mask"], [1, 0, 0, 1])
    assert_array_equal(env.vec.model.imagined[-1], [[3, 2, 1]])


def test_noop_mode_replaces_masked_actions_by_the_first_available():
    """masked_action="noop" takes a forbidden action as the agent's first available one."""
    model = ScriptedWorldModel(make_spec(), mask=[[[0.1, 0.1, 0.9, 0.9], *MASK[1:]]])
    env = wmenv.DreamEnv(model, masked_action="noop")
    env.reset(seed=0)
    env.step({"agent_0": 1, "agent_1": 3, "agent_2": 1})
    assert_array_equal(model.imagined[-1], [[2, 3, 1]])


def test_replay_starts_reach_the_pettingzoo_view():
    """DreamEnv(start=replay) observes the posterior of a window drawn with the reset seed + 1."""
    env = wmenv.DreamEnv(ScriptedWorldModel(make_spec()), start=ScriptedStarts(make_spec()), context=2)
    obs, _ = env.reset(seed=4)
    assert_close(obs["agent_2"][2:4], np.array([5002.0, 2.0], np.float32))  # origin 1000 * 5 + agent 2; 2 rows


def test_replay_starts_differ_from_initial_starts(mpe_model_and_replay):
    """start=replay filters real windows (drawn with seed + 1) through model.observe; they differ from model.initial."""
    model, replay = mpe_model_and_replay
    from_replay = DreamVecEnv(model, num_worlds=4, start=replay, context=5, seed=0).reset()
    from_initial = DreamVecEnv(model, num_worlds=4, seed=0).reset()
    assert (from_replay.obs - from_initial.obs).abs().amax(-1).min() > 1e-3  # every (world, agent) differs
    w = replay.sample(4, 5, generator=1)
    posterior = model.observe(
        w["obs"], w["action"], w["reset"], generator=torch.Generator().manual_seed(0), alive=w["alive"].bool()
    )
    assert_close(from_replay.obs, model.features(posterior))
    assert_close(from_initial.obs, model.features(model.initial(4, generator=torch.Generator().manual_seed(0))))


def test_replay_starts_are_seeded(mpe_model_and_replay):
    """Two dreams from the same replay and seed agree through episode ends and restarts."""
    model, replay = mpe_model_and_replay
    a, b = (DreamVecEnv(model, num_worlds=4, start=replay, horizon=2, seed=2) for _ in range(2))
    sa, sb = a.reset(), b.reset()
    for _ in range(3):
        assert_close(sa.obs, sb.obs)
        assert_array_equal(sa.alive, sb.alive)
        sa, sb = a.step(torch.zeros(4, 3, dtype=torch.long)), b.step(torch.zeros(4, 3, dtype=torch.long))
    assert_close(sa.obs, sb.obs)


def test_real_model_masks_are_its_predictions_above_one_half(flatland_model):
    """A fitted-kind model's reported masks are its predicted probabilities > 0.5 (any agent left with none gets all)."""
    vec = DreamVecEnv(flatland_model, num_worlds=16, seed=0)
    s = vec.reset()
    expected = flatland_model.predict(flatland_model.initial(16, generator=torch.Generator().manual_seed(0))).action_mask > 0.5
    expected[~expected.any(-1)] = True
    assert_array_equal(s.action_mask, expected)
    assert (~s.action_mask).any()  # the check is not vacuous: some actions are predicted unavailable
