"""MAMBA world model, term by term: KL balancing, absorbing states, the info loss, heads and configs, on hand-built batches."""

import dataclasses

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.distributions import Categorical, kl_divergence

from wmenv.envs.spec import EnvSpec
from wmenv.models.heads import head_errors
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel, categorical_kl, preset
from wmenv.models.rssm import RSSMConfig


def tiny_spec(masked: bool = True, obs_dim: int = 3, n_actions: int = 4, discrete: bool = True) -> EnvSpec:
    """Two agents, D=3, A=4: every size distinct from the tiny model's."""
    agents = ("a0", "a1")
    act = gym.spaces.Discrete(n_actions) if discrete else gym.spaces.Box(-1, 1, (n_actions,))
    box = gym.spaces.Box(-1, 1, (obs_dim,))
    return EnvSpec(
        "tiny", agents, {a: box for a in agents}, {a: act for a in agents}, gym.spaces.Box(-1, 1, (5,)), masked, None
    )


def tiny_config(**kw) -> MAMBAConfig:
    """H=5, S×K=2×3, hidden 8, E=4, heads width 9: F = 5 + 6 = 11."""
    rssm = RSSMConfig(deter=5, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=1, comm_heads=2, dropout=0.0)
    return MAMBAConfig(rssm=rssm, **{"head_hidden": 9, "head_layers": 1, **kw})


def tiny_model(seed: int = 0, masked: bool = True, **kw) -> MAMBAWorldModel:
    torch.manual_seed(seed)
    return MAMBAWorldModel(tiny_spec(masked), tiny_config(**kw)).eval()


# Hand-built windows, B=2, T=4, N=2.
# Window 0: agent 1 terminates on arriving at row 1 and is absent (zero obs, zero reward) at rows 2-3.
# Window 1: both agents are truncated at row 2; a new episode starts at row 3 (reset), and row 0 is not
# flagged as a reset (the loss must still start the window from the blank state).
ALIVE = [[[1, 1], [1, 1], [1, 0], [1, 0]], [[1, 1], [1, 1], [1, 1], [1, 1]]]
TERMINATED = [[[0, 0], [0, 1], [0, 0], [0, 0]], [[0, 0], [0, 0], [0, 0], [0, 0]]]
TRUNCATED = [[[0, 0], [0, 0], [0, 0], [0, 0]], [[0, 0], [0, 0], [1, 1], [0, 0]]]
RESET = [[1, 0, 0, 0], [0, 0, 0, 1]]
ACTION = [[[1, 2], [3, 0], [2, 0], [0, 0]], [[3, 1], [2, 2], [0, 0], [1, 3]]]
# continuation target = alive and not terminated: 0 on the terminal row and on absent rows, 1 after a truncation
CONT_TARGET = [[[1, 1], [1, 0], [1, 0], [1, 0]], [[1, 1], [1, 1], [1, 1], [1, 1]]]
# acts = alive and not ended (terminated or truncated): where action masks are learned
ACTS = [[[1, 1], [1, 0], [1, 0], [1, 0]], [[1, 1], [1, 1], [0, 0], [1, 1]]]
# acted before = acts[t-1] and no reset at t (row 0 never): where the info loss predicts a_{t-1}
ACTED_BEFORE = [[[0, 0], [1, 1], [1, 0], [1, 0]], [[0, 0], [1, 1], [1, 1], [0, 0]]]


def hand_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    alive = torch.tensor(ALIVE, dtype=torch.bool)
    obs = torch.randn(2, 4, 2, 3, generator=g) * alive[..., None]
    reward = torch.randn(2, 4, 2, generator=g) * alive
    mask = torch.rand(2, 4, 2, 4, generator=g) < 0.6
    mask[~alive] = True  # absent agents' masks are all ones (the replay's convention)
    return {
        "obs": obs,
        "action": torch.tensor(ACTION),
        "reward": reward,
        "terminated": torch.tensor(TERMINATED, dtype=torch.bool),
        "truncated": torch.tensor(TRUNCATED, dtype=torch.bool),
        "alive": alive,
        "action_mask": mask,
        "reset": torch.tensor(RESET, dtype=torch.bool),
    }


