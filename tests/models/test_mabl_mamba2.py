"""MABL with Mamba-2 dynamics on both levels: parallel windows equal the step-by-step recurrence of each level (resets
and absent agents included), a continued state equals the whole window, the execution filter is observe's agent level,
what makes MABL MABL still holds (the agent features see neither s nor other agents; the agent prior reads the global
prior sample), and the paths through training, imagination, checkpoints and the dream work."""

import pytest
import torch
from pettingzoo.test import parallel_api_test
from test_mabl import B, N, T, _step_filters, grad_of, posteriors, spec_of, window

import wmenv
from wmenv.data.collect import random_replay
from wmenv.fit import load_model, save_model
from wmenv.models.mabl import MABLConfig, MABLWorldModel, mabl_preset
from wmenv.models.registry import build_model
from wmenv.models.world_model import restart_rows

SIZES = {"dynamics": "mamba2", "ssm_layers": 2, "d_state": 3, "headdim": 2}
"""H_a 6 and H_g 8 (expand 2: 12 and 16 channels in heads of 2), state 3."""


def tiny2(global_level="per_agent", seed=0, dtype=torch.float64, **kw) -> MABLWorldModel:
    torch.manual_seed(seed)
    cfg = MABLConfig(agent_deter=6, global_deter=8, stoch=2, classes=3, hidden=8, head_hidden=9, head_layers=1,
                     global_level=global_level, **SIZES, **kw)  # fmt: skip
    return MABLWorldModel(spec_of(), cfg).to(dtype).eval()


def window64(seed=0) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in window(seed).items()}


@pytest.mark.parametrize("global_level", ["per_agent", "shared", "none"])
def test_windows_equal_the_step_by_step_recurrence_of_both_levels(global_level):
    """Feeding the parallel pass's own posteriors through one `_img_step`-style step per row (blank where a window
    restarts) gives every row's h^a, h^g and prior logits; the posteriors read the embeddings alone."""
    model, batch = tiny2(global_level), window64()
    G = {"per_agent": N, "shared": 1, "none": 0}[global_level]
    with torch.no_grad():
        posts, priors = posteriors(model, batch)
        prev = model._prev_actions(batch["action"], batch["reset"], batch["alive"])
        state, blank = model.blank(B), model.blank(B)
        for t in range(T):
            state = restart_rows(state, blank, batch["reset"][:, t])
            deter_a, blocks = model._agent_deter(state, prev[:, t])
            torch.testing.assert_close(deter_a, posts["deter_a"][:, t], atol=1e-10, rtol=0)
            state |= blocks | {"stoch_a": posts["stoch_a"][:, t]}
            if G:
                deter_g, blocks_g = model._global_deter(state, prev[:, t])
                torch.testing.assert_close(deter_g, posts["deter_g"][:, t, :G], atol=1e-10, rtol=0)
                logits_pg = model._split(model.global_prior(deter_g))
                torch.testing.assert_close(model._to_agents(logits_pg), priors["logits_g"][:, t], atol=1e-10, rtol=0)
                state |= blocks_g | {"stoch_g": posts["stoch_g"][:, t]}
        embed = model.obs_encoder(batch["obs"]) * batch["alive"][..., None]
        torch.testing.assert_close(posts["logits_a"], model.agent_post(embed).view(B, T, N, 2, 3))
    assert set(priors) == ({"logits_a", "logits_g"} if G else {"logits_a"})


def test_a_continued_state_equals_the_whole_window():
    """observe on the first rows, then on the rest from that state = the whole window (no global level: the only
    draws are the agent posteriors', row after row); the state carries each block's state."""
    model, batch = tiny2("none"), window64()
    batch["reset"][1, 3] = False
    args = lambda sl: (batch["obs"][:, sl], batch["action"][:, sl], batch["reset"][:, sl])  # noqa: E731
    with torch.no_grad():
        whole, _ = posteriors(model, batch, seed=2)
        g = torch.Generator().manual_seed(2)
        first = model.observe(*args(slice(0, 3)), generator=g, alive=batch["alive"][:, :3])
        prev = model._prev_actions(batch["action"], batch["reset"], batch["alive"])[:, 3:]
        rest, _ = model.observe_sequence(batch["obs"][:, 3:], prev, batch["reset"][:, 3:], None, first, g,
                                         batch["alive"][:, 3:])  # fmt: skip
    assert set(first) == {"deter_a", "stoch_a", "logits_a", "conv_a0", "ssm_a0", "conv_a1", "ssm_a1"}
    assert first["ssm_a0"].shape == (B, N, 6, 2, 3)  # (heads, P, d_state)
    for k in rest:
        torch.testing.assert_close(rest[k], whole[k][:, 3:], atol=1e-10, rtol=0)


