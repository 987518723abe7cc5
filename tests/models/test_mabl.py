"""MABL's bi-level world model: what makes it MABL, pinned with autograd, its loss terms, ablations, errors and the
contract (imagination, the dream env, the execution filter)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import wmenv
from wmenv.data.collect import random_replay
from wmenv.envs.spec import EnvSpec
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.models.mabl import PRESETS, MABLConfig, MABLWorldModel, mabl_preset
from wmenv.models.mamba_wm import MAMBAConfig
from wmenv.models.registry import build_model

B, T, N, S_DIM = 2, 5, 3, 7
GLOBAL_MODULES = ("state_encoder", "global_in", "global_cell", "global_prior", "global_post")


def spec_of(n_agents: int = N, state_dim: int = S_DIM) -> EnvSpec:
    """N agents, D=3, A=4 with masks, a global state of S_DIM features: every size distinct from the model's."""
    agents = tuple(f"a{i}" for i in range(n_agents))
    box, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4)
    state = gym.spaces.Box(-1, 1, (state_dim,))
    return EnvSpec("tiny", agents, {a: box for a in agents}, {a: act for a in agents}, state, True, None)


def tiny(global_level="per_agent", seed=0, n_agents=N, **kw) -> MABLWorldModel:
    """H_a 5, H_g 6, S×K 2×3, E 8, heads 9."""
    torch.manual_seed(seed)
    cfg = MABLConfig(agent_deter=5, global_deter=6, stoch=2, classes=3, hidden=8, head_hidden=9, head_layers=1,
                     global_level=global_level, **kw)  # fmt: skip
    return MABLWorldModel(spec_of(n_agents), cfg).eval()


def window(seed=0, n_agents=N) -> dict[str, torch.Tensor]:
    """Windows with an absent agent (world 0, agent 2 from row 3) and a reset (world 1, row 3)."""
    g = torch.Generator().manual_seed(seed)
    alive = torch.ones(B, T, n_agents, dtype=torch.bool)
    alive[0, 3:, n_agents - 1] = False
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = reset[1, 3] = True
    terminated = torch.zeros(B, T, n_agents, dtype=torch.bool)
    terminated[0, 2, n_agents - 1] = True
    return {
        "obs": torch.randn(B, T, n_agents, 3, generator=g) * alive[..., None],
        "state": torch.randn(B, T, S_DIM, generator=g),
        "action": torch.randint(0, 4, (B, T, n_agents), generator=g) * alive,
        "reward": torch.randn(B, T, n_agents, generator=g) * alive,
        "terminated": terminated,
        "truncated": torch.zeros(B, T, n_agents, dtype=torch.bool),
        "alive": alive,
        "action_mask": torch.ones(B, T, n_agents, 4, dtype=torch.bool),
        "reset": reset,
    }


def posteriors(model, batch, seed=3, **inputs):
    prev = model._prev_actions(batch["action"], batch["reset"], batch["alive"])
    g = torch.Generator().manual_seed(seed)
    obs, state = inputs.get("obs", batch["obs"]), inputs.get("state", batch["state"])
    return model.observe_sequence(obs, prev, batch["reset"], state, generator=g, alive=batch["alive"])


