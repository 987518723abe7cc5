"""Heterogeneous agents (`mpe:simple_speaker_listener_v4`: speaker obs 3 / 3 actions, listener obs 11 / 5 actions)
through the dream: each agent's true spaces, no padded action offered or accepted, PettingZoo's API and seed tests,
and both learners run on it."""

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

from agents.mappo import MAPPOConfig
from agents.model_based import ModelBasedConfig, run
from agents.train import TrainConfig, train
from wmenv.dream import DreamEnv, DreamVecEnv
from wmenv.envs import make
from wmenv.fit import FitConfig
from wmenv.models.registry import build_model

ENV = "mpe:simple_speaker_listener_v4"


@pytest.fixture(scope="module", params=["mamba", "mabl"])
def model(request):
    _, spec = make(ENV)
    torch.manual_seed(0)
    return build_model(request.param, spec, "small").eval()


@pytest.mark.parametrize("obs", ["latent", "decoded"])
def test_the_dream_shows_each_agent_its_true_spaces_and_passes_pettingzoos_tests(model, obs):
    """MAMBA and MABL: speaker Discrete(3), listener Discrete(5); decoded observations of widths 3 and 11 (latent: F
    for both);
    parallel_api_test (which samples from action_space) and parallel_seed_test pass."""
    env = DreamEnv(model, seed=0, obs=obs)
    assert env.action_space("speaker_0") == DreamEnv(model).action_space("speaker_0") and env.action_space("speaker_0").n == 3
    assert env.action_space("listener_0").n == 5
    feature = model.feature_widths()[0]
    widths = (3, 11) if obs == "decoded" else (feature, feature)
    assert tuple(env.observation_space(a).shape[0] for a in ("speaker_0", "listener_0")) == widths
    first, _ = env.reset(seed=1)
    assert tuple(first[a].shape[0] for a in ("speaker_0", "listener_0")) == widths
    parallel_api_test(env, num_cycles=100)
    parallel_seed_test(lambda: DreamEnv(model, seed=0, obs=obs))


def test_the_batched_dream_never_offers_or_takes_a_padded_action(model):
    """DreamVecEnv's masks hold the speaker's actions 3 and 4 unavailable; taking one is refused naming its range."""
    vec = DreamVecEnv(model, 4, seed=0)
    step = vec.reset()
    assert not step.action_mask[:, 0, 3:].any() and step.action_mask[:, 0, :3].all() and step.action_mask[:, 1].all()
    with pytest.raises(ValueError, match=r"^actions: agent 'speaker_0' in world 0: expected an action in \[0, 3\), got 3$"):
        vec.step(torch.tensor([[3, 0]] * 4))
    for _ in range(20):  # auto-resets included: a present speaker's mask stays its own (absent agents': all True)
        step = vec.step(torch.tensor([[2, 4]] * 4))
        assert not (step.action_mask[:, 0, 3:] & step.alive[:, :1]).any()


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_model_free_and_model_based_learners_run_on_heterogeneous_agents(tmp_path, kind):
    """MAPPO on the real env and the model-based loop with either world model run."""
    result = train(TrainConfig(env_id=ENV, total_steps=100, num_envs=2, eval_every=0, progress=False,
                               mappo=MAPPOConfig(epochs=1), run_dir=str(tmp_path / "mf")))  # fmt: skip
    assert result.env_steps == 100 and np.isfinite(list(result.metrics.values())).all()
    mb = run(ModelBasedConfig(env_id=ENV, model_kind=kind, iterations=1, real_steps=60, num_envs=2, fit_steps=5,
                              dream_updates=1, fit=FitConfig(batch_size=4, progress=False), dream_worlds=8, eval_episodes=1,
                              run_dir=str(tmp_path / "mb"), progress=False))  # fmt: skip
    assert [s for s, _ in mb["eval_returns"]] == [0, 60] and np.isfinite([r for _, r in mb["eval_returns"]]).all()