def test_execution_filter_is_observes_agent_level():
    """The agents' own filters stepped along the windows give observe's features (no global level: the same draws);
    a bi-level model's filter is its agent level alone."""
    batch = window64()
    none = tiny2("none")
    with torch.no_grad():
        posts, _ = posteriors(none, batch, seed=3)
        torch.testing.assert_close(_step_filters(none, batch, 3), none.features(posts), atol=1e-10, rtol=0)
        bilevel = tiny2("per_agent", seed=1)
        agent_level = {k: v for k, v in bilevel.state_dict().items()
                       if k.split(".")[0] in ("obs_encoder", "agent_dynamics", "agent_post")}  # fmt: skip
        none.load_state_dict(agent_level, strict=False)
        torch.testing.assert_close(_step_filters(bilevel, batch, 3), _step_filters(none, batch, 3), atol=0, rtol=0)
    assert set(bilevel.filter_initial(2)) == {"deter_a", "stoch_a", "conv_a0", "ssm_a0", "conv_a1", "ssm_a1"}
    keys = r"\['conv_a0', 'conv_a1', 'deter_a', 'ssm_a0', 'ssm_a1', 'stoch_a'\], got \['deter_a', 'stoch_a'\]"
    with pytest.raises(ValueError, match=rf"state: expected a filter state with keys {keys}"):
        bilevel.filter_step({"deter_a": torch.zeros(1, 6), "stoch_a": torch.zeros(1, 6)}, torch.zeros(1, 3),
                            torch.tensor([-1]), torch.tensor([True]), torch.tensor([0]))  # fmt: skip


@pytest.mark.parametrize("global_level", ["per_agent", "shared"])
def test_mabls_information_flow_holds_with_mamba2(global_level):
    """Agent features see neither s nor other agents' observations; the global posterior reads s; the agent prior of
    row t reads the global prior sample, which s_t cannot reach (s_{t-1} can, through z^g_{t-1} and h^g_t)."""
    model, batch = tiny2(global_level), window64()
    obs, state = batch["obs"].clone().requires_grad_(), batch["state"].clone().requires_grad_()
    posts, priors = posteriors(model, batch, obs=obs, state=state)
    feat0 = model.features(posts)[:, :, 0]
    assert grad_of(feat0, state).abs().max() == 0
    others = grad_of(feat0, obs)
    assert others[:, :, 1:].abs().max() == 0 and others[:, :, 0].abs().max() > 0
    assert grad_of(posts["logits_g"][:, :, 0], state).abs().max() > 0
    for t in (1, 2):
        g = grad_of(priors["logits_a"][0, t], state)
        assert g[0, t].abs().max() == 0 and g[0, t - 1].abs().max() > 0, t


def test_gradients_stop_at_resets():
    model, batch = tiny2("none"), window64()
    obs = batch["obs"].clone().requires_grad_()
    posts, _ = posteriors(model, batch, obs=obs)
    grad = grad_of(posts["deter_a"][1, 4, 0], obs)  # world 1 restarts at row 3
    assert grad[1, :3].abs().max() == 0 and grad[1, 4:].abs().max() == 0 and grad[1, 3].abs().sum() > 0


def test_loss_trains_both_levels_blocks_imagination_and_the_dream():
    model = tiny2("per_agent", dtype=torch.float32).train()
    total, stats = model.loss(window())
    total.backward()
    for name in ("agent_dynamics", "global_dynamics", "agent_post", "global_post", "agent_prior", "global_prior"):
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in getattr(model, name).parameters()), name
    assert not hasattr(model, "agent_cell") and not hasattr(model, "global_cell")
    assert {"kl_agent", "kl_global"} <= set(stats)
    model.eval()
    state = model.initial(4, torch.Generator().manual_seed(0))
    nxt, pred = model.imagine(state, torch.tensor([[1, 2, 3]] * 4), torch.Generator().manual_seed(1))
    assert set(nxt) == set(model.blank(1)) and pred.reward.shape == (4, N)
    assert nxt["ssm_g1"].shape == (4, N, 8, 2, 3)


def test_presets_config_errors_and_the_real_pipeline(tmp_path):
    small = mabl_preset("small-mamba2", global_level="shared")
    assert (small.dynamics, small.headdim, small.global_level, small.agent_deter) == ("mamba2", 32, "shared", 64)
    assert mabl_preset("smac-mamba2").headdim == 64
    headdim = r"Mamba2Config.headdim: expected a divisor of d_inner=12, got 5"
    with pytest.raises(ValueError, match=rf"^MABLConfig: the Mamba-2 dynamics of agent_deter=6: {headdim}$"):
        MABLConfig(agent_deter=6, dynamics="mamba2", headdim=5)
    with pytest.raises(ValueError, match=r"^MABLConfig.dynamics: expected 'gru' or 'mamba2', got 'lstm'$"):
        MABLConfig(dynamics="lstm")
    replay, spec = random_replay("mpe:simple_spread_v3", 300, num_envs=2)
    torch.manual_seed(0)
    model = build_model("mabl", spec, "small-mamba2")
    loss, _ = model.loss(replay.sample(4, 10, generator=0))
    loss.backward()
    assert torch.isfinite(loss)
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m", spec, kind="mabl")
    assert again.config == model.config and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                                                   model.state_dict().values()))  # fmt: skip
    parallel_api_test(wmenv.DreamEnv(model.eval(), start=replay, seed=0), num_cycles=20)
