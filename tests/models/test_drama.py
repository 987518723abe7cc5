"""DRAMA's world model: the authors' sizes, Mamba-2 dynamics step by step as in parallel, no state across episode
starts, the loss terms and the rows they count, the contract (imagination, dream env, execution filter,
checkpoints) and clear errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import wmenv
from wmenv.envs.spec import EnvSpec
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.models.drama import PRESETS, DRAMAConfig, DRAMAWorldModel, drama_preset
from wmenv.models.registry import build_model
from wmenv.models.rssm import onehot_from_uniform

B, T, A = 3, 9, 4


def spec_of(h=16, w=16, c=3, actions=A, agents=1, frame_shape=True, continuous=False) -> EnvSpec:
    """Frames of H×W×C uint8 values, flat, as the ``atari:`` view gives them."""
    names = tuple(f"a{i}" for i in range(agents))
    box = gym.spaces.Box(0, 255, (h * w * c,), np.uint8)
    act = gym.spaces.Box(-1, 1, (2,)) if continuous else gym.spaces.Discrete(actions)
    extra = {"frame_shape": (h, w, c)} if frame_shape else {}
    return EnvSpec("atari:Tiny", names, {a: box for a in names}, {a: act for a in names}, box, False, None, extra)


def tiny_config(**kw) -> DRAMAConfig:
    """Two convolutions (16×16 -> 8×8), 4×5 latents, M 16, 2 heads of 8, d_state 4, heads 12, 21 reward bins."""
    base = dict(channels=(4, 8), stoch=4, classes=5, d_model=16, headdim=8, d_state=4, head_hidden=12, reward_bins=21,
                backend="ref")  # fmt: skip
    return DRAMAConfig(**{**base, **kw})


def tiny(seed=0, **kw) -> DRAMAWorldModel:
    torch.manual_seed(seed)
    return DRAMAWorldModel(spec_of(), tiny_config(**kw)).eval()


def window(seed=0) -> dict[str, torch.Tensor]:
    """World 0 starts an episode at row 0, world 1 mid-episode with a new episode from row 4, world 2 mid-episode."""
    g = torch.Generator().manual_seed(seed)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 0] = reset[1, 4] = True
    terminated = torch.zeros(B, T, 1, dtype=torch.bool)
    terminated[1, 3] = True
    return {
        "obs": torch.randint(0, 256, (B, T, 1, 16 * 16 * 3), generator=g).float(),
        "action": torch.randint(0, A, (B, T, 1), generator=g),
        "reward": torch.randn(B, T, 1, generator=g),
        "terminated": terminated,
        "truncated": torch.zeros(B, T, 1, dtype=torch.bool),
        "alive": torch.ones(B, T, 1, dtype=torch.bool),
        "reset": reset,
    }


def test_xs_has_the_codes_parameter_count_and_s_doubles_filters_and_state():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    xs = DRAMAWorldModel(spec_of(64, 64, 3, actions=6), drama_preset("xs"))
    assert count(xs) == 7_155_459
    s = drama_preset("s")
    assert s.channels == (32, 64, 96, 128, 128) and s.d_state == 32 and s.d_model == 512
    assert PRESETS == ("xs", "s", "cpu-small")
    assert build_model("drama", spec_of(64, 64, 3), "cpu-small").config == drama_preset("cpu-small")


def test_sequence_model_step_by_step_equals_the_parallel_forward():
    model = tiny()
    dyn, width = model.dynamics, 4 * 5 + A
    x = torch.randn(B, T, width, generator=torch.Generator().manual_seed(1))
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[1, 4] = resets[2, 7] = True
    with torch.no_grad():
        parallel, last = dyn(x, resets)
        states, steps = dyn.initial_states(B), []
        for t in range(T):
            keep = (~resets[:, t]).float()
            states = [(c * keep.view(-1, 1, 1), s * keep.view(-1, 1, 1, 1)) for c, s in states]
            h, states = dyn.step(x[:, t], states)
            steps.append(h)
    torch.testing.assert_close(torch.stack(steps, 1), parallel, atol=1e-4, rtol=0)
    for (c1, s1), (c2, s2) in zip(states, last):
        torch.testing.assert_close(c1, c2, atol=1e-4, rtol=0)
        torch.testing.assert_close(s1, s2, atol=1e-4, rtol=0)


def test_imagination_continues_observe_as_the_parallel_forward_would():
    model, w = tiny(), window()
    with torch.no_grad():
        state = model.observe(w["obs"], w["action"], w["reset"], generator=torch.Generator().manual_seed(3))
        post = model._posterior_logits(w["obs"][:, :, 0])  # observe's draws, repeated: (B, T, S) uniforms at once
        z = onehot_from_uniform(post, torch.rand(post.shape[:-1], generator=torch.Generator().manual_seed(3)))
        assert torch.equal(state["z"][:, 0], z[:, -1])
        actions = torch.randint(0, A, (B, 5), generator=torch.Generator().manual_seed(4))
        g, imagined = torch.Generator().manual_seed(5), []
        for k in range(5):
            state, pred = model.imagine(state, actions[:, k : k + 1], generator=g)
            imagined.append(state)
            assert pred.reward.shape == pred.cont.shape == (B, 1) and bool(((pred.cont >= 0) & (pred.cont <= 1)).all())
        # the whole sequence in one parallel pass: real rows, then [z, a] of each imagined step
        blank = w["reset"].clone()
        blank[:, 0] = True
        x_real = model._window_inputs(z, w["action"][:, :, 0], torch.zeros_like(z[:, 0]), blank)
        zs = [z[:, -1]] + [s["z"][:, 0] for s in imagined[:-1]]
        x_img = torch.stack([model._inputs(zk, actions[:, k]) for k, zk in enumerate(zs)], 1)
        resets = torch.cat([w["reset"], torch.zeros(B, 5, dtype=torch.bool)], 1)
        h, _ = model.dynamics(torch.cat([x_real, x_img], 1), resets)
    torch.testing.assert_close(torch.stack([s["h"][:, 0] for s in imagined], 1), h[:, T:], atol=1e-4, rtol=0)


def test_no_state_crosses_an_episode_start():
    model, w = tiny(), window()
    changed = dict(w, obs=w["obs"].clone(), action=w["action"].clone())
    changed["obs"][:, :4] = 255 - changed["obs"][:, :4]  # every world's rows before row 4
    changed["action"][:, :4] = (changed["action"][:, :4] + 1) % A
    with torch.no_grad():
        a, b = (model.observe(v["obs"], v["action"], v["reset"], generator=torch.Generator().manual_seed(0))
                for v in (w, changed))  # fmt: skip
    same = torch.isclose(a["h"], b["h"], atol=1e-6).all(-1)[:, 0]
    assert same.tolist() == [False, True, False]  # world 1 restarted at row 4; worlds 0 and 2 carry their past


def test_loss_terms_weights_and_the_rows_they_count():
    model, w = tiny().train(), window()
    torch.manual_seed(0)
    total, stats = model.loss(w)
    assert set(stats) == {"obs", "reward", "cont", "kl", "kl_rep"}
    expected = stats["obs"] + stats["reward"] + stats["cont"] + max(stats["kl"], 1.0) + 0.1 * max(stats["kl_rep"], 1.0)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert stats["kl"] == pytest.approx(stats["kl_rep"], rel=1e-5)  # the same KL; only the gradients differ

    def loss_with(change=None):
        batch = {k: v.clone() for k, v in w.items()}
        for (key, world, row), value in (change or {}).items():
            batch[key][world, row] = value
        torch.manual_seed(0)
        return model.loss(batch)[1]

    base = loss_with()
    # row 0 of a window that starts mid-episode has no input: its reward and termination are not trained on
    assert loss_with({("reward", 1, 0): 50.0})["reward"] == pytest.approx(base["reward"], abs=0)
    assert loss_with({("reward", 0, 0): 50.0})["reward"] != pytest.approx(base["reward"])  # an episode's first row
    assert loss_with({("reward", 2, 5): 50.0})["reward"] != pytest.approx(base["reward"])
    with torch.no_grad():
        free = DRAMAWorldModel(model.spec, tiny_config(free_bits=0.0, dyn_scale=0.5, rep_scale=0.0))
        free.load_state_dict(model.state_dict())
        torch.manual_seed(0)
        total, stats = free.train().loss(w)
    assert float(total) == pytest.approx(stats["obs"] + stats["reward"] + stats["cont"] + 0.5 * stats["kl"], rel=1e-5)


def test_dynamics_kl_trains_the_prior_and_representation_kl_the_posterior():
    model, w = tiny(free_bits=0.0, dyn_scale=1.0, rep_scale=0.0).train(), window()
    model.zero_grad()
    model.loss(w)[0].backward()
    with_dyn = model.prior_head.weight.grad.abs().sum()
    model = tiny(free_bits=0.0, dyn_scale=0.0, rep_scale=1.0).train()
    model.zero_grad()
    model.loss(w)[0].backward()
    rep_only = model.prior_head.weight.grad
    assert float(with_dyn) > 0 and (rep_only is None or float(rep_only.abs().sum()) == 0)


def test_seeded_observe_and_imagine_are_deterministic():
    model, w = tiny(), window()

    def run():
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            s = model.observe(w["obs"], w["action"], w["reset"], generator=g)
            return model.imagine(s, w["action"][:, -1], generator=g, decode=True)

    (s1, p1), (s2, p2) = run(), run()
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and torch.equal(p1.obs, p2.obs)
    assert p1.obs.shape == (B, 1, 16 * 16 * 3) and float(p1.obs.min()) >= 0 and float(p1.obs.max()) <= 255


def test_execution_filter_is_observe_row_by_row(monkeypatch):
    """With the same random numbers for the latents (each categorical's median class), the filter run row by row gives
    observe's features."""
    import wmenv.models.drama as drama

    monkeypatch.setattr(drama, "uniform_like", lambda logits, generator=None: torch.full(logits.shape[:-1], 0.5))
    model, w = tiny(), window()
    with torch.no_grad():
        state = model.observe(w["obs"], w["action"], w["reset"])
        fstate, prev = model.filter_initial(B), torch.full((B,), -1)
        for t in range(T):
            reset = w["reset"][:, t] | (t == 0)  # a window's first row starts from the blank state, as in observe
            fstate, feat = model.filter_step(fstate, w["obs"][:, t, 0], prev, reset, torch.zeros(B, dtype=torch.long))
            prev = w["action"][:, t, 0]
    torch.testing.assert_close(feat, model.features(state)[:, 0], atol=1e-4, rtol=0)
    assert model.message_dim == 0


def test_dream_env_over_drama_passes_the_pettingzoo_tests():
    model = tiny()
    parallel_api_test(wmenv.DreamEnv(model, seed=0), num_cycles=20)
    parallel_seed_test(lambda: wmenv.DreamEnv(model), num_cycles=10)


def test_checkpoint_round_trip_through_the_registry(tmp_path):
    model, w = tiny(), window()
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m", model.spec, kind="drama").eval()
    assert isinstance(again, DRAMAWorldModel) and again.config == model.config
    outs = []
    for m in (model, again):
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            state = m.observe(w["obs"], w["action"], w["reset"], generator=g)
            nxt, pred = m.imagine(state, w["action"][:, -1], generator=g)
        outs.append([*state.values(), *nxt.values(), pred.reward, pred.cont])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    with pytest.raises(ValueError, match="holds a 'drama' world model, expected 'mamba'"):
        load_model(tmp_path / "m", model.spec, kind="mamba")


@pytest.fixture(scope="module")
def breakout():
    """A tiny DRAMA fitted for 60 steps on 600 random steps of real Breakout at 16×16, its replay and fit losses."""
    pytest.importorskip("ale_py")
    from wmenv.data.collect import random_replay

    replay, spec = random_replay("atari:Breakout", 600, num_envs=2, screen_size=16)
    torch.manual_seed(0)
    model = DRAMAWorldModel(spec, tiny_config(lr=1e-3))
    history = fit(model, replay, FitConfig(steps=60, batch_size=4, seq_len=16, seed=0, log_every=1, progress=False))
    return model.eval(), replay, history["loss"]


def test_fit_lowers_the_loss_on_atari_frames(breakout):
    losses = breakout[2]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)