def grad_of(out: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(out.sum(), wrt, allow_unused=True, retain_graph=True)
    return torch.zeros_like(wrt) if g is None else g


@pytest.mark.parametrize("global_level", ["per_agent", "shared"])
def test_agent_features_see_neither_the_global_state_nor_other_agents(global_level):
    model, batch = tiny(global_level), window()
    obs, state = batch["obs"].clone().requires_grad_(), batch["state"].clone().requires_grad_()
    posts, _ = posteriors(model, batch, obs=obs, state=state)
    feat0 = model.features(posts)[:, :, 0]  # agent 0 at every row
    assert grad_of(feat0, state).abs().max() == 0
    others = grad_of(feat0, obs)
    assert others[:, :, 1:].abs().max() == 0 and others[:, :, 0].abs().max() > 0


def test_global_posterior_reads_the_state_and_its_own_agent_latent():
    model, batch = tiny("per_agent"), window()
    obs, state = batch["obs"].clone().requires_grad_(), batch["state"].clone().requires_grad_()
    posts, _ = posteriors(model, batch, obs=obs, state=state)
    g0 = posts["logits_g"][:, :, 0]  # agent 0's global posterior
    assert grad_of(g0, state).abs().max() > 0
    from_obs = grad_of(g0, obs)
    assert from_obs[:, :, 0].abs().max() > 0, "q(z^g_i | ..., z^a_i) reads agent i's latent"
    assert from_obs[:, :, 1:].abs().max() == 0, "per agent: no other agent's observation reaches agent 0's global level"
    shared = tiny("shared")
    obs2 = batch["obs"].clone().requires_grad_()
    posts2, _ = posteriors(shared, batch, obs=obs2)
    assert grad_of(posts2["logits_g"][:, :, 0], obs2)[:, :, 1:].abs().max() > 0, "shared: every agent's latent enters"


def test_agent_prior_is_conditioned_on_the_global_prior_sample_not_the_posterior():
    """p(ẑ^a_t | h^a_t, ẑ^g_t) with ẑ^g_t ~ p(h^g_t): s_t cannot reach it (only earlier states, through h^g_t)."""
    model, batch = tiny("per_agent"), window()
    state = batch["state"].clone().requires_grad_()
    _, priors = posteriors(model, batch, state=state)
    for t in (1, 2):
        g = grad_of(priors["logits_a"][0, t], state)
        assert g[0, t].abs().max() == 0 and g[0, t - 1].abs().max() > 0, t


def test_reward_head_gets_no_gradient_from_the_global_level_but_continuation_does():
    model = tiny("per_agent").train()
    for term, expect_global in (("reward", False), ("cont", True)):
        model.zero_grad()
        posts, _ = posteriors(model, window())
        batch = window()
        terms = model._head_losses(model.features(posts), model.full_features(posts), batch)
        terms[term].backward()
        grads = [p.grad for name in GLOBAL_MODULES for p in getattr(model, name).parameters()]
        moved = any(g is not None and g.abs().max() > 0 for g in grads)
        assert moved == expect_global, term


def test_loss_terms_and_ablations():
    for level in ("per_agent", "shared"):  # the total is the listed terms' sum, each at weight 1 by default
        total, stats = tiny(level).loss(window())
        assert set(stats) == {"obs", "reward", "cont", "action_mask", "info", "kl_agent", "kl_global", "kl_prior_agent",
                              "kl_prior_global"}, level  # fmt: skip
        terms = [stats[k] for k in ("obs", "reward", "cont", "action_mask", "info", "kl_agent", "kl_global")]
        assert float(total.detach()) == pytest.approx(sum(terms), rel=1e-5), level
    none = tiny("none")
    assert not any(hasattr(none, m) for m in GLOBAL_MODULES)
    total, stats = none.loss({k: v for k, v in window().items() if k != "state"})  # needs no global state
    assert "kl_global" not in stats and torch.isfinite(total)
    terms = [stats[k] for k in ("obs", "reward", "cont", "action_mask", "info", "kl_agent")]
    assert float(total.detach()) == pytest.approx(sum(terms), rel=1e-5)


def test_kl_is_a_mean_over_the_categoricals_unless_asked_to_sum():
    batch = window()
    torch.manual_seed(5)
    mean = tiny("per_agent", kl_reduce="mean").loss(batch)[1]
    torch.manual_seed(5)
    summed = tiny("per_agent", kl_reduce="sum").loss(batch)[1]
    for k in ("kl_agent", "kl_global"):
        assert summed[k] == pytest.approx(2 * mean[k], rel=1e-5)  # S = 2 categoricals


def test_shared_global_level_is_one_latent_for_every_agent():
    model, batch = tiny("shared"), window()
    posts, _ = posteriors(model, batch)
    for k in ("deter_g", "stoch_g", "logits_g"):
        assert torch.equal(posts[k], posts[k][:, :, :1].expand_as(posts[k])), k
    state, _ = model.imagine(model.initial(4), torch.zeros(4, N, dtype=torch.long))
    assert torch.equal(state["stoch_g"], state["stoch_g"][:, :1].expand_as(state["stoch_g"]))
    per_agent, _ = posteriors(tiny("per_agent"), batch)
    assert not torch.equal(per_agent["logits_g"][:, :, 0], per_agent["logits_g"][:, :, 1])


def test_imagination_shapes_absent_agents_and_seeds():
    model = tiny("per_agent")
    state = model.initial(4, torch.Generator().manual_seed(0))
    present = torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool)
    actions = torch.tensor([[1, 2, 3]] * 4)
    nxt, pred = model.imagine(state, actions, torch.Generator().manual_seed(1), decode=True, present=present)
    assert pred.reward.shape == pred.cont.shape == (4, N) and pred.action_mask.shape == (4, N, 4)
    assert pred.obs.shape == (4, N, 3)
    assert model.features(nxt).shape == (4, N, 5 + 6) and model.critic_features(nxt).shape == (4, N * (5 + 6 + 6 + 6))
    same, _ = model.imagine(state, torch.tensor([[1, 2, 0]] * 4), torch.Generator().manual_seed(1), present=present)
    assert torch.equal(same["deter_g"], nxt["deter_g"]), "an absent agent's action does not enter the joint action"
    again, _ = model.imagine(state, actions, torch.Generator().manual_seed(1), present=present)
    assert all(torch.equal(again[k], nxt[k]) for k in nxt)