def hand_prev_actions(
    actions: torch.Tensor, resets: torch.Tensor, alive: torch.Tensor | None = None, n_actions: int = 4
) -> torch.Tensor:
    """a_{t-1} one-hot at row t; zeros at row 0, at resets and for agents absent at row t, written out by hand."""
    prev = torch.zeros(*actions.shape, n_actions)
    for b in range(actions.shape[0]):
        for t in range(1, actions.shape[1]):
            for n in range(actions.shape[2]):
                if not resets[b, t] and (alive is None or alive[b, t, n]):
                    prev[b, t, n] = F.one_hot(actions[b, t - 1, n], n_actions).float()
    return prev


def test_categorical_kl_matches_torch_distributions():
    """categorical_kl(p, q) = Σ_S KL[p_s || q_s] of (..., S, K) logits, unnormalized logits included."""
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 2, 4, 5, generator=g) * 3, torch.randn(3, 2, 4, 5, generator=g) * 3 + 7
    expected = kl_divergence(Categorical(logits=p), Categorical(logits=q)).sum(-1)  # (3, 2)
    torch.testing.assert_close(categorical_kl(p, q), expected)
    # by hand: p = (1/2, 1/2), q = (1/4, 3/4): ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln(4/3)
    hand = categorical_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 3.0]]).log())
    torch.testing.assert_close(hand, 0.5 * torch.log(torch.tensor(4 / 3)))
    torch.testing.assert_close(categorical_kl(p, p), torch.zeros(3, 2))


def test_loss_terms_match_a_hand_computation_with_absorbing_states():
    """Every loss term on a hand-built batch: absent agents have no obs loss and targets 0 for reward and continuation."""
    model = tiny_model(info_scale=0.5, kl_scale=2.0, kl_balance=0.7)
    batch = hand_batch()
    before = {k: v.clone() for k, v in batch.items()}
    forced = batch["reset"].clone()
    forced[:, 0] = True  # the window starts from the blank state even where row 0 is not an episode start
    torch.manual_seed(5)
    posts, priors = model.rssm.observe_sequence(
        batch["obs"], hand_prev_actions(batch["action"], forced, batch["alive"]), forced, alive=batch["alive"]
    )
    torch.manual_seed(5)
    total, stats = model.loss(batch)
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the loss does not write into the batch
    with torch.no_grad():
        feat = torch.cat([posts["deter"], posts["stoch"]], -1)  # (2, 4, 2, 11)
        alive = batch["alive"]
        obs_err = (model.obs_head(feat) - batch["obs"]).square().sum(-1)
        obs = obs_err[alive].mean()  # mean over the 14 present (b, t, n) rows only
        # absorbing states: the reward target of absent agents is the replay's 0, and it is learned there too
        assert (batch["reward"][~alive] == 0).all()
        reward = (model.reward_head(feat).squeeze(-1) - batch["reward"]).square().mean()  # mean over all 16 rows
        cont = F.binary_cross_entropy_with_logits(model.cont_head(feat).squeeze(-1), torch.tensor(CONT_TARGET).float())
        bce = F.binary_cross_entropy_with_logits(model.mask_head(feat), batch["action_mask"].float(), reduction="none")
        action_mask = bce.mean(-1)[torch.tensor(ACTS, dtype=torch.bool)].mean()
        info_all = F.cross_entropy(
            rearrange(model.action_head(feat)[:, 1:], "b t n a -> (b t n) a"),
            batch["action"][:, :-1].reshape(-1),
            reduction="none",
        ).view(2, 3, 2)  # row t predicts the action of row t-1
        info = info_all[torch.tensor(ACTED_BEFORE, dtype=torch.bool)[:, 1:]].mean()
        kl = kl_divergence(Categorical(logits=posts["logits"]), Categorical(logits=priors["logits"])).sum(-1).mean()
    expected = {"obs": obs, "reward": reward, "cont": cont, "action_mask": action_mask, "info": info, "kl": kl, "kl_prior": kl}
    assert stats.keys() == expected.keys()
    for k, v in expected.items():
        assert stats[k] == pytest.approx(float(v), rel=1e-5), k
    # both sides of KL balancing have the value KL[q || p]: 0.7 · KL + 0.3 · KL = KL
    torch.testing.assert_close(total.detach(), obs + reward + cont + action_mask + 0.5 * info + 2.0 * kl)