def test_learners_trained_in_the_dream_act_on_real_breakout_through_the_filter(breakout):
    """stable-baselines3 PPO in `DreamGymEnv` and DRAMA's own actor-critic in `DreamVecEnv`, both on the latent
    features, then on the real game through `LatentGymEnv` (the same features, filtered from real frames)."""
    sb3 = pytest.importorskip("stable_baselines3")
    from agents.dreamer_ac import DreamerAC, DreamerACConfig
    from wmenv.dream import DreamGymEnv, DreamVecEnv
    from wmenv.envs import make
    from wmenv.latent import LatentGymEnv

    model, replay, _ = breakout
    dream = DreamGymEnv(model, start=replay, obs="latent", horizon=15, context=4)
    ppo = sb3.PPO("MlpPolicy", dream, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    ppo.learn(total_timesteps=64)
    torch.manual_seed(0)
    ac = DreamerAC(dream.observation_space.shape[0], model.spec.n_actions, DreamerACConfig(horizon=4, layers=1))
    vec = DreamVecEnv(model, 8, horizon=15, start=replay, context=4, seed=0)
    traj, _ = ac.imagine(vec, torch.Generator().manual_seed(0))
    stats = ac.update(traj)
    assert all(np.isfinite(v) for v in stats.values()) and traj.features.shape == (4, 8, dream.observation_space.shape[0])
    env, _ = make("atari:Breakout", screen_size=16)
    real = LatentGymEnv(env, model, seed=0)
    assert real.observation_space == dream.observation_space and real.action_space == dream.action_space
    obs, _ = real.reset(seed=0)
    for _ in range(30):  # a policy that never serves can keep Breakout going for thousands of steps: 30 are enough
        action = ppo.predict(obs, deterministic=True)[0] if _ % 2 else int(ac.act(torch.as_tensor(obs), greedy=True))
        obs, reward, term, trunc, _ = real.step(action)
        assert obs.shape == dream.observation_space.shape and np.isfinite(obs).all() and np.isfinite(reward)
        if term or trunc:
            obs, _ = real.reset()
    real.close()


def test_bad_specs_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="single-agent model, got 2 agents"):
        DRAMAWorldModel(spec_of(agents=2), tiny_config())
    with pytest.raises(ValueError, match="discrete actions"):
        DRAMAWorldModel(spec_of(continuous=True), tiny_config())
    with pytest.raises(ValueError, match=r"frame_shape: \(8, 8, 3\) holds 192 values, but .* have 768"):
        DRAMAWorldModel(spec_of(), tiny_config(frame_shape=(8, 8, 3)))
    with pytest.raises(ValueError, match="records no frame shape"):
        DRAMAWorldModel(spec_of(frame_shape=False), tiny_config())
    with pytest.raises(ValueError, match="multiples of 16"):
        DRAMAWorldModel(spec_of(24, 24), tiny_config(channels=(2, 2, 2, 2, 2)))
    for bad in ({"kernel": 4}, {"unimix": 1.0}, {"channels": ()}, {"reward_bins": 20}, {"headdim": 7}, {"free_bits": -1}):
        with pytest.raises(ValueError, match="DRAMAConfig|Mamba2Config"):
            tiny_config(**bad)
    model, w = tiny(), window()
    with pytest.raises(TypeError, match="expected float frames"):
        model.observe(w["obs"].to(torch.uint8), w["action"], w["reset"])
    with pytest.raises(ValueError, match=r"obs: expected \(B, T, 1, 768\) frames"):
        model.observe(w["obs"][..., :100], w["action"], w["reset"])
    with pytest.raises(ValueError, match=r"actions: expected values in \[-1, 4\)"):
        model.observe(w["obs"], w["action"] + A, w["reset"])
    state = model.initial(B)
    with pytest.raises(ValueError, match=r"actions: expected an integer tensor of shape \(3, 1\)"):
        model.imagine(state, torch.zeros(B, 1))
    with pytest.raises(ValueError, match="expected a DRAMA state"):
        model.imagine({"deter": state["h"]}, torch.zeros(B, 1, dtype=torch.long))