def test_observe_needs_the_global_state_of_the_right_width():
    model, batch = tiny("per_agent"), window()
    args = (batch["obs"], batch["action"], batch["reset"])
    with pytest.raises(ValueError, match=r"global_state: .*needs the env's global state of shape \(2, 5, 7\)"):
        model.observe(*args)
    with pytest.raises(ValueError, match=r"global_state: expected shape \(2, 5, 7\).*got \(2, 5, 6\)"):
        model.observe(*args, global_state=batch["state"][..., :6])
    with pytest.raises(ValueError, match="global_state"):
        model.loss({k: v for k, v in batch.items() if k != "state"})
    prev = model._prev_actions(batch["action"], batch["reset"].bool(), None)
    with pytest.raises(ValueError, match=r"global_state: .*needs the env's global state of shape \(2, 5, 7\)"):
        model.observe_sequence(batch["obs"], prev, batch["reset"], None)
    with pytest.raises(ValueError, match=r"global_state: expected shape \(2, 5, 7\).*got \(2, 5, 6\)"):
        model.observe_sequence(batch["obs"], prev, batch["reset"], batch["state"][..., :6])
    last = model.observe(*args, global_state=batch["state"], generator=torch.Generator().manual_seed(0))
    assert last["deter_g"].shape == (B, N, 6)
    assert tiny("none").observe(*args)["deter_a"].shape == (B, N, 5)


def test_bad_configs_and_specs_are_named():
    with pytest.raises(ValueError, match="MABLConfig.global_level"):
        MABLConfig(global_level="both")
    with pytest.raises(ValueError, match="MABLConfig.kl_reduce"):
        MABLConfig(kl_reduce="max")
    with pytest.raises(ValueError, match="MABLConfig.reward_bins"):
        MABLConfig(reward_head="twohot", reward_bins=4)
    with pytest.raises(ValueError, match="name: expected one of"):
        mabl_preset("huge")


