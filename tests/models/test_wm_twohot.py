"""The MAMBA world model's symlog two-hot reward head: config, initialization, loss and prediction by hand, checkpoints."""

import dataclasses
import json

import pytest
import torch
from test_wm_math import CONT_TARGET, hand_batch, hand_prev_actions, tiny_config, tiny_model, tiny_spec
from torch import nn

from wmenv.fit import load_model, save_model
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel
from wmenv.models.twohot import symexp, symlog, symlog_bins, twohot_encode


def test_config_default_is_todays_mse_head_and_255_bins():
    """New fields default to the paper's scalar head (old configs rebuild today's model) and DreamerV3's 255 bins."""
    c = MAMBAConfig()
    assert (c.reward_head, c.reward_bins) == ("mse", 255)
    assert MAMBAConfig(reward_head="twohot", reward_bins=3).reward_bins == 3  # the smallest odd count


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reward_head": "huber"}, r"^MAMBAConfig.reward_head: expected 'mse' or 'twohot', got 'huber'$"),
        ({"reward_bins": 4}, r"^MAMBAConfig.reward_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got 4$"),
        ({"reward_bins": 1}, r"^MAMBAConfig.reward_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got 1$"),
        ({"reward_bins": -1}, r"^MAMBAConfig.reward_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got -1$"),
        ({"reward_bins": 255.0}, r"^MAMBAConfig.reward_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got 255.0$"),
        ({"reward_bins": True}, r"^MAMBAConfig.reward_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got True$"),
    ],
)
def test_config_rejects_bad_reward_heads_and_bin_counts(kwargs, match):
    """A wrong head name or bin count raises a ValueError naming the field."""
    with pytest.raises(ValueError, match=match):
        MAMBAConfig(**kwargs)


def test_twohot_head_shape_zero_init_and_bins_buffer():
    """K outputs with a zero output layer (a uniform categorical: reward 0); the bins follow the dtype, not the checkpoint."""
    model = tiny_model(reward_head="twohot", reward_bins=7)
    linears = [m for m in model.reward_head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(11, 9), (9, 7)]
    assert (linears[-1].weight == 0).all() and (linears[-1].bias == 0).all() and (linears[0].weight != 0).any()
    torch.testing.assert_close(model.reward_bins, symlog_bins(7))
    plain = tiny_model()
    assert "reward_bins" not in model.state_dict() and not hasattr(plain, "reward_bins")
    assert model.state_dict().keys() == plain.state_dict().keys()
    pred = model.predict(model.initial(3))
    assert pred.reward.shape == (3, 2) and pred.reward.abs().max() < 1e-5  # 0 up to rounding of Σ p · bins
    assert model.double().reward_bins.dtype == torch.float64


def test_twohot_loss_and_prediction_match_a_hand_computation():
    """Reward term = mean over all (B, T, N) of -Σ_k twohot(symlog r)_k log softmax_k; predict = symexp(Σ softmax · bins)."""
    model = tiny_model(reward_head="twohot", reward_bins=5)
    with torch.no_grad():
        for p in model.reward_head[-1].parameters():  # away from the zero init, so that the logits matter
            p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p))
    batch = hand_batch()
    batch["reward"] = batch["reward"] * torch.tensor([1.0, 30.0, 1e9, -3.0]).view(1, 4, 1)  # clipped at row 2
    forced = batch["reset"].clone()
    forced[:, 0] = True
    torch.manual_seed(5)
    posts, _ = model.rssm.observe_sequence(
        batch["obs"], hand_prev_actions(batch["action"], forced, batch["alive"]), forced, alive=batch["alive"]
    )
    torch.manual_seed(5)
    total, stats = model.loss(batch)
    bins = torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0])
    with torch.no_grad():
        feat = torch.cat([posts["deter"], posts["stoch"]], -1)
        logits = model.reward_head(feat)  # (2, 4, 2, 5)
        target = twohot_encode(symlog(batch["reward"]), bins)
        reward = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
        cont = nn.functional.binary_cross_entropy_with_logits(
            model.cont_head(feat).squeeze(-1), torch.tensor(CONT_TARGET).float()
        )
    assert stats["reward"] == pytest.approx(float(reward), rel=1e-5)
    assert stats["cont"] == pytest.approx(float(cont), rel=1e-5)
    others = stats["obs"] + stats["cont"] + stats["action_mask"] + stats["info"] + stats["kl"]
    assert total.item() == pytest.approx(others + stats["reward"], rel=1e-5)
    state = {k: v[:, 1] for k, v in posts.items()}
    expected = symexp((torch.softmax(logits[:, 1], -1) * bins).sum(-1))  # (2, 2)
    torch.testing.assert_close(model.predict(state).reward, expected)
    assert model.predict(state).reward.abs().max() > 0.1  # not the zero init


def test_twohot_gradient_reaches_the_reward_head():
    """One Adam step on a constant reward of +10 moves the predicted reward towards it."""
    model = tiny_model(reward_head="twohot", reward_bins=255)
    batch = hand_batch()
    batch["reward"] = torch.full_like(batch["reward"], 10.0)
    opt = torch.optim.Adam(model.reward_head.parameters(), lr=0.05)
    for _ in range(20):
        torch.manual_seed(0)
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.predict(model.initial(2)).reward.mean() > 5


@pytest.mark.parametrize("head", ["mse", "twohot"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards_are_refused(head, bad):
    """A batch with a NaN / inf reward raises a ValueError naming batch['reward'] before any work."""
    model = tiny_model(reward_head=head)
    batch = hand_batch()
    batch["reward"][1, 2, 0] = bad
    batch["reward"][0, 0, 1] = bad
    with pytest.raises(ValueError, match=r"^batch\['reward'\]: expected finite rewards, got 2 non-finite value\(s\)$"):
        model.loss(batch)


def test_checkpoints_without_the_new_fields_load_as_mse_and_twohot_round_trips(tmp_path):
    """A config.json written before the two-hot head (no reward_head / reward_bins) loads today's scalar head."""
    spec = tiny_spec()
    old = tiny_model()
    save_model(tmp_path / "old", old)
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["config"]["reward_head"], meta["config"]["reward_bins"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "old", spec)
    assert loaded.config == old.config and loaded.config.reward_head == "mse"
    new = MAMBAWorldModel(spec, dataclasses.replace(tiny_config(), reward_head="twohot", reward_bins=9))
    save_model(tmp_path / "new", new)
    again = load_model(tmp_path / "new", spec)
    assert again.config.reward_bins == 9 and all(torch.equal(v, again.state_dict()[k]) for k, v in new.state_dict().items())
    torch.testing.assert_close(again.reward_bins, symlog_bins(9))
