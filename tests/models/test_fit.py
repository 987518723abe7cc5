"""fit(): lr and clipping defaults, seeding, logging, checkpoints; save_model / load_model round trips and refusals."""

import json
import re
import shutil
import warnings
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import wmenv.fit as fit_module
from wmenv.data import EpisodeReplay, ReplayConfig
from wmenv.data.persist import remove_temporaries, temporary_name
from wmenv.envs.spec import EnvSpec
from wmenv.fit import (
    MODEL_FORMAT,
    FitConfig,
    ema_decay,
    fit,
    fit_learning_rate,
    fit_window_rows,
    load_model,
    model_average,
    save_model,
)
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel
from wmenv.models.rssm import RSSMConfig
from wmenv.models.world_model import WorldModel


def spec(name: str = "tiny", n_actions: int = 4) -> EnvSpec:
    agents = ("a0", "a1")
    box = gym.spaces.Box(-1, 1, (3,))
    act = gym.spaces.Discrete(n_actions)
    return EnvSpec(name, agents, {a: box for a in agents}, {a: act for a in agents}, gym.spaces.Box(-1, 1, (5,)), True, None)


def tiny_wm(seed: int = 0, deter: int = 5) -> MAMBAWorldModel:
    torch.manual_seed(seed)
    rssm = RSSMConfig(deter=deter, stoch=2, classes=3, hidden=8, comm_width=4, comm_layers=1, comm_heads=2, dropout=0.0)
    return MAMBAWorldModel(spec(), MAMBAConfig(rssm=rssm, head_hidden=9, head_layers=1))