def test_seeded_observe_is_deterministic():
    model, batch = tiny("per_agent"), window()
    a, _ = posteriors(model, batch, seed=4)
    b, _ = posteriors(model, batch, seed=4)
    c, _ = posteriors(model, batch, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stoch_a"], c["stoch_a"])


def _step_filters(model, batch, seed):
    """The B·N agents' own filters along the windows, one row per agent; features (B, T, N, F)."""
    agent = torch.arange(N).repeat(B)
    state, prev = model.filter_initial(B * N), torch.full((B * N,), -1)
    g, out = torch.Generator().manual_seed(seed), []
    for t in range(T):
        reset = batch["reset"][:, t].repeat_interleave(N)
        alive = batch["alive"][:, t].reshape(-1)
        assert model.message(state, prev).shape == (B * N, 0)
        state, feat = model.filter_step(state, batch["obs"][:, t].reshape(B * N, -1), prev, reset, agent, alive=alive,
                                        generator=g)  # fmt: skip
        out.append(feat.view(B, N, -1))
        acted = batch["alive"][:, t + 1].reshape(-1) if t + 1 < T else alive
        prev = torch.where(acted, batch["action"][:, t].reshape(-1), -1)
    return torch.stack(out, 1)


def test_execution_filter_is_the_agent_level_of_observe():
    """Without a global level observe draws only agent samples, so the filters reproduce it exactly; a bi-level model's
    filter is that agent level: with the same agent-level weights it gives the same features."""
    batch = window()
    none = tiny("none")
    with torch.no_grad():
        posts, _ = posteriors(none, batch, seed=3)
        torch.testing.assert_close(_step_filters(none, batch, seed=3), none.features(posts), atol=1e-6, rtol=0)
        bilevel = tiny("per_agent", seed=1)
        agent_level = {k: v for k, v in bilevel.state_dict().items() if k.split(".")[0] in
                       ("obs_encoder", "agent_in", "agent_cell", "agent_post")}  # fmt: skip
        none.load_state_dict(agent_level, strict=False)
        torch.testing.assert_close(_step_filters(bilevel, batch, 3), _step_filters(none, batch, 3), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"state: expected a filter state with keys \['deter_a', 'stoch_a'\]"):
        bilevel.filter_step({"deter": torch.zeros(1, 5)}, torch.zeros(1, 3), torch.tensor([-1]), torch.tensor([True]),
                            torch.tensor([0]))  # fmt: skip
    with pytest.raises(ValueError, match=r"prev_action: expected actions in \[-1, 4\)"):
        bilevel.filter_step(bilevel.filter_initial(1), torch.zeros(1, 3), torch.tensor([4]), torch.tensor([False]),
                            torch.tensor([0]))  # fmt: skip


@pytest.fixture(scope="module")
def mpe_mabl_and_replay():
    replay, spec = random_replay("mpe:simple_spread_v3", 400, num_envs=2)
    torch.manual_seed(0)
    return MABLWorldModel(spec, mabl_preset("small")), replay


def test_fit_halves_the_loss_on_real_mpe_data(mpe_mabl_and_replay):
    spec, replay = mpe_mabl_and_replay[0].spec, mpe_mabl_and_replay[1]
    torch.manual_seed(0)
    model = MABLWorldModel(spec, mabl_preset("small"))
    history = fit(model, replay, FitConfig(steps=120, batch_size=8, seq_len=10, seed=0, log_every=1, progress=False))
    first, last = np.mean(history["loss"][:5]), np.mean(history["loss"][-5:])
    assert last < 0.5 * first, (first, last)


def test_seeded_fit_is_deterministic(mpe_mabl_and_replay):
    """Same seed, same device: the same losses and weights after fitting; another seed draws other windows."""
    spec, replay = mpe_mabl_and_replay[0].spec, mpe_mabl_and_replay[1]

    def fitted(seed):
        torch.manual_seed(1)  # the same initial weights
        model = MABLWorldModel(spec, mabl_preset("small"))
        cfg = FitConfig(steps=4, batch_size=4, seq_len=6, seed=seed, log_every=1, progress=False)
        return fit(model, replay, cfg)["loss"], model.state_dict()

    (loss_a, weights_a), (loss_b, weights_b), (loss_c, _) = fitted(3), fitted(3), fitted(4)
    assert loss_a == loss_b and loss_a != loss_c
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_dream_env_over_mabl_passes_the_pettingzoo_tests(mpe_mabl_and_replay):
    model, replay = mpe_mabl_and_replay
    parallel_api_test(wmenv.DreamEnv(model, seed=0), num_cycles=30)
    parallel_seed_test(lambda: wmenv.DreamEnv(model, start=replay), num_cycles=20)
    env = wmenv.DreamEnv(model, start=replay, seed=1)
    obs, _ = env.reset(seed=2)
    assert env.observation_space("agent_0").shape == (64 + 64,) and env.state().shape == (3 * (64 + 64 + 64 + 64),)


def test_checkpoint_round_trip_through_the_registry(mpe_mabl_and_replay, tmp_path):
    model, replay = mpe_mabl_and_replay
    model = model.eval()
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m", model.spec, kind="mabl").eval()
    assert isinstance(again, MABLWorldModel) and again.config == model.config
    w = replay.sample(2, 6, generator=1)
    outs = []
    for m in (model, again):
        g = torch.Generator().manual_seed(5)
        state = m.observe(w["obs"], w["action"], w["reset"], generator=g, alive=w["alive"].bool(), global_state=w["state"])
        nxt, pred = m.imagine(state, w["action"][:, -1], generator=g)
        outs.append([*state.values(), *nxt.values(), pred.reward, pred.cont])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    with pytest.raises(ValueError, match="holds a 'mabl' world model, expected 'mamba'"):
        load_model(tmp_path / "m", model.spec, kind="mamba")
    assert build_model("mabl", model.spec, "small").config == mabl_preset("small")
    with pytest.raises(TypeError, match="expected a MABLConfig for kind 'mabl'"):
        build_model("mabl", model.spec, MAMBAConfig())


def test_presets_are_named_after_the_paper():
    assert PRESETS == ("smac", "flatland", "small", "smac-mamba2", "small-mamba2")
    smac = mabl_preset("smac")
    assert (smac.agent_deter, smac.global_deter, smac.stoch, smac.classes, smac.lr, smac.grad_clip) == (
        256,
        256,
        32,
        32,
        3e-4,
        100.0,
    )
    assert mabl_preset("small", global_level="none").global_level == "none"


@pytest.mark.parametrize("global_level", ["per_agent", "shared", "none"])
def test_observe_rows_gives_every_rows_posterior_with_observes_draws(global_level):
    """The last row of `observe_rows` is `observe`'s state (same generator seed), both levels; row t is `observe`'s on
    the windows cut after row t (to rounding: encoders batched over other lengths); without the global state it is
    refused as `observe` refuses it."""
    model, w = tiny(global_level), window()
    args = (w["obs"], w["action"], w["reset"])
    rows = model.observe_rows(*args, generator=torch.Generator().manual_seed(3), alive=w["alive"], global_state=w["state"])
    for t in (1, T - 1):
        cut = [x[:, : t + 1] for x in args]
        last = model.observe(*cut, generator=torch.Generator().manual_seed(3), alive=w["alive"][:, : t + 1],
                             global_state=w["state"][:, : t + 1])  # fmt: skip
        assert set(last) == set(rows)
        same = torch.equal if t == T - 1 else lambda a, b: torch.allclose(a, b, atol=1e-6)
        assert all(same(rows[k][:, t], last[k]) for k in rows), t
    flat = {k: v.reshape(B * T, *v.shape[2:]) for k, v in rows.items()}
    assert model.critic_features(flat).shape[0] == B * T
    if global_level != "none":
        with pytest.raises(ValueError, match="global_state"):
            model.observe_rows(*args, alive=w["alive"])