def test_absent_agents_observations_and_other_rows_targets_do_not_matter():
    """Garbage in absent agents' obs changes no loss term; the same garbage in a present agent's obs does."""
    model = tiny_model()
    batch = hand_batch()
    garbage = {**batch, "obs": batch["obs"].clone()}
    garbage["obs"][0, 2:, 1] = 1e3  # window 0, agent 1 is absent at rows 2-3
    torch.manual_seed(0)
    total, stats = model.loss(batch)
    torch.manual_seed(0)
    total_g, stats_g = model.loss(garbage)
    assert stats == stats_g and torch.equal(total, total_g)
    present = {**batch, "obs": batch["obs"].clone()}
    present["obs"][0, 2:, 0] = 1e3
    torch.manual_seed(0)
    assert model.loss(present)[1]["obs"] > 1e5


def capture_logits(model: MAMBAWorldModel) -> dict[str, list[torch.Tensor]]:
    """Keep every output of the prior and posterior nets, (B, N, S·K) per row or (B, T, N, S·K) for all rows at once
    (the prior's, after filtering), with its gradient retained."""
    kept: dict[str, list[torch.Tensor]] = {"prior": [], "post": []}

    def hook(name):
        def keep(module, inputs, out):
            out.retain_grad()
            kept[name].append(out)

        return keep

    model.rssm.prior_net.register_forward_hook(hook("prior"))
    model.rssm.post_net.register_forward_hook(hook("post"))
    return kept