class Linear(WorldModel):
    """loss = scale · Σ w (+ 0 · batch): a constant gradient ``scale`` on each of 4 weights; optional NaN at one step."""

    def __init__(self, config=None, scale: float = 1.0, nan_at: int = -1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.spec = spec()
        if config is not None:
            self.config = config
        self.scale, self.nan_at, self.calls, self.draws = scale, nan_at, 0, []

    def loss(self, batch):
        self.draws.append(float(torch.rand(())))  # the global RNG, which fit seeds
        loss = self.scale * self.w.sum() + 0 * batch["x"].sum()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        self.calls += 1
        return loss, {"lin": float(loss.detach())}

    initial = observe = imagine = predict = features = critic_features = None


class Replay:
    """Records what fit asks for; windows are uniform draws from the given generator."""

    def __init__(self, spec_description=None) -> None:
        self.spec_description, self.calls = spec_description, []

    def sample(self, batch_size, length, cross_episodes=False, generator=None, device=None):
        x = torch.rand(batch_size, length, generator=generator)
        self.calls.append((batch_size, length, cross_episodes, device, x))
        return {"x": x}


def episode_of(rows: int, first: bool, last: bool) -> dict[str, np.ndarray]:
    """Rows of an episode, or of a piece of one (``first``: it starts the episode, ``last``: it ends it)."""
    at = np.arange(rows)
    return {"obs": np.zeros((rows, 2, 3), np.float32), "is_first": first & (at == 0), "is_last": last & (at == rows - 1)}


def quiet(**kw) -> FitConfig:
    return FitConfig(**{"progress": False, **kw})


def test_fit_config_defaults():
    """FitConfig(): 1000 steps of 16 × 20-row windows, model's lr and clip, seed 0, log every 25, checkpoint at the end."""
    assert FitConfig() == FitConfig(
        steps=1000, batch_size=16, seq_len=20, lr=None, grad_clip=None, seed=0, log_every=25,
        checkpoint_every=0, run_dir=None, progress=True, compile=False, cross_episodes=False,
    )  # fmt: skip
    assert FitConfig(checkpoint_every=0).checkpoint_every == 0
    with pytest.raises(TypeError, match=r"^FitConfig.cross_episodes: expected a bool, got 1$"):
        FitConfig(cross_episodes=1)


@pytest.mark.parametrize(
    ("field", "value", "minimum"),
    [("steps", 0, 1), ("batch_size", 0, 1), ("seq_len", 0, 1), ("log_every", 0, 1), ("checkpoint_every", -1, 0)],
)
def test_fit_config_rejects_bad_counts(field, value, minimum):
    """Counts below their minimum raise a ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"^FitConfig.{field}: expected an integer >= {minimum}, got {value}$"):
        FitConfig(**{field: value})


@pytest.mark.parametrize(
    ("config", "fit_lr", "expected"),
    [(None, None, 1e-3), (SimpleNamespace(lr=3e-3, grad_clip=10.0), None, 3e-3), (SimpleNamespace(lr=3e-3), 5e-4, 5e-4)],
)
def test_adam_learning_rate_comes_from_fit_config_then_model_config_then_1e_3(config, fit_lr, expected):
    """Adam's first step moves each weight by lr (update lr·g/(|g| + ε) with g = 100)."""
    model = Linear(config, scale=100.0)
    fit(model, Replay(), quiet(steps=1, lr=fit_lr))
    torch.testing.assert_close(model.w.detach(), torch.full((4,), -expected))


@pytest.mark.parametrize(
    ("config", "fit_clip", "expected"),
    [(None, None, 10.0), (SimpleNamespace(lr=1.0, grad_clip=4.0), None, 4.0), (SimpleNamespace(grad_clip=4.0), 2.0, 2.0)],
)
def test_gradients_are_clipped_to_the_configured_norm(config, fit_clip, expected):
    """SGD(lr=1) after clipping: the gradient (100, 100, 100, 100) of norm 200 becomes clip/2 per weight."""
    model = Linear(config, scale=100.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    history = fit(model, Replay(), quiet(steps=1, grad_clip=fit_clip), optimizer=opt)
    torch.testing.assert_close(model.w.detach(), torch.full((4,), -expected / 2))  # 100 · clip / 200
    assert history["grad_norm"] == [200.0]  # the norm before clipping: √(4 · 100²)


def test_ema_decay_warms_up_as_tensorflows_then_holds():
    """min(decay, (1 + n) / (10 + n)): 0.1 at the first update, 0.5 at the 8th, the decay itself from n = 1,790 (0.995)."""
    assert ema_decay(0.995, 0) == pytest.approx(0.1) and ema_decay(0.995, 8) == pytest.approx(0.5)
    assert ema_decay(0.995, 1790) == 0.995 and ema_decay(0.995, 1789) < 0.995 and ema_decay(0.5, 100) == 0.5


def test_fit_updates_the_average_after_every_step_with_the_warmed_up_decay():
    """SGD(lr=1) on a constant gradient 1: w_k = -k after step k. The average copies w_1 at its first update, then
    A ← d_n·A + (1 - d_n)·w_{n+1} with d_n = ema_decay(0.9, n); it is a separate module the fit does not train."""
    model = Linear()
    average = model_average(model, 0.9)
    fit(model, Replay(), quiet(steps=4), optimizer=torch.optim.SGD(model.parameters(), lr=1.0), average=average)
    expected = -1.0
    for n, w in enumerate([-2.0, -3.0, -4.0], start=1):
        expected = ema_decay(0.9, n) * expected + (1 - ema_decay(0.9, n)) * w
    torch.testing.assert_close(model.w.detach(), torch.full((4,), -4.0))
    torch.testing.assert_close(average.module.w.detach(), torch.full((4,), expected))
    assert int(average.n_averaged) == 4 and average.module is not model and -4.0 < expected < -3.0
    for bad in (0, 1, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match=r"^decay: expected a number in \(0, 1\), got "):
            model_average(model, bad)


def test_fit_samples_seeded_windows_and_seeds_the_global_rng():
    """Windows come from Generator(seed) with B, T and the model's device; torch's global RNG is seeded with seed."""
    model, replay = Linear(), Replay()
    history = fit(model, replay, quiet(steps=3, batch_size=2, seq_len=5, seed=7))
    g = torch.Generator().manual_seed(7)
    for b, t, cross, device, x in replay.calls:
        assert (b, t, cross, device) == (2, 5, False, torch.device("cpu"))
        torch.testing.assert_close(x, torch.rand(2, 5, generator=g))
    torch.manual_seed(7)
    assert model.draws == [float(torch.rand(())) for _ in range(3)]
    assert set(history) == {"lin", "grad_norm", "loss"} and all(len(v) == 3 for v in history.values())
    fit(Linear(), replay, quiet(steps=1, cross_episodes=True))
    assert replay.calls[-1][2] is True  # windows may cross episodes (the model resets where one starts)
    assert history["loss"] == history["lin"] == pytest.approx([0.0, -4e-3, -8e-3])  # Σ w after k Adam steps of lr 1e-3
    assert model.training


def test_window_rows_follow_the_shortest_whole_episode_unless_windows_cross():
    """Inside episodes: at most the shortest whole episode's rows (a streamed piece does not count); across: seq_len."""
    replay = EpisodeReplay(ReplayConfig(capacity=200))
    for rows in (26, 13, 40):
        replay.add(episode_of(rows, first=True, last=True))
    assert fit_window_rows(FitConfig(seq_len=20), replay) == 13
    assert fit_window_rows(FitConfig(seq_len=10), replay) == 10
    assert fit_window_rows(FitConfig(seq_len=20, cross_episodes=True), replay) == 20
    replay.add(episode_of(2, first=False, last=True))  # an episode's last rows, stored apart
    replay.add(episode_of(3, first=True, last=False))  # the start of a running episode
    assert replay.whole_episodes.tolist() == [True, True, True, False, False]
    assert fit_window_rows(FitConfig(seq_len=20), replay) == 13
    streamed = EpisodeReplay(ReplayConfig(capacity=200))
    streamed.add(episode_of(5, first=True, last=False))
    assert fit_window_rows(FitConfig(seq_len=20), streamed) == 20  # no whole episode yet: as asked


def test_compile_wraps_the_loss_with_eager_random_streams(monkeypatch):
    """compile=True fits through torch.compile(model.loss, fallback_random) with the plain path's results."""
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append((fn, kwargs))
        return lambda *a, **kw: fn(*a, **kw)

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = fit(Linear(), Replay(), quiet(steps=3, seed=7))
    model = Linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a working compiler falls back to nothing
        history = fit(model, Replay(), quiet(steps=3, seed=7, compile=True))
    assert len(calls) == 1 and calls[0][0] == model.loss
    assert calls[0][1] == {"options": {"fallback_random": True, "cpp_wrapper": True}}
    assert history == plain
    assert fit(Linear(), Replay(), quiet(steps=2)) and len(calls) == 1  # off by default


def test_compile_failure_warns_once_and_fits_with_the_plain_loss(monkeypatch):
    """A compiler that fails at the first call: one warning naming the error, then the plain loss for every step."""
    attempts = []

    def broken(*a, **kw):
        attempts.append(1)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    plain = fit(Linear(), Replay(), quiet(steps=3, seed=7))
    message = r"^torch.compile failed \(RuntimeError: no C\+\+ compiler\); using the plain function$"
    with pytest.warns(UserWarning, match=message) as record:
        history = fit(Linear(), Replay(), quiet(steps=3, seed=7, compile=True))
    assert history == plain and len(attempts) == 1
    assert len(record) == 1


def test_a_non_finite_loss_stops_before_the_update():
    """A NaN loss raises FloatingPointError naming the step, and that step changes no weight."""
    model = Linear(nan_at=1)
    with pytest.raises(FloatingPointError, match=r"^world-model loss is nan at fit step 1: "):
        fit(model, Replay(), quiet(steps=3))
    torch.testing.assert_close(model.w.detach(), torch.full((4,), -1e-3))  # only step 0 moved the weights


def test_replay_of_another_env_is_refused():
    """A replay recorded for another env raises a ValueError naming replay; a matching or unknown one is accepted."""
    with pytest.raises(ValueError, match=r"^replay: recorded for env \{'id': 'other'"):
        fit(Linear(), Replay({"id": "other"}), quiet(steps=1))
    fit(Linear(), Replay(spec().describe()), quiet(steps=1))
    fit(Linear(), Replay(None), quiet(steps=1))


def test_progress_bar_only_when_asked(capsys):
    """progress=True shows a 'fit world model' bar counting steps with the loss on stderr; progress=False prints nothing."""
    fit(Linear(), Replay(), quiet(steps=2))
    assert capsys.readouterr().err == ""
    fit(Linear(), Replay(), FitConfig(steps=2, progress=True))
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)fit world model: 100%\|.*\| 2/2 \[.*step/s, loss=-0.004\]", err), err  # Σ w after step 1


def test_tensorboard_scalars_every_log_every_steps_and_checkpoints(tmp_path, monkeypatch):
    """run_dir: every term logged at steps 0, 2, 4, 6 (log_every 2); checkpoints after 3 and 6 steps and at the end (7)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    saved = []
    monkeypatch.setattr(fit_module, "save_model", lambda path, model: saved.append((path, float(model.w[0].detach()))))
    model = Linear()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # w = -k after k steps
    fit(model, Replay(), quiet(steps=7, log_every=2, checkpoint_every=3, run_dir=str(tmp_path)), optimizer=opt)
    assert saved == [(tmp_path / "model", -3.0), (tmp_path / "model", -6.0), (tmp_path / "model", -7.0)]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert sorted(tags) == ["world_model/grad_norm", "world_model/lin", "world_model/loss"]
    assert [e.step for e in events.Scalars("world_model/lin")] == [0, 2, 4, 6]
    assert [e.value for e in events.Scalars("world_model/lin")] == [0.0, -8.0, -16.0, -24.0]  # Σ w = -4k before step k


def test_nothing_is_written_without_run_dir(tmp_path, monkeypatch):
    """run_dir=None: no checkpoint even with checkpoint_every, no event files."""
    saved = []
    monkeypatch.setattr(fit_module, "save_model", lambda path, model: saved.append(path))
    monkeypatch.chdir(tmp_path)
    fit(Linear(), Replay(), quiet(steps=2, checkpoint_every=1))
    assert saved == [] and list(tmp_path.iterdir()) == []


def test_fit_trains_a_world_model_on_sampled_windows(tmp_path):
    """A tiny MAMBA model: 3 steps on a replay's windows lower nothing to NaN and checkpoint to run_dir/model."""

    class Windows(Replay):
        def sample(self, batch_size, length, cross_episodes=False, generator=None, device=None):
            alive = torch.ones(batch_size, length, 2, dtype=torch.bool)
            flags = torch.zeros(batch_size, length, 2, dtype=torch.bool)
            return {
                "obs": torch.randn(batch_size, length, 2, 3, generator=generator),
                "action": torch.randint(0, 4, (batch_size, length, 2), generator=generator),
                "reward": torch.randn(batch_size, length, 2, generator=generator),
                "terminated": flags, "truncated": flags, "alive": alive,
                "action_mask": torch.ones(batch_size, length, 2, 4, dtype=torch.bool),
                "reset": torch.zeros(batch_size, length, dtype=torch.bool),
            }  # fmt: skip

    model = tiny_wm()
    history = fit(model, Windows(spec().describe()), quiet(steps=3, run_dir=str(tmp_path)))
    assert set(history) == {"obs", "reward", "cont", "action_mask", "info", "kl", "kl_prior", "grad_norm", "loss"}
    again = load_model(tmp_path / "model", spec())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def same_outputs(a: MAMBAWorldModel, b: MAMBAWorldModel) -> None:
    """observe then imagine (decoded) with the same inputs and seeds give bitwise-equal results."""
    g = torch.Generator().manual_seed(0)
    obs, actions = torch.randn(2, 3, 2, 3, generator=g), torch.randint(0, 4, (2, 3, 2), generator=g)
    resets = torch.zeros(2, 3, dtype=torch.bool)
    outs = []
    for m in (a, b):
        gen = torch.Generator().manual_seed(1)
        state = m.observe(obs, actions, resets, generator=gen)
        nxt, pred = m.imagine(state, actions[:, -1], gen, decode=True)
        outs.append([*state.values(), *nxt.values(), pred.reward, pred.cont, pred.action_mask, pred.obs])
    assert all(torch.equal(x, y) for x, y in zip(*outs))


def test_save_load_round_trip(tmp_path):
    """load_model(save_model(m)) has m's config, every tensor of its state_dict and the same observe / imagine outputs."""
    model = tiny_wm().eval()
    assert save_model(tmp_path / "m", model) == tmp_path / "m"
    again = load_model(tmp_path / "m", spec()).eval()
    assert again.config == model.config and again.spec.describe() == model.spec.describe()
    assert model.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    same_outputs(model, again)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (meta["format"], meta["model"], meta["spec"]) == (MODEL_FORMAT, "MAMBAWorldModel", spec().describe())


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporaries(tmp_path):
    """Saving over a checkpoint replaces it and leaves only ``m`` in the folder; missing parents are created."""
    save_model(tmp_path / "m", tiny_wm(0))
    newer = tiny_wm(1).eval()
    save_model(tmp_path / "m", newer)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    same_outputs(newer, load_model(tmp_path / "m", spec()).eval())
    save_model(tmp_path / "a" / "b", newer)
    assert (tmp_path / "a" / "b" / "model.safetensors").is_file()


def test_save_survives_leftovers_and_cleanup_errors(tmp_path, monkeypatch):
    """A crashed save's temporary does not disturb the next save and is what `remove_temporaries` clears; failing to
    delete the replaced checkpoint is not an error."""
    prefix, suffix = temporary_name("m")
    stale = tmp_path / f"{prefix}crashed{suffix}"
    stale.mkdir()
    (stale / "junk").write_text("from a crashed save")
    save_model(tmp_path / "m", tiny_wm(0))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert remove_temporaries(tmp_path) == [stale.name] and [p.name for p in tmp_path.iterdir()] == ["m"]
    text = (tmp_path / "m" / "config.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2)  # human-readable, diff-friendly
    real = shutil.rmtree

    def busy(path, ignore_errors=False):
        if not ignore_errors:
            raise OSError(f"{path} is busy")
        real(path, ignore_errors=True)

    monkeypatch.setattr(shutil, "rmtree", busy)
    newer = tiny_wm(1).eval()
    save_model(tmp_path / "m", newer)
    same_outputs(newer, load_model(tmp_path / "m", spec()).eval())


def test_default_fit_config_and_skipped_parameters():
    """config=None is FitConfig() (1000 steps of 16 × 20); a parameter without a gradient in a step is not moved by Adam."""

    class Once(Linear):
        def __init__(self) -> None:
            super().__init__()
            self.v = nn.Parameter(torch.zeros(1))

        def loss(self, batch):
            loss, stats = super().loss(batch)
            return (loss + self.v.sum() if self.calls == 1 else loss), stats  # v only in step 0

    model, replay = Once(), Replay()
    history = fit(model, replay, None, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))
    assert len(history["loss"]) == 1000 and {c[:2] for c in replay.calls} == {(16, 20)}
    torch.testing.assert_close(model.v.detach(), torch.tensor([-1e-3]))  # one Adam step; no momentum steps afterwards


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            {"format": MODEL_FORMAT + 1},
            r"^path: expected a world-model checkpoint of format 1 of a registered kind \(\['drama', 'mabl', 'mamba'\]\), "
            r"got kind 'mamba' \('MAMBAWorldModel'\) of format 2$",
        ),
        ({"kind": "dreamer"}, r"^path: expected .* got kind 'dreamer' \('MAMBAWorldModel'\) of format 1$"),
        ({"kind": None, "model": "Dreamer"}, r"^path: expected .* got kind None \('Dreamer'\) of format 1$"),
        ({"spec": {"id": "other"}}, r"^spec: the model in .* was fitted on env \{'id': 'other'\}, got \{'id': 'tiny'"),
        ({"config": {"rssm": {"deter": 6}}}, r"^path: the weights in .* cannot be loaded into the saved configuration: "),
    ],
)
def test_load_refuses_mismatched_checkpoints(tmp_path, edit, match):
    """Another format, model class, env or configuration raises a ValueError naming the argument."""
    save_model(tmp_path / "m", tiny_wm())
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    for k, v in edit.items():
        if k == "kind" and v is None:
            del meta["kind"]
        elif k == "config":
            meta["config"]["rssm"].update(v["rssm"])
        else:
            meta[k] = v
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        load_model(tmp_path / "m", spec())


