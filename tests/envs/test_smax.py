"""SMAX: clear errors without JaxMARL (always run), and where it is installed the PettingZoo API, the view's
semantics (deaths, wins, truncation, masks, seeding) and the jitted batch against the single env."""

import importlib.metadata
import importlib.util

import gymnasium as gym
import numpy as np
import pytest

from wmenv.envs import make
from wmenv.envs.smax import (
    EXTRA_MAPS,
    INSTALL_SMAX,
    SMAX_MAPS,
    STOP,
    check_smax_installed,
    enable_compilation_cache,
    known_maps,
)
from wmenv.envs.vector import VecEnv

HAVE_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
needs_jaxmarl = pytest.mark.skipif(not HAVE_JAXMARL, reason=f"jaxmarl not installed: {INSTALL_SMAX}")


def test_unknown_map_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown SMAX map 'MMM'; known maps: 3m, 2s3z") as e:
        make("smax:MMM")
    assert all(m in str(e.value) for m in ("3s_vs_5z", "3s_vs_3z", "8m_vs_9m"))
    assert set(known_maps()) == {*SMAX_MAPS, *EXTRA_MAPS}


def test_missing_jaxmarl_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jaxmarl" else real(name, *a))
    with pytest.raises(gym.error.DependencyNotInstalled, match=r'pip install -e "\.\[smax\]"'):
        make("smax:3m")
    with pytest.raises(gym.error.DependencyNotInstalled, match="SMAX needs JaxMARL"):
        VecEnv("smax:3m", num_envs=2, backend="jax")