def test_observe_rows_gives_every_rows_h_and_z_with_observes_draws():
    """The last row of `observe_rows` holds the h and z of `observe`'s state (same generator seed); every row's z is a
    one-hot sample of its posterior and h reads the rows before it only."""
    model, w = tiny(), window()
    args = (w["obs"], w["action"], w["reset"])
    rows = model.observe_rows(*args, generator=torch.Generator().manual_seed(2))
    assert set(rows) == {"h", "z"} and rows["h"].shape[:3] == (B, T, 1)
    last = model.observe(*args, generator=torch.Generator().manual_seed(2))
    assert torch.equal(rows["h"][:, -1], last["h"]) and torch.equal(rows["z"][:, -1], last["z"])
    assert torch.equal(rows["z"].sum(-1), torch.full((B, T, 1), float(model.config.stoch)))
    changed = dict(w, obs=w["obs"].clone())
    changed["obs"][:, 6:] += 50.0
    again = model.observe_rows(changed["obs"], w["action"], w["reset"], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(again["h"][:, :7], rows["h"][:, :7], atol=1e-5) and not torch.allclose(again["h"], rows["h"])
    with pytest.raises(ValueError, match="obs"):
        model.observe_rows(w["obs"][:, :, :, :5], w["action"], w["reset"])