def test_load_checks_the_kind_and_reads_checkpoints_from_before_kinds(tmp_path):
    """A caller that expects another kind is refused; a checkpoint without "kind" is read by its class name."""
    model = tiny_wm().eval()
    save_model(tmp_path / "m", model)
    with pytest.raises(ValueError, match=r"^kind: .* holds a 'mamba' world model, expected 'mabl'$"):
        load_model(tmp_path / "m", spec(), kind="mabl")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "mamba"
    del meta["kind"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    same_outputs(model, load_model(tmp_path / "m", spec(), kind="mamba").eval())
    meta["config"]["surprise"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config: MAMBAConfig has no field\(s\) \['surprise'\]"):
        load_model(tmp_path / "m", spec())


def test_load_refuses_another_env_and_unreadable_files(tmp_path):
    """A spec with other actions, a missing folder, a broken config.json or broken weights raise ValueErrors."""
    save_model(tmp_path / "m", tiny_wm())
    with pytest.raises(ValueError, match=r"^spec: the model in .* was fitted on env"):
        load_model(tmp_path / "m", spec(n_actions=5))
    with pytest.raises(ValueError, match=r"^path: .*nowhere holds no readable world-model config.json: "):
        load_model(tmp_path / "nowhere", spec())
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"^path: the weights in .* cannot be loaded into the saved configuration: "):
        load_model(tmp_path / "m", spec())
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"^path: the weights in .* cannot be loaded"):
        load_model(tmp_path / "m", spec())
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"^path: .* holds no readable world-model config.json: "):
        load_model(tmp_path / "m", spec())


def test_fit_refuses_an_optimizer_whose_lr_is_not_the_configured_one():
    """A loop that keeps its own optimizer must not silently ignore FitConfig.lr (the model-based loop once did)."""
    model = Linear(SimpleNamespace(lr=3e-3), scale=100.0)
    with pytest.raises(ValueError, match=r"FitConfig.lr: 0.0005, but the optimizer passed to fit has lr \[0.003\]"):
        fit(model, Replay(), quiet(steps=1, lr=5e-4), optimizer=torch.optim.Adam(model.parameters(), lr=3e-3))
    opt = torch.optim.Adam(model.parameters(), lr=fit_learning_rate(quiet(lr=5e-4), model))
    fit(model, Replay(), quiet(steps=1, lr=5e-4), optimizer=opt)
    torch.testing.assert_close(model.w.detach(), torch.full((4,), -5e-4))
    assert fit_learning_rate(quiet(), model) == 3e-3 and fit_learning_rate(quiet(), Linear(None)) == 1e-3
