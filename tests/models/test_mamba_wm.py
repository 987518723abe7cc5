"""MAMBA world model: fits real data, respects absorbing states, imagines deterministically, checkpoints round-trip."""

import json

import numpy as np
import pytest
import torch

from wmenv.data.collect import random_replay
from wmenv.envs import make
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@pytest.fixture(scope="module")
def mpe():
    return random_replay("mpe:simple_spread_v3", 800)


@pytest.fixture(scope="module")
def flatland():
    return random_replay("flatland:5", 400, dense_reward=True)


def test_small_preset_fits_real_mpe_data(mpe, tmp_path):
    replay, spec = mpe
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    history = fit(model, replay, FitConfig(steps=120, batch_size=8, seq_len=20, progress=False, run_dir=str(tmp_path)))
    first, last = (np.mean(history["loss"][:10]), np.mean(history["loss"][-10:]))
    assert last < 0.5 * first, (first, last)
    assert np.mean(history["obs"][-10:]) < 0.5 * np.mean(history["obs"][:10])
    assert (tmp_path / "model" / "model.safetensors").is_file() and list(tmp_path.glob("events.out.tfevents.*"))


def test_flatland_loss_has_every_term_and_ignores_absent_agents_observations(flatland):
    replay, spec = flatland
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    batch = replay.sample(4, 30, generator=0)
    batch["alive"][:, :, 0] = False  # agent 0 absent everywhere: its observations must not count
    _, stats = model.loss(batch)
    assert set(stats) == {"obs", "reward", "cont", "action_mask", "info", "kl", "kl_prior"}
    garbage = {**batch, "obs": batch["obs"].clone()}
    garbage["obs"][:, :, 0] = 1e6
    torch.manual_seed(1)
    model.eval()
    a = model.loss(batch)[1]["obs"]
    torch.manual_seed(1)
    b = model.loss(garbage)[1]["obs"]
    assert a == pytest.approx(b)


def test_imagination_is_seeded_and_shaped(flatland):
    _, spec = flatland
    model = MAMBAWorldModel(spec, preset("small")).eval()
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        state = model.initial(6, generator=g)
        for _ in range(4):
            state, pred = model.imagine(state, torch.zeros(6, spec.n_agents, dtype=torch.long), generator=g, decode=True)
        runs.append((state, pred))
    (s1, p1), (s2, p2) = runs
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and torch.equal(p1.reward, p2.reward)
    assert (
        p1.reward.shape == (6, 5) and p1.action_mask.shape == (6, 5, spec.n_actions) and p1.obs.shape == (6, 5, spec.obs_dim)
    )
    assert ((p1.cont >= 0) & (p1.cont <= 1)).all()
    assert model.features(s1).shape == (6, 5, 64 + 64) and model.critic_features(s1).shape == (6, 5 * 128)


def test_checkpoint_round_trip_and_refusals(mpe, flatland, tmp_path):
    replay, spec = mpe
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).eval()
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m", spec).eval()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.initial(2, g1)["deter"], again.initial(2, g2)["deter"])
    with pytest.raises(ValueError, match="was fitted on env"):
        load_model(tmp_path / "m", flatland[1])
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["rssm"]["deter"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot be loaded into the saved configuration"):
        load_model(tmp_path / "m", spec)
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(ValueError, match="no readable world-model config.json"):
        load_model(tmp_path / "m", spec)
    with pytest.raises(ValueError, match="replay: recorded for env"):
        fit(MAMBAWorldModel(flatland[1], preset("small")), replay, FitConfig(steps=1, progress=False))


def test_continuous_actions_are_refused():
    pytest.importorskip("gymnasium_robotics")
    _, spec = make("gym:Pendulum-v1")
    with pytest.raises(ValueError, match="needs discrete actions"):
        MAMBAWorldModel(spec, preset("small"))
    with pytest.raises(ValueError, match=r"name: expected one of \['smac', 'flatland', 'small'\]"):
        preset("huge")