def logit_grads(model: MAMBAWorldModel, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    kept = capture_logits(model)
    torch.manual_seed(3)
    model.zero_grad()
    model.loss(batch)[0].backward()
    rows = lambda xs: torch.stack(xs, 1) if xs[0].dim() == 3 else torch.cat(xs, 1)  # noqa: E731 - (B, T, N, S·K)
    grads = {k: rows([o.grad for o in v]) for k, v in kept.items()}
    logits = {k: rows([o.detach() for o in v]) for k, v in kept.items()}
    return grads, logits


@pytest.mark.parametrize("kl_balance", [0.8, 0.3])
def test_kl_balancing_trains_the_prior_with_alpha_and_the_posterior_with_one_minus_alpha(kl_balance):
    """∂loss/∂prior logits = α·∂KL/∂prior and the KL part of ∂loss/∂posterior logits = (1−α)·∂KL/∂posterior."""
    batch = {k: v[:, :1] for k, v in hand_batch().items()}  # T=1: the posterior logits reach the loss only at row 0
    with_kl = tiny_model(kl_balance=kl_balance)
    without_kl = tiny_model(kl_balance=kl_balance, kl_scale=0.0)  # same weights and samples: the other terms
    grads, logits = logit_grads(with_kl, batch)
    grads_0, _ = logit_grads(without_kl, batch)
    q = logits["post"].requires_grad_()
    p = logits["prior"].requires_grad_()
    plain_kl = categorical_kl(rearrange(q, "... (s k) -> ... s k", k=3), rearrange(p, "... (s k) -> ... s k", k=3)).mean()
    dq, dp = torch.autograd.grad(plain_kl, (q, p))
    assert dp.abs().max() > 1e-4 and dq.abs().max() > 1e-4
    torch.testing.assert_close(grads["prior"], kl_balance * dp)  # only the KL reaches the prior logits
    torch.testing.assert_close(grads_0["prior"], torch.zeros_like(dp))
    torch.testing.assert_close(grads["post"] - grads_0["post"], (1 - kl_balance) * dq)


def test_kl_reaches_the_prior_logits_of_every_row():
    """Over T=4 rows the prior logits' gradient is α·∂KL/∂prior at every row (absent agents and resets included)."""
    model = tiny_model()
    grads, logits = logit_grads(model, hand_batch())
    q, p = (rearrange(logits[k], "... (s k) -> ... s k", k=3) for k in ("post", "prior"))
    p.requires_grad_()
    (dp,) = torch.autograd.grad(categorical_kl(q, p).mean(), p)
    torch.testing.assert_close(grads["prior"], 0.8 * rearrange(dp, "... s k -> ... (s k)"))


def test_prev_actions_are_shifted_one_hots_cleared_at_episode_starts():
    """_prev_actions: row t holds onehot(a_{t-1}); zeros at row 0 (no earlier row in the window), at resets and for
    absent agents."""
    model = tiny_model()
    actions, resets = torch.tensor(ACTION), torch.tensor(RESET, dtype=torch.bool)
    torch.testing.assert_close(model._prev_actions(actions, resets), hand_prev_actions(actions, resets))
    alive = torch.tensor(ALIVE, dtype=torch.bool)
    assert not alive.all()  # absent agents did not act on the row before: no previous action
    torch.testing.assert_close(model._prev_actions(actions, resets, alive), hand_prev_actions(actions, resets, alive))
    # row 1 after a non-reset row 0 keeps a_0; row 0 itself stays zeros
    cont = model._prev_actions(actions[1:], torch.zeros(1, 4, dtype=torch.bool))
    torch.testing.assert_close(cont[0, 1], F.one_hot(actions[1, 0], 4).float())
    assert not cont[0, 0].any()
    assert resets.tolist() == RESET  # not written into


def test_observe_is_the_last_posterior_of_observe_sequence():
    """observe() = observe_sequence's posterior at the last row, with blank-start previous actions (state None)."""
    model = tiny_model()
    batch = hand_batch()
    resets = batch["reset"]
    state = model.observe(
        batch["obs"], batch["action"], resets, generator=torch.Generator().manual_seed(2), alive=batch["alive"]
    )
    posts, _ = model.rssm.observe_sequence(
        batch["obs"], hand_prev_actions(batch["action"], resets, batch["alive"]), resets,
        generator=torch.Generator().manual_seed(2), alive=batch["alive"],
    )  # fmt: skip
    assert state.keys() == posts.keys()
    for k in posts:
        torch.testing.assert_close(state[k], posts[k][:, 3])
    # continuing from a given state: row 0's previous action is not cleared (no reset there)
    start = model.initial(2, torch.Generator().manual_seed(4))
    later = model.observe(batch["obs"][:, :1], batch["action"][:, :1], torch.zeros(2, 1, dtype=torch.bool), start, alive=None)
    posts2, _ = model.rssm.observe_sequence(
        batch["obs"][:, :1], torch.zeros(2, 1, 2, 4), torch.zeros(2, 1, dtype=torch.bool), start
    )
    torch.testing.assert_close(later["deter"], posts2["deter"][:, 0])


def test_initial_imagine_and_predict_use_the_rssm_and_the_heads():
    """initial = prior step from the blank state with no action; imagine = prior step + heads (sigmoid for probabilities)."""
    model = tiny_model()
    state = model.initial(3, torch.Generator().manual_seed(1))
    ref = model.rssm.img_step(model.rssm.blank(3), torch.zeros(3, 2, 4), torch.Generator().manual_seed(1))
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    actions = torch.tensor([[0, 3], [1, 2], [3, 3]])
    nxt, pred = model.imagine(state, actions, torch.Generator().manual_seed(7), decode=True)
    ref = model.rssm.img_step(state, F.one_hot(actions, 4).float(), torch.Generator().manual_seed(7))
    assert all(torch.equal(nxt[k], ref[k]) for k in ref)
    feat = torch.cat([ref["deter"], ref["stoch"]], -1)
    torch.testing.assert_close(model.features(nxt), feat)
    torch.testing.assert_close(model.critic_features(nxt), feat.reshape(3, 22))  # [agent 0's F=11, agent 1's]
    torch.testing.assert_close(pred.reward, model.reward_head(feat)[..., 0])
    torch.testing.assert_close(pred.cont, torch.sigmoid(model.cont_head(feat)[..., 0]))
    torch.testing.assert_close(pred.action_mask, torch.sigmoid(model.mask_head(feat)))
    torch.testing.assert_close(pred.obs, model.obs_head(feat))
    assert pred.reward.shape == (3, 2) and pred.action_mask.shape == (3, 2, 4) and pred.obs.shape == (3, 2, 3)
    assert model.imagine(state, actions)[1].obs is None  # decoding is opt-in
    assert model.predict(nxt).obs is None


def test_heads_sizes_and_unmasked_envs_have_no_mask_head():
    """Heads: head_layers hidden layers of width head_hidden on F; no mask head (or mask loss) without action masks."""
    model = tiny_model()
    for head, out in (
        (model.obs_head, 3),
        (model.reward_head, 1),
        (model.cont_head, 1),
        (model.mask_head, 4),
        (model.action_head, 4),
    ):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(11, 9), (9, out)]
    deep = MAMBAWorldModel(tiny_spec(), tiny_config(head_layers=2))
    heads = (deep.obs_head, deep.reward_head, deep.cont_head, deep.mask_head, deep.action_head)
    for head, out in zip(heads, (3, 1, 1, 4, 4)):
        assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [9, 9, out]
    plain = tiny_model(masked=False)
    assert plain.mask_head is None
    batch = hand_batch()
    del batch["action_mask"]
    torch.manual_seed(0)
    total, stats = plain.loss(batch)
    assert "action_mask" not in stats  # and it adds nothing to the total:
    torch.testing.assert_close(total.item(), stats["obs"] + stats["reward"] + stats["cont"] + stats["info"] + stats["kl"])
    assert plain.predict(plain.initial(1)).action_mask is None


