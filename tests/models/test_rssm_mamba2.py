"""The multi-agent RSSM with Mamba-2 over time: parallel windows equal the step-by-step recurrence, resets, continued
states, the encoder-only posterior, and clear errors for impossible sizes."""

import pytest
import torch
import torch.nn.functional as F

from wmenv.models.rssm import RSSMConfig
from wmenv.models.rssm_mamba2 import Mamba2RSSM

B, T, N, D, A = 2, 7, 3, 4, 5
CONFIG = RSSMConfig(deter=8, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=1, comm_heads=2, dropout=0.0,
                    dynamics="mamba2", ssm_layers=2, d_state=3, headdim=4)  # fmt: skip


def rssm_of(dtype: torch.dtype = torch.float64) -> Mamba2RSSM:
    torch.manual_seed(0)
    return Mamba2RSSM(D, A, N, CONFIG).to(dtype).eval()


def windows(dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows where world 1 restarts at row 4 and agent 2 of world 0 is absent from row 3 on."""
    g = torch.Generator().manual_seed(seed)
    alive = torch.ones(B, T, N, dtype=torch.bool)
    alive[0, 3:, 2] = False
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 0] = resets[1, 4] = True
    prev = F.one_hot(torch.randint(0, A, (B, T, N), generator=g), A).to(dtype) * (~resets)[..., None, None]
    return {"obs": torch.randn(B, T, N, D, generator=g, dtype=dtype), "prev": prev, "resets": resets, "alive": alive}


def test_windows_equal_the_step_by_step_recurrence():
    """Every row's h of the parallel pass = blank state, comm over [z_{t-1}, a_{t-1}] of the agents heard, one Mamba-2
    step per agent (blank again where a window restarts); the priors read h, the posteriors the observation alone."""
    rssm, w = rssm_of(), windows()
    with torch.no_grad():
        posts, priors = rssm.observe_sequence(w["obs"], w["prev"], w["resets"], None, torch.Generator().manual_seed(1),
                                              w["alive"])  # fmt: skip
        state = rssm.blank(B)
        for t in range(T):
            blank = rssm.blank(B)
            state = {k: torch.where(w["resets"][:, t].view(-1, *[1] * (v.dim() - 1)), blank[k], v) for k, v in state.items()}
            state["stoch"] = posts["stoch"][:, t - 1] if t else state["stoch"]
            state["stoch"] = torch.where(w["resets"][:, t, None, None], 0.0, state["stoch"])
            senders = w["alive"][:, t, None, :].expand(-1, N, -1)
            state = rssm.img_step(state, w["prev"][:, t], hears=senders)
            torch.testing.assert_close(posts["deter"][:, t], state["deter"], atol=1e-10, rtol=0)
            torch.testing.assert_close(priors["logits"][:, t], state["logits"], atol=1e-10, rtol=0)
        embed = rssm.obs_encoder(w["obs"]) * w["alive"][..., None]
        torch.testing.assert_close(posts["logits"], rssm.post_net(embed).view(B, T, N, 2, 3))
    assert posts["stoch"].shape == (B, T, N, 6) and set(priors) == {"deter", "logits"}


def test_a_continued_state_equals_the_whole_window():
    """observe_last on the first rows, then observe_sequence of the rest from that state = the whole window's rows
    (the same generator: its numbers come in the same order); the state holds each block's state."""
    rssm, w = rssm_of(), windows()
    w["resets"][1, 4] = False
    w["prev"][1, 4] = F.one_hot(torch.tensor(1), A)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        whole, _ = rssm.observe_sequence(w["obs"], w["prev"], w["resets"], None, g.manual_seed(2), w["alive"])
        cut = 3
        first = rssm.observe_last(w["obs"][:, :cut], w["prev"][:, :cut], w["resets"][:, :cut], None, g.manual_seed(2),
                                  w["alive"][:, :cut])  # fmt: skip
        rest, _ = rssm.observe_sequence(w["obs"][:, cut:], w["prev"][:, cut:], w["resets"][:, cut:], first, g,
                                        w["alive"][:, cut:])  # fmt: skip
    assert set(first) == {"deter", "stoch", "logits", "conv0", "ssm0", "conv1", "ssm1"}
    assert first["ssm0"].shape == (B, N, 4, 4, 3)  # (H heads, P, d_state)
    for k in rest:
        torch.testing.assert_close(rest[k], whole[k][:, cut:], atol=1e-10, rtol=0)


def test_imagining_from_an_observed_state_continues_its_prior():
    """img_step from observe_last of rows < t with a_{t-1} gives the prior h_t of the window's row t."""
    rssm, w = rssm_of(), windows()
    with torch.no_grad():
        _, priors = rssm.observe_sequence(w["obs"], w["prev"], w["resets"], None, torch.Generator().manual_seed(3))
        state = rssm.observe_last(w["obs"][:, :-1], w["prev"][:, :-1], w["resets"][:, :-1], None,
                                  torch.Generator().manual_seed(3))  # fmt: skip
        nxt = rssm.img_step(state, w["prev"][:, -1])
    torch.testing.assert_close(nxt["deter"], priors["deter"][:, -1], atol=1e-10, rtol=0)
    torch.testing.assert_close(nxt["logits"], priors["logits"][:, -1], atol=1e-10, rtol=0)


def test_gradients_flow_through_time_and_stop_at_resets():
    """d h_t / d o_s != 0 for s < t inside an episode (through z_s's message and the SSM); = 0 across a reset and
    for s >= t (the posterior of row t reads o_t, but h_t does not)."""
    rssm, w = rssm_of(), windows()
    obs = w["obs"].clone().requires_grad_()
    posts, _ = rssm.observe_sequence(obs, w["prev"], w["resets"], None, torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad(posts["deter"][1, 6, 0].sum(), obs)
    assert grad[1, :4].abs().max() == 0  # before world 1's restart at row 4
    assert grad[1, 6:].abs().max() == 0  # its own row and later
    assert grad[1, 4:6].abs().sum() > 0 and grad[0].abs().max() == 0


def test_impossible_sizes_are_refused():
    headdim = r"Mamba2Config.headdim: expected a divisor of d_inner=16, got 5"
    with pytest.raises(ValueError, match=rf"^RSSMConfig: the Mamba-2 dynamics of deter=8: {headdim}$"):
        RSSMConfig(deter=8, dynamics="mamba2", headdim=5)
    with pytest.raises(ValueError, match=r"^RSSMConfig.dynamics: expected 'gru' or 'mamba2', got 'lstm'$"):
        RSSMConfig(dynamics="lstm")
    with pytest.raises(ValueError, match=r"^RSSMConfig.ssm_layers: expected an integer >= 1, got 0$"):
        RSSMConfig(dynamics="mamba2", ssm_layers=0)
    with pytest.raises(ValueError, match=r"^config.dynamics: Mamba2RSSM runs 'mamba2' dynamics, got 'gru'$"):
        Mamba2RSSM(D, A, N, RSSMConfig())
    RSSMConfig(deter=8, headdim=5)  # the GRU does not read the Mamba-2 sizes
