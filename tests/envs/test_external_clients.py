"""External clients of the PettingZoo views: SuperSuit's stable-baselines3 recipe (with ``black_death_v3``, since
agents may finish apart) on a real env and on a dream, and the empty step after an episode's end it relies on."""

import numpy as np
import pytest
import torch

from wmenv.dream import DreamEnv
from wmenv.envs import make
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

ss = pytest.importorskip("supersuit")


def sb3_recipe(env, copies: int = 2):
    """PettingZoo's documented recipe: black death, one vec env per agent, concatenated for stable-baselines3."""
    vec = ss.pettingzoo_env_to_vec_env_v1(ss.black_death_v3(env))
    return ss.concat_vec_envs_v1(vec, copies, num_cpus=0, base_class="stable_baselines3")


def dream_env(seed: int = 0) -> DreamEnv:
    _, spec = make("mpe:simple_spread_v3")
    torch.manual_seed(seed)  # an unfitted model: its agents end at random steps, apart from each other
    return DreamEnv(MAMBAWorldModel(spec, preset("small")), seed=seed, horizon=10)


@pytest.mark.parametrize("which", ["real", "dream"])
def test_supersuit_stable_baselines3_recipe_runs_across_episode_ends(which):
    """60 steps of 2 copies x 3 agents through SuperSuit's recipe, across several episode ends."""
    env = make("mpe:simple_spread_v3")[0] if which == "real" else dream_env()
    vec = sb3_recipe(env)
    obs = vec.reset()
    assert obs.shape[0] == vec.num_envs == 6
    dones = 0
    rng = np.random.default_rng(0)
    for _ in range(60):
        obs, rewards, done, _ = vec.step(rng.integers(0, 5, vec.num_envs))
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()
        dones += int(done.sum())
    assert dones >= 6  # every slot has ended an episode at least once


@pytest.mark.parametrize("which", ["real", "dream"])
def test_an_empty_step_after_the_end_returns_empty_dicts_and_anything_else_is_refused(which):
    """After the episode's end, step({}) gives five empty dicts (PettingZoo's own envs do); actions for agents that are
    gone, or any step before the first reset, raise naming what was given."""
    env = make("mpe:simple_spread_v3")[0] if which == "real" else dream_env()
    before = r"^step\(\) called with no live agents: call reset\(\) first \(got actions for \[\]\)$"
    with pytest.raises(RuntimeError, match=before):
        env.step({})
    env.reset(seed=0)
    while env.agents:
        env.step({a: 0 for a in env.agents})
    assert env.step({}) == ({}, {}, {}, {}, {})
    with pytest.raises(RuntimeError, match=r"no live agents: call reset\(\) first \(got actions for \['agent_0'\]\)$"):
        env.step({"agent_0": 0})