def test_double_precision_model_works_end_to_end():
    """One-hot actions and blank states follow the model's dtype (float64 model, float64 batch)."""
    model = tiny_model().double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in hand_batch().items()}
    total, _ = model.loss(batch)
    assert total.dtype == torch.float64
    state, pred = model.imagine(model.initial(2), torch.zeros(2, 2, dtype=torch.long))
    assert state["deter"].dtype == torch.float64 and pred.reward.dtype == torch.float64


def test_config_defaults_are_the_papers():
    """MAMBAConfig(): Appendix A's SMAC world model (KL balance 0.8, no β, lr 2e-4, clip 10, heads 2×256)."""
    c = MAMBAConfig()
    assert c.rssm == RSSMConfig()
    assert (c.head_hidden, c.head_layers, c.kl_balance, c.kl_scale, c.info_scale, c.lr, c.grad_clip) == (
        256, 2, 0.8, 1.0, 1.0, 2e-4, 10.0,
    )  # fmt: skip
    assert MAMBAWorldModel(tiny_spec(), None).config == MAMBAConfig()


def test_presets():
    """preset(): SMAC (256), Flatland (400), a small CPU model and a medium one between, every other field at its default."""
    assert preset("smac") == MAMBAConfig(rssm=RSSMConfig(deter=256, hidden=256, comm_width=256))
    assert preset("flatland") == MAMBAConfig(rssm=RSSMConfig(deter=400, hidden=400, comm_width=400), head_hidden=400)
    small = RSSMConfig(deter=64, stoch=8, classes=8, hidden=64, comm_width=64, comm_layers=1, comm_heads=2)
    assert preset("small") == MAMBAConfig(rssm=small, head_hidden=64, head_layers=1, lr=1e-3)
    medium = RSSMConfig(deter=128, stoch=16, classes=16, hidden=128, comm_width=128, comm_layers=2, comm_heads=2)
    assert preset("medium") == MAMBAConfig(rssm=medium, head_hidden=128, head_layers=2, lr=5e-4)
    m2 = {"dynamics": "mamba2", "ssm_layers": 2, "d_state": 16, "expand": 2}
    assert preset("small-mamba2") == dataclasses.replace(preset("small"), rssm=dataclasses.replace(small, **m2, headdim=32))
    smac = dataclasses.replace(preset("smac").rssm, **m2, headdim=64)
    assert preset("smac-mamba2") == dataclasses.replace(preset("smac"), rssm=smac)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head_hidden": 0}, r"^MAMBAConfig.head_hidden: expected an integer >= 1, got 0$"),
        ({"head_layers": 0}, r"^MAMBAConfig.head_layers: expected an integer >= 1, got 0$"),
        ({"kl_balance": -0.1}, r"^MAMBAConfig.kl_balance: expected a number in \[0, 1\], got -0.1$"),
        ({"kl_balance": 1.01}, r"^MAMBAConfig.kl_balance: expected a number in \[0, 1\], got 1.01$"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    """A bad MAMBAConfig field raises a ValueError naming it."""
    with pytest.raises(ValueError, match=match):
        MAMBAConfig(**kwargs)


def test_config_accepts_the_kl_balance_bounds():
    """kl_balance 0 and 1 (one side only) are allowed."""
    assert dataclasses.replace(MAMBAConfig(), kl_balance=0.0).kl_balance == 0.0
    assert MAMBAConfig(kl_balance=1.0).kl_balance == 1.0


def test_bad_spec_and_preset_names_are_refused():
    """Unknown presets raise ValueErrors naming the argument (continuous actions: test_continuous_wm.py)."""
    names = r"\['smac', 'flatland', 'small', 'medium', 'smac-mamba2', 'small-mamba2'\]"
    for name in ("huge", "flatland-mamba2", "medium-mamba2"):
        with pytest.raises(ValueError, match=rf"^name: expected one of {names}, got '{name}'$"):
            preset(name)


@pytest.mark.parametrize("head", ["mse", "twohot"])
def test_event_rows_weigh_more_in_the_reward_loss(head):
    """reward_event_weight w: each row's reward error times w where |reward| >= the threshold, times 1 elsewhere;
    the other heads' errors are unchanged, and w = 1 is the plain loss."""
    batch = hand_batch()
    plain = head_errors_of(tiny_model(reward_head=head), batch)
    weighted_model = tiny_model(reward_head=head, reward_event_weight=7.0, reward_event_threshold=0.8)
    weighted = head_errors_of(weighted_model, batch)
    event = batch["reward"].abs() >= 0.8
    assert 0 < int(event.sum()) < event.numel()  # the hand batch has rows on both sides of the threshold
    torch.testing.assert_close(weighted["reward"][0], plain["reward"][0] * torch.where(event, 7.0, 1.0))
    for name in ("obs", "cont", "info"):
        torch.testing.assert_close(weighted[name][0], plain[name][0])
    with pytest.raises(ValueError, match=r"^MAMBAConfig.reward_event_weight: expected a positive"):
        tiny_config(reward_event_weight=0.0)


def head_errors_of(model: MAMBAWorldModel, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, object]]:
    """The heads' per-row errors of ``batch`` on the model's posterior features (the same posterior draws)."""
    torch.manual_seed(0)
    posts, _ = model._filter_windows(batch)
    feat = model.features(posts)
    return head_errors(model, feat, feat, batch)