@needs_jaxmarl
def test_another_jaxmarl_version_is_refused_at_make(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.3.1" if name == "jaxmarl" else real(name))
    with pytest.raises(gym.error.DependencyNotInstalled, match="expected JaxMARL 0.2.x, got jaxmarl 0.3.1"):
        check_smax_installed()


@needs_jaxmarl
def test_a_jax_without_cpu_backend_is_refused_at_make(monkeypatch):
    import jax

    def no_cpu(backend=None):
        raise RuntimeError("Unknown backend cpu")

    monkeypatch.setattr(jax, "devices", no_cpu)
    with pytest.raises(gym.error.DependencyNotInstalled, match="has no CPU backend"):
        make("smax:3m")


class FakeJax:
    """The part of ``jax`` that `enable_compilation_cache` touches."""

    def __init__(self, cache_dir=None):
        self.config = type("Config", (), {"jax_compilation_cache_dir": cache_dir})()
        self.updates = {}
        self.config.update = lambda name, value: self.updates.__setitem__(name, value)


def test_compiled_maps_are_cached_on_disk_where_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("WMENV_JAX_CACHE", str(tmp_path))
    jax = FakeJax()
    enable_compilation_cache(jax)
    assert jax.updates["jax_compilation_cache_dir"] == str(tmp_path)
    assert jax.updates["jax_persistent_cache_min_compile_time_secs"] < 1  # SMAX's many small functions too
    mine = FakeJax("/somewhere/else")
    enable_compilation_cache(mine)
    assert mine.updates == {}, "a cache folder the user set is left alone"
    monkeypatch.setenv("WMENV_JAX_CACHE", "")
    off = FakeJax()
    enable_compilation_cache(off)
    assert off.updates == {}
    monkeypatch.delenv("WMENV_JAX_CACHE")
    default = FakeJax()
    enable_compilation_cache(default)
    assert default.updates["jax_compilation_cache_dir"].endswith("/.cache/wmenv/jax")


def test_jax_backend_refuses_other_envs():
    with pytest.raises(ValueError, match="backend: 'jax' steps only JAX envs"):
        VecEnv("mpe:simple_spread_v3", num_envs=2, backend="jax")


@pytest.fixture(scope="module")
def env():
    if not HAVE_JAXMARL:
        pytest.skip(f"jaxmarl not installed: {INSTALL_SMAX}")
    return make("smax:3m")


def _random(env, rng):
    return {a: int(rng.choice(np.flatnonzero(env.action_mask(a)))) for a in env.agents}


@needs_jaxmarl
def test_spec_and_spaces(env):
    env, spec = env
    assert spec.agents == ("ally_0", "ally_1", "ally_2") and spec.n_actions == 5 + 3 and spec.action_masked
    assert spec.episode_limit == 101 and spec.obs_dim == 13 * 2 + 13 * 3 + 10  # unit_list: 13 per other unit, 10 own
    assert spec.state_dim == 6 * (4 + 6) + 1
    assert spec.extra["unit_types"] == ["marine"] * 6
    _, spec2 = make("smax:3s_vs_4z")
    assert spec2.n_agents == 3 and spec2.n_actions == 5 + 4
    assert spec2.extra["unit_types"] == ["stalker"] * 3 + ["zealot"] * 4


@needs_jaxmarl
def test_parallel_api():
    from pettingzoo.test import parallel_api_test

    env, _ = make("smax:3m", masked_action="noop")
    parallel_api_test(env, num_cycles=150)


@needs_jaxmarl
def test_seeded_episodes_repeat_and_deaths_leave(env):
    env, spec = env
    runs = []
    for seed in (3, 3, 4):
        obs, infos = env.reset(seed=seed)
        rng, trace, left = np.random.default_rng(0), [obs["ally_0"].copy()], []
        assert all(i["won"] is False and i["action_mask"][STOP] for i in infos.values())
        while env.agents:
            acting = list(env.agents)
            obs, rew, term, trunc, infos = env.step(_random(env, rng))
            assert set(obs) == set(rew) == set(term) == set(infos) == set(acting)
            assert len(set(rew.values())) == 1, "one team reward"
            gone = [a for a in acting if term[a] or trunc[a]]
            assert set(env.agents) == set(acting) - set(gone)
            assert all("action_mask" in infos[a] for a in env.agents) and not any("action_mask" in infos[a] for a in gone)
            left += gone
            trace.append(obs.get("ally_0", np.zeros(spec.obs_dim)).copy())
        assert sorted(left) == list(spec.agents)
        runs.append(np.stack(trace))
    assert runs[0].shape == runs[1].shape and np.array_equal(runs[0], runs[1])
    assert runs[0].shape != runs[2].shape or not np.array_equal(runs[0], runs[2])


@needs_jaxmarl
def test_heuristic_allies_win_and_the_win_is_reported(env):
    """JaxMARL's heuristic wins about half of 3m battles: a win ends with every ally terminated, won in infos and
    metrics, and the +1 bonus in the last reward; random play (its floor) loses."""
    env, spec = env
    outcomes = []
    for seed in range(8):
        env.reset(seed=seed)
        while env.agents:
            acting = list(env.agents)
            obs, rew, term, trunc, infos = env.step(env.heuristic_actions())
        won = infos[acting[0]]["won"]
        assert env.episode_metrics() == {"won": float(won)}
        if won:
            assert all(term[a] and not trunc[a] for a in acting) and rew[acting[0]] >= 1.0
        outcomes.append(won)
    assert any(outcomes) and not all(outcomes)


@needs_jaxmarl
def test_step_limit_truncates_living_allies():
    """SMAX's ``max_steps=3`` gives 4 steps (it tests the limit before counting the step): ``episode_limit``."""
    env, spec = make("smax:3m", max_steps=3, enemy_shoots=False)
    assert spec.episode_limit == 4
    env.reset(seed=0)
    for _ in range(3):
        env.step(dict.fromkeys(env.agents, STOP))
        assert len(env.agents) == 3
    obs, rew, term, trunc, infos = env.step(dict.fromkeys(env.agents, STOP))
    assert env.agents == [] and all(trunc.values()) and not any(term.values())
    assert env.episode_metrics() == {"won": 0.0}
    assert env.state()[-1] == 1.0  # the elapsed fraction


@needs_jaxmarl
def test_bad_actions_are_named(env):
    env, spec = env
    env.reset(seed=0)
    masked = int(np.flatnonzero(~env.action_mask("ally_0"))[0])  # attacks on enemies out of range
    with pytest.raises(ValueError, match="ally_0"):
        env.step({**dict.fromkeys(env.agents, STOP), "ally_0": masked})
    with pytest.raises(ValueError, match="ally_1"):
        env.step({**dict.fromkeys(env.agents, STOP), "ally_1": spec.n_actions})
    vec = VecEnv("smax:3m", num_envs=2, backend="jax")
    vec.reset()
    actions = np.full((2, 3), STOP)
    actions[1, 2] = masked
    with pytest.raises(ValueError, match=r"actions\[1, 2\] \(ally_2\): action \d is masked"):
        vec.step(actions)
    actions[1, 2] = 99
    with pytest.raises(ValueError, match=r"expected an integer in \[0, 8\), got 99"):
        vec.step(actions)
    with pytest.raises(TypeError, match="integer actions"):
        vec.step(actions.astype(np.float32))


@needs_jaxmarl
def test_jax_batch_equals_the_sync_backend():
    """Copy i of the jitted batch plays exactly the episodes of a single env reset with seed + i."""
    E, rng = 3, np.random.default_rng(1)
    jax_vec, sync_vec = VecEnv("smax:3m", num_envs=E, seed=5, backend="jax"), VecEnv("smax:3m", num_envs=E, seed=5)
    a, b = jax_vec.reset(), sync_vec.reset()
    ends = wins = 0
    for t in range(120):
        for k in ("obs", "state", "reward", "final_obs", "final_state", "episode_return"):
            np.testing.assert_allclose(getattr(a, k), getattr(b, k), atol=1e-5, err_msg=f"{k} at step {t}")
        for k in ("alive", "action_mask", "terminated", "truncated", "done", "episode_length"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), f"{k} at step {t}"
        assert a.episode_metrics == b.episode_metrics
        for ia, ib in zip(a.infos, b.infos):
            assert ia.keys() == ib.keys()
            for agent in ia:
                assert ia[agent]["won"] == ib[agent]["won"] and ia[agent].keys() == ib[agent].keys()
        ends, wins = ends + int(a.done.sum()), wins + sum(m.get("won", 0.0) for m in a.episode_metrics)
        assert all(getattr(a, k).flags.writeable for k in ("obs", "state", "alive", "action_mask", "done")), "torch reads them"
        actions = np.array([[rng.choice(np.flatnonzero(a.action_mask[e, n])) for n in range(3)] for e in range(E)])
        a, b = jax_vec.step(actions), sync_vec.step(actions)
    assert ends >= E, "several episodes ended (auto-reset was exercised)"


@needs_jaxmarl
def test_both_learners_run_on_smax_and_log_win_rates(tmp_path):
    """Model-free MAPPO on the jitted batch and the model-based loop on the sync backend: a few hundred steps each,
    greedy evaluations logged with ``eval/won``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.model_based import ModelBasedConfig, run
    from agents.train import TrainConfig, train
    from wmenv.fit import FitConfig

    mf = train(TrainConfig(env_id="smax:3m", backend="jax", total_steps=400, num_envs=4, eval_every=400, eval_episodes=2,
                           run_dir=str(tmp_path / "mf"), progress=False, torch_threads=1))  # fmt: skip
    assert mf.env_steps == 400 and [s for s, _ in mf.eval_returns] == [0, 400]
    mb = run(ModelBasedConfig(env_id="smax:3m", iterations=1, real_steps=202, num_envs=2, fit_steps=5, dream_updates=1,
                              dream_worlds=8, fit=FitConfig(batch_size=4), eval_episodes=2, policy="mlp", progress=False,
                              run_dir=str(tmp_path / "mb")))  # fmt: skip
    assert mb["real_steps"] >= 202
    for run_dir in ("mf", "mb"):
        won = EventAccumulator(str(tmp_path / run_dir)).Reload().Scalars("eval/won")
        assert len(won) == 2 and all(0.0 <= e.value <= 1.0 for e in won)
