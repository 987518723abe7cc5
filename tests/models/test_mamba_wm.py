"""MAMBA world model on a real env's spec and data: seeded imagination, checkpoints that round-trip, refusals.

Slow fits on real data live in test_quality.py (outside the mutation guards).
"""

import json

import pytest
import torch

from wmenv.data.collect import random_replay
from wmenv.envs import make
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.models.mamba_wm import MAMBAWorldModel, preset
from wmenv.models.registry import build_model
from wmenv.models.world_model import flat_rows


@pytest.fixture(scope="module")
def mpe():
    return random_replay("mpe:simple_spread_v3", 200)


def imagine_run(model, spec, seed, steps=4):
    g = torch.Generator().manual_seed(seed)
    state = model.initial(6, generator=g)
    for _ in range(steps):
        state, pred = model.imagine(state, torch.ones(6, spec.n_agents, dtype=torch.long), generator=g, decode=True)
    return state, pred


@pytest.mark.parametrize("name", ["small", "small-mamba2"])
def test_imagination_is_seeded_and_shaped(mpe, name):
    """Same generator seed: bitwise-equal states and predictions; another seed: other latent samples."""
    _, spec = mpe
    model = MAMBAWorldModel(spec, preset(name)).eval()
    (s1, p1), (s2, p2), (s3, _) = imagine_run(model, spec, 3), imagine_run(model, spec, 3), imagine_run(model, spec, 4)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(p1.reward, p2.reward) and torch.equal(p1.cont, p2.cont) and torch.equal(p1.obs, p2.obs)
    assert not torch.equal(s1["stoch"], s3["stoch"])
    assert p1.reward.shape == p1.cont.shape == (6, 3) and p1.obs.shape == (6, 3, spec.obs_dim) and p1.action_mask is None
    assert model.features(s1).shape == (6, 3, 64 + 64) and model.critic_features(s1).shape == (6, 3 * 128)


@pytest.mark.parametrize("name", ["small", "small-mamba2"])
def test_checkpoint_round_trip_and_refusals(mpe, tmp_path, name):
    """A fitted model reloads with every state_dict tensor and the same observe / imagine outputs; mismatches are refused."""
    replay, spec = mpe
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset(name))
    fit(model, replay, FitConfig(steps=2, batch_size=2, seq_len=5, progress=False))
    model.eval()
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m", spec).eval()
    assert again.config == model.config and model.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    window = replay.sample(3, 6, generator=1)
    outs = []
    for m in (model, again):
        g = torch.Generator().manual_seed(5)
        state = m.observe(window["obs"], window["action"], window["reset"], generator=g, alive=window["alive"].bool())
        nxt, pred = m.imagine(state, window["action"][:, -1], generator=g, decode=True)
        outs.append([*state.values(), *nxt.values(), pred.reward, pred.cont, pred.obs])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    other = make("mpe:simple_spread_v3", N=2)[1]
    with pytest.raises(ValueError, match=r"^spec: the model in .* was fitted on env"):
        load_model(tmp_path / "m", other)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["rssm"]["deter"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"^path: the weights in .* cannot be loaded into the saved configuration"):
        load_model(tmp_path / "m", spec)
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"^path: .* holds no readable world-model config.json"):
        load_model(tmp_path / "m", spec)
    with pytest.raises(ValueError, match=r"^replay: recorded for env"):
        fit(MAMBAWorldModel(other, preset("small")), replay, FitConfig(steps=1, progress=False))


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_fit_with_compiled_steps_matches_the_plain_fit(mpe, kind):
    """FitConfig(compile="steps") fits through the compiled rows and heads with the plain fit's losses; one loss of the
    same weights has the plain gradients (weights after Adam are not compared: it turns rounding-level gradients that
    are zero in exact arithmetic, e.g. of attention's key bias, into lr-sized steps)."""
    replay, spec = mpe
    models = []
    for compile in ("off", "steps"):
        torch.manual_seed(0)
        model = build_model(kind, spec, "small")
        history = fit(model, replay, FitConfig(steps=3, batch_size=4, seq_len=6, progress=False, compile=compile))
        assert model.compile_steps == (compile == "steps")
        models.append((model, history))
    (plain, h_plain), (fused, h_fused) = models
    for k in h_plain:
        assert h_fused[k] == pytest.approx(h_plain[k], rel=1e-4, abs=1e-5), k
    batch = replay.sample(4, 6, generator=torch.Generator().manual_seed(1))
    grads = []
    for compile in (False, True):
        plain.compile_steps = compile
        torch.manual_seed(3)
        loss, _ = plain.loss(batch)
        grads.append(torch.autograd.grad(loss, list(plain.parameters())))
    for name, p, q in zip([n for n, _ in plain.named_parameters()], *grads, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_steps_are_refused_for_a_model_without_them(mpe):
    """compile="steps" names the model that cannot compile its rows, before any step."""
    replay, spec = mpe

    class Plain(MAMBAWorldModel):
        steps_compilable = False

    with pytest.raises(ValueError, match=r"^FitConfig.compile: 'steps' needs .* Plain has none; use 'loss' or 'off'$"):
        fit(Plain(spec, preset("small")), replay, FitConfig(steps=1, progress=False, compile="steps"))
    with pytest.raises(ValueError, match=r"^FitConfig.compile: expected 'off', 'steps' or 'loss', got 'rows'$"):
        FitConfig(compile="rows")
    assert FitConfig(compile=True).compile == "loss" and FitConfig(compile=False).compile == "off"


@pytest.mark.parametrize("name", ["small", "small-mamba2"])
def test_observe_rows_gives_every_rows_posterior_with_observes_draws(mpe, name):
    """The last row of `observe_rows` is `observe`'s state (same generator seed), and with the row-by-row GRU row t is
    `observe`'s on the windows cut after row t (Mamba-2 draws every row's noise at once, so a shorter window draws
    other numbers); its flattened rows are what the critic reads."""
    replay, spec = mpe
    model = MAMBAWorldModel(spec, preset(name)).eval()
    w = replay.sample(3, 6, generator=2)
    args = (w["obs"], w["action"], w["reset"])
    rows = model.observe_rows(*args, generator=torch.Generator().manual_seed(7), alive=w["alive"].bool())
    assert set(rows) == {"deter", "stoch", "logits"} and rows["stoch"].shape[:3] == (3, 6, 3)
    for t in (2, 5) if name == "small" else (5,):
        cut = [x[:, : t + 1] for x in args]
        last = model.observe(*cut, generator=torch.Generator().manual_seed(7), alive=w["alive"][:, : t + 1].bool())
        assert all(torch.equal(rows[k][:, t], last[k]) for k in rows), t
    assert model.critic_features(flat_rows(rows)).shape == (18, 3 * 128)
