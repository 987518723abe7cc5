"""MasksInObservations: a masked env (Flatland, and a dream of it) passes PettingZoo's API test with the default
masked_action="raise", because the test samples from the mask it finds in the observation (issue 18, item 5)."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

from wmenv.dream import DreamEnv
from wmenv.envs import make
from wmenv.envs.masks import MasksInObservations
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


def test_flatland_passes_pettingzoos_api_test_with_masks_in_observations():
    env, spec = make("flatland:5", max_episode_steps=60)
    assert env.masked_action == "raise"
    wrapped = MasksInObservations(env)
    space = wrapped.observation_space("agent_0")
    assert space["action_mask"] == gym.spaces.Box(0, 1, (spec.n_actions,), np.int8)
    obs, infos = wrapped.reset(seed=0)
    for a, o in obs.items():
        np.testing.assert_array_equal(o["action_mask"], infos[a]["action_mask"].astype(np.int8))
        assert o["observation"].shape == space["observation"].shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parallel_api_test(wrapped, num_cycles=80)


def test_a_dream_with_masks_passes_too_and_unmasked_envs_get_all_ones():
    _, spec = make("flatland:5")
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).eval()
    parallel_api_test(MasksInObservations(DreamEnv(model, seed=0)), num_cycles=40)
    # pettingzoo's parallel_seed_test samples without masks (unlike its API test): there, masked_action="noop"
    parallel_seed_test(lambda: MasksInObservations(DreamEnv(model, seed=0, masked_action="noop")))
    mpe = MasksInObservations(make("mpe:simple_spread_v3")[0])
    obs, _ = mpe.reset(seed=0)
    assert all((o["action_mask"] == 1).all() and o["action_mask"].shape == (5,) for o in obs.values())
    with pytest.raises(TypeError, match="masks are for Discrete ones"):
        MasksInObservations(make("gym:Pendulum-v1")[0])
    with pytest.raises(TypeError, match="expected a PettingZoo ParallelEnv"):
        MasksInObservations(object())
