"""The model-based loop runs end to end on a real env and logs the real return against real steps."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.mappo import MAPPOConfig
from agents.model_based import ModelBasedConfig, run
from agents.train import latest_checkpoint, policy_from_checkpoint
from wmenv.data.replay import EpisodeReplay
from wmenv.dream import DreamVecEnv
from wmenv.fit import FitConfig

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs_collect_fit_dream_and_evaluates(tmp_path):
    cmd = [sys.executable, "examples/04_model_based.py", "--no-progress", "--iterations", "2", "--real-steps", "100",
           "--num-envs", "2", "--fit-steps", "10", "--fit.batch-size", "4", "--dream-worlds", "16", "--dream-updates", "1",
           "--eval-episodes", "2", "--policy", "sp-mamba", "--sp-mamba.d-model", "16", "--run-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert [s for s, _ in result["eval_returns"]] == [0, 100, 200] and result["real_steps"] == 200
    assert (tmp_path / "world_model" / "model.safetensors").is_file()
    tags = EventAccumulator(str(tmp_path)).Reload().Tags()["scalars"]
    assert {
        "eval/episode_return",
        "world_model/kl",
        "dream/policy_loss",
        "dream/choice_entropy",
        "schedule/train_ratio",
    } <= set(tags), tags
    imagined = [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("dream/reward_per_agent_step")]
    assert len(imagined) == 2 and all(np.isfinite(imagined))  # one per update: the dream's reward for the actor
    assert "achieved train ratio 8.0, dream ratio 7.2" in proc.stdout  # 2 x 10 fit steps x 4 x 20 rows / 200 steps;
    # 2 x 1 dream iteration x 16 worlds x 15 steps x 3 agents / 200 steps


def _small(run_dir, iterations, **kw):
    fit = FitConfig(batch_size=4, progress=False)
    kw = {"real_steps": 60, "num_envs": 2, "fit_steps": 5, "dream_updates": 1, "fit": fit, **kw}
    return ModelBasedConfig(
        iterations=iterations, dream_worlds=8, eval_episodes=1,
        run_dir=str(run_dir), progress=False, **kw,
    )  # fmt: skip


def test_resume_continues_the_curve_replay_and_weights(tmp_path):
    """A run stopped after 1 iteration and resumed to 2 keeps its curve and replay (and, with ``keep_every``, its
    milestone checkpoints); its checkpoint exports."""
    first = run(_small(tmp_path, 1))
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_000000000060"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "world_model", "replay.json", "loop.json"}
    second = run(_small(tmp_path, 2, resume=True, keep_checkpoints=1, keep_every=60))
    assert second["eval_returns"][:2] == first["eval_returns"] and [s for s, _ in second["eval_returns"]] == [0, 60, 120]
    assert ckpt.is_dir(), "keep_every keeps the 60-step milestone that keep_checkpoints=1 would prune"
    assert second["real_steps"] == 120
    evals = EventAccumulator(str(tmp_path)).Reload().Scalars("eval/episode_return")
    assert sorted({e.step for e in evals}) == [0, 60, 120], "the resumed run keeps the scalars logged up to its checkpoint"
    from wmenv.data.replay import EpisodeReplay

    replay = EpisodeReplay.load_segments(latest_checkpoint(tmp_path) / "replay.json", tmp_path / "replay")
    earlier = EpisodeReplay.load_segments(ckpt / "replay.json", tmp_path / "replay")
    assert replay.episode_ids[: earlier.num_episodes].tolist() == earlier.episode_ids.tolist()
    assert int(replay.episode_lengths.sum()) > int(earlier.episode_lengths.sum())
    # the replay is saved incrementally: one segment per iteration, each holding only that iteration's episodes
    segments = sorted((tmp_path / "replay").iterdir())
    assert len(segments) == 2 and segments[1].name.startswith(f"segment_{earlier.num_episodes:010d}-")
    # a checkpoint of an older run (one whole replay file) still resumes
    latest = latest_checkpoint(tmp_path)
    replay.save(latest / "replay.safetensors")
    (latest / "replay.json").unlink()
    assert run(_small(tmp_path, 3, resume=True))["real_steps"] == 180
    # the actor in the checkpoint is the one the model-free tools read (ONNX export, policy_from_checkpoint)
    policy, train_cfg = policy_from_checkpoint(latest_checkpoint(tmp_path))
    assert policy.obs_dim == 64 + 8 * 8  # the default latent actor reads the small preset's [h, z]
    logits, _ = policy.step(torch.zeros(2, 128), policy.initial_state(2), torch.zeros(2, dtype=torch.bool))
    assert train_cfg["env_id"] == "mpe:simple_spread_v3" and logits.shape == (2, 5)


def test_same_seed_same_run(tmp_path):
    a, b = run(_small(tmp_path / "a", 1)), run(_small(tmp_path / "b", 1))
    assert a["eval_returns"] == b["eval_returns"] and a["real_returns"] == b["real_returns"]
    wa, wb = (load_file(str(latest_checkpoint(tmp_path / r) / "model.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    run(_small(tmp_path / "c", 1, seed=1))
    wc = load_file(str(latest_checkpoint(tmp_path / "c") / "model.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if k.startswith("agent.policy."))


def test_latent_actors_act_through_the_filter_resume_and_repeat(tmp_path):
    """actor_input="latent": the actor reads F = H + S·K features in the dream and, through each agent's filter, on
    the real env; the checkpoint rebuilds it; a resumed run continues as an uninterrupted one and a same-seed run
    repeats."""
    first = run(_small(tmp_path / "a", 1, actor_input="latent"))
    again = run(_small(tmp_path / "b", 1, actor_input="latent"))
    assert first["eval_returns"] == again["eval_returns"] and first["real_returns"] == again["real_returns"]
    decoded = run(_small(tmp_path / "c", 1, actor_input="decoded"))
    assert decoded["eval_returns"][1] != first["eval_returns"][1]
    assert policy_from_checkpoint(latest_checkpoint(tmp_path / "c"))[0].obs_dim == 18  # MPE's observation
    second = run(_small(tmp_path / "a", 2, actor_input="latent", resume=True))
    assert second["eval_returns"][:2] == first["eval_returns"] and second["real_steps"] == 120
    straight = run(_small(tmp_path / "d", 2, actor_input="latent"))  # the resume is exact: filters, envs mid-episode
    assert second["eval_returns"] == straight["eval_returns"] and second["real_returns"] == straight["real_returns"]
    policy, train_cfg = policy_from_checkpoint(latest_checkpoint(tmp_path / "a"))
    assert train_cfg["actor_input"] == "latent" and policy.obs_dim == 64 + 8 * 8  # the small preset's [h, z]
    with pytest.raises(ValueError, match="another architecture"):  # a decoded actor cannot take over a latent one
        run(_small(tmp_path / "a", 3, resume=True, actor_input="decoded"))


def test_model_ema_dreams_in_the_average_checkpoints_both_and_resumes_exactly(tmp_path):
    """model_ema: the actor trains and acts through the average of the fitted weights (a checkpoint's world_model),
    the fitted model is kept beside it (world_model_fit); a resumed run continues as an uninterrupted one; a checkpoint
    is refused by a run with the other setting, and impossible settings before any work."""
    from wmenv.envs import make
    from wmenv.fit import load_model

    _, spec = make("mpe:simple_spread_v3")
    first = run(_small(tmp_path / "a", 1, model_ema=0.9))
    ckpt = latest_checkpoint(tmp_path / "a")
    average, fitted = (load_model(ckpt / name, spec) for name in ("world_model", "world_model_fit"))
    assert any(not torch.equal(a, f) for a, f in zip(average.parameters(), fitted.parameters(), strict=True))
    assert json.loads((ckpt / "loop.json").read_text())["model_ema_updates"] == 5  # one per fit step
    final = load_model(tmp_path / "a" / "world_model", spec)  # the run's world model is the one its actor knows
    assert all(torch.equal(a, f) for a, f in zip(average.parameters(), final.parameters(), strict=True))
    run(_small(tmp_path / "p", 1))  # the same seed without the average: the same fit, another dream
    plain = load_file(str(latest_checkpoint(tmp_path / "p") / "model.safetensors"))
    with_ema = load_file(str(ckpt / "model.safetensors"))
    assert any(not torch.equal(plain[k], with_ema[k]) for k in plain if k.startswith("agent.policy."))
    plain_fit = load_model(latest_checkpoint(tmp_path / "p") / "world_model", spec)
    assert all(torch.equal(a, f) for a, f in zip(plain_fit.parameters(), fitted.parameters(), strict=True))
    second = run(_small(tmp_path / "a", 2, model_ema=0.9, resume=True))
    straight = run(_small(tmp_path / "b", 2, model_ema=0.9))
    assert second["eval_returns"][:2] == first["eval_returns"]
    assert second["eval_returns"] == straight["eval_returns"] and second["real_returns"] == straight["real_returns"]
    for name in ("world_model", "world_model_fit"):
        a, b = (load_model(latest_checkpoint(tmp_path / r) / name, spec) for r in "ab")
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True)), name
    with pytest.raises(ValueError, match="checkpoint of a run with model_ema .* this run has model_ema=0.0"):
        run(_small(tmp_path / "a", 3, resume=True))
    with pytest.raises(ValueError, match="checkpoint of a run without model_ema .* this run has model_ema=0.9"):
        run(_small(tmp_path / "p", 2, resume=True, model_ema=0.9))
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=r"^ModelBasedConfig.model_ema: expected a decay in \[0, 1\), got "):
            _small(tmp_path / "c", 1, model_ema=bad)
    with pytest.raises(ValueError, match="^ModelBasedConfig.model_ema: MAG's error predictor"):
        _small(tmp_path / "c", 1, model_ema=0.9, rollout="mag")


def test_resume_refuses_other_world_model_and_corrupt_checkpoints(tmp_path):
    run(_small(tmp_path, 1))
    with pytest.raises(ValueError, match="another architecture"):  # the critic reads the world model's features
        run(_small(tmp_path, 2, resume=True, model="smac"))
    (latest_checkpoint(tmp_path) / "loop.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        run(_small(tmp_path, 2, resume=True))


def test_mabl_world_model_runs_the_loop_resumes_and_is_refused_as_another_kind(tmp_path):
    """--model-kind mabl: the latent actor reads MABL's agent features [h^a, z^a] (in the dream and through each
    agent's own filter on the real env), the critic both levels; the run resumes; resuming as "mamba" is refused."""
    first = run(_small(tmp_path, 1, model_kind="mabl"))
    assert len(first["eval_returns"]) == 2
    ckpt = latest_checkpoint(tmp_path)
    assert json.loads((ckpt / "world_model" / "config.json").read_text())["kind"] == "mabl"
    policy, _ = policy_from_checkpoint(ckpt)
    assert policy.obs_dim == 64 + 8 * 8
    second = run(_small(tmp_path, 2, model_kind="mabl", resume=True))
    assert second["eval_returns"][:2] == first["eval_returns"] and second["real_steps"] == 120
    with pytest.raises(ValueError, match="holds a 'mabl' world model, expected 'mamba'"):
        run(_small(tmp_path, 3, resume=True))


@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_mamba2_dynamics_run_the_loop_and_resume_exactly(tmp_path, kind):
    """--model small-mamba2 (MAMBA's RSSM or MABL's levels): the latent actor reads [h, z] of the Mamba-2 model in the
    dream and through each agent's filter (Mamba-2 block states carried mid-episode) on the real env; a resumed run
    equals an uninterrupted one."""
    first = run(_small(tmp_path / "a", 1, model="small-mamba2", model_kind=kind))
    assert policy_from_checkpoint(latest_checkpoint(tmp_path / "a"))[0].obs_dim == 64 + 8 * 8
    second = run(_small(tmp_path / "a", 2, model="small-mamba2", model_kind=kind, resume=True))
    straight = run(_small(tmp_path / "b", 2, model="small-mamba2", model_kind=kind))
    assert second["eval_returns"][:2] == first["eval_returns"]
    assert second["eval_returns"] == straight["eval_returns"] and second["real_returns"] == straight["real_returns"]


def test_model_overrides_reach_the_world_model_and_are_checked_before_work(tmp_path):
    """--model-overrides: the fitted model's config holds them, a resume with other overrides is refused as another
    model, and unknown or ill-typed overrides fail when the config is built (no run folder is written)."""
    run(_small(tmp_path / "a", 1, model_overrides={"head_hidden": 32, "rssm.hidden": 48}))
    saved = json.loads((latest_checkpoint(tmp_path / "a") / "world_model" / "config.json").read_text())
    assert saved["config"]["head_hidden"] == 32 and saved["config"]["rssm"]["hidden"] == 48
    assert saved["config"]["rssm"]["deter"] == 64, "fields not overridden keep the preset's value"
    with pytest.raises(ValueError, match=r"has config .*expected the 'small' preset \(overrides \{\}\)"):
        run(_small(tmp_path / "a", 2, resume=True))
    with pytest.raises(ValueError, match=r"^ModelBasedConfig.model_overrides\['head_width'\]: MAMBAConfig has no field"):
        _small(tmp_path / "b", 1, model_overrides={"head_width": 32})
    with pytest.raises(ValueError, match=r"^ModelBasedConfig.model_overrides\['rssm.deter'\]: expected a value of type int"):
        _small(tmp_path / "b", 1, model_overrides={"rssm.deter": "wide"})
    assert not (tmp_path / "b").exists()


def test_reward_event_weight_reaches_the_world_model_and_is_refused_elsewhere(tmp_path):
    """--reward-event-weight: the fitted model's config holds it (and a resume with another weight is refused as another
    model); MABL's model and non-positive weights are refused."""
    run(_small(tmp_path, 1, reward_event_weight=5.0))
    saved = json.loads((latest_checkpoint(tmp_path) / "world_model" / "config.json").read_text())
    assert saved["config"]["reward_event_weight"] == 5.0
    with pytest.raises(ValueError, match="has config"):
        run(_small(tmp_path, 2, resume=True))
    with pytest.raises(ValueError, match="reward_event_weight: MAMBA's world model option, the run's model kind is 'mabl'"):
        ModelBasedConfig(model_kind="mabl", reward_event_weight=5.0)
    with pytest.raises(ValueError, match="ModelBasedConfig.reward_event_weight: expected a positive"):
        ModelBasedConfig(reward_event_weight=0.0)


def test_config_checks():
    presets = "'smac', 'flatland', 'small', 'medium', 'smac-mamba2' or 'small-mamba2'"
    with pytest.raises(ValueError, match=f"ModelBasedConfig.model: expected {presets}, got 'tiny'"):
        ModelBasedConfig(model="tiny")
    with pytest.raises(ValueError, match="ModelBasedConfig.model: expected .*, got 'medium'"):
        ModelBasedConfig(model_kind="mabl", model="medium")  # MAMBA's preset only
    with pytest.raises(ValueError, match="ModelBasedConfig.model_kind: expected 'mamba', 'mabl' or 'drama', got 'dreamer'"):
        ModelBasedConfig(model_kind="dreamer")
    with pytest.raises(ValueError, match="ModelBasedConfig.model: expected 'xs', 's' or 'cpu-small', got 'small'"):
        ModelBasedConfig(model_kind="drama")
    drama = ModelBasedConfig(model_kind="drama", model="cpu-small")
    assert drama.fit.compile == "off" and ModelBasedConfig().fit.compile == "steps"  # DRAMA has no per-row recurrence
    with pytest.raises(ValueError, match="ModelBasedConfig.horizon: expected an integer >= 1, got 0"):
        ModelBasedConfig(horizon=0)
    with pytest.raises(ValueError, match="ModelBasedConfig.keep_every: expected an integer >= 0, got -1"):
        ModelBasedConfig(keep_every=-1)
    with pytest.raises(ValueError, match="ModelBasedConfig.actor_input: expected 'decoded' or 'latent', got 'raw'"):
        ModelBasedConfig(actor_input="raw")
    with pytest.raises(ValueError, match="ModelBasedConfig.device: expected a torch device string, got 'gpu0'"):
        ModelBasedConfig(device="gpu0")
    assert ModelBasedConfig(device="cuda").mappo.device == "cuda"  # one knob: the agent follows the run's device
    with pytest.raises(ValueError, match="ModelBasedConfig.mappo.device: 'cuda:1' differs from the run's device 'cuda:0'"):
        ModelBasedConfig(device="cuda:0", mappo=MAPPOConfig(device="cuda:1"))


def test_scheduled_units_keep_the_cumulative_ratio_on_target():
    """Each update adds the whole units nearest the target; the achieved ratio stays within half a unit of it."""
    from agents.schedule import achieved_ratios, scheduled_units

    assert scheduled_units(64.0, 1000, 0, 320) == 200  # 64 x 1000 rows / 320 rows per fit step
    assert scheduled_units(96.0, 1000, 0, 11520) == 8  # 96,000 / 11,520 = 8.33
    assert scheduled_units(96.0, 2000, 8 * 11520, 11520) == 9  # (192,000 - 92,160) / 11,520 = 8.67
    assert scheduled_units(1.0, 10, 1000, 7) == 0  # ahead of target: nothing, never negative
    done = 0
    for k in range(1, 50):
        done += 11520 * scheduled_units(96.0, 1000 * k, done, 11520)
        assert abs(done - 96.0 * 1000 * k) <= 11520 / 2
    counters = {"env_steps": 1000, "replayed_steps": 64_000, "imagined_agent_steps": 92_160}
    assert achieved_ratios(counters) == {"train_ratio": 64.0, "dream_ratio": 92.16}
    with pytest.raises(ValueError, match=r"^unit: "):
        scheduled_units(1.0, 10, 0, 0)


def test_fit_lr_reaches_the_world_model_optimizer(tmp_path):
    """--run.fit.lr sets the world model's Adam lr (it was once ignored for the model config's); None keeps the model's."""
    run(_small(tmp_path / "lr", 1, fit=FitConfig(batch_size=4, progress=False, lr=3e-4)))
    run(_small(tmp_path / "default", 1))
    loops = [json.loads((latest_checkpoint(tmp_path / d) / "loop.json").read_text()) for d in ("lr", "default")]
    assert [loop["param_groups"][0]["lr"] for loop in loops] == [3e-4, 1e-3]  # the `small` preset's lr is 1e-3


def test_ratios_set_the_work_per_update_and_are_achieved(tmp_path):
    """With ratios instead of fixed counts, fit steps and dream iterations follow the real steps collected."""
    cfg = _small(tmp_path, 2, fit_steps=0, dream_updates=0, train_ratio=8.0, dream_ratio=12.0)
    result = run(cfg)
    # per 60 real steps: 8 x 60 = 480 rows = 6 fit steps of 4 x 20 rows; 12 x 60 = 720 agent-steps = 2 iterations of 8 x 15 x 3
    assert result["achieved"] == {"train_ratio": 8.0, "dream_ratio": 12.0}
    scalars = EventAccumulator(str(tmp_path)).Reload()
    assert [e.value for e in scalars.Scalars("schedule/fit_steps")] == [6, 6]
    assert [e.value for e in scalars.Scalars("schedule/dream_updates")] == [2, 2]
    assert result["config"]["train_ratio"] == 8.0 and "config/text_summary" in scalars.Tags()["tensors"]


def test_updates_after_every_episode(tmp_path):
    """real_episodes=1 with one copy updates after each 25-step MPE episode, as the MAMBA paper's schedule."""
    result = run(_small(tmp_path, 2, num_envs=1, real_episodes=1))
    assert [s for s, _ in result["eval_returns"]] == [0, 25, 50] and len(result["real_returns"]) == 2


def test_the_sampling_policys_episode_metrics_are_logged_kept_and_resumed(tmp_path):
    """Flatland's % arrived of the real training episodes (the papers' curves) per iteration: in the result, in
    TensorBoard, through a resume and from an overlapped worker alike; MPE reports none."""
    flat = {"env_id": "flatland:5", "env_kwargs": {"malfunction_rate": 0.0, "max_episode_steps": 20}, "real_steps": 80}
    straight = run(_small(tmp_path / "straight", 2, **flat))
    metrics = straight["real_metrics"]
    assert [s for s, _ in metrics] == [80, 160] and all(set(m) == {"arrived_fraction"} for _, m in metrics)
    assert all(0.0 <= m["arrived_fraction"] <= 1.0 for _, m in metrics)
    logged = EventAccumulator(str(tmp_path / "straight")).Reload().Scalars("charts/real_arrived_fraction")
    assert [(e.step, e.value) for e in logged] == [(s, pytest.approx(m["arrived_fraction"])) for s, m in metrics]
    run(_small(tmp_path / "resumed", 1, **flat))
    resumed = run(_small(tmp_path / "resumed", 2, resume=True, **flat))
    assert resumed["real_metrics"] == metrics and resumed["real_returns"] == straight["real_returns"]
    overlapped = run(_small(tmp_path / "overlap", 1, overlap="local", **flat))
    assert overlapped["real_metrics"] == metrics[:1]  # the first collection is the in-line one
    assert run(_small(tmp_path / "mpe", 1))["real_metrics"] == []


def test_episodes_shorter_than_the_windows_fit_on_shorter_or_crossing_windows(tmp_path):
    """MPE with max_cycles 10 stores 11-row episodes, shorter than 20-row windows: inside episodes the fit takes windows
    of 11 rows (it asked for 12 before, which no episode holds), across episodes the 20 asked for. The achieved
    train ratio shows the rows: 5 steps x 4 windows x T / 60 real steps."""
    short = {"env_kwargs": {"max_cycles": 10}}
    inside = run(_small(tmp_path / "inside", 1, **short))
    cross = run(_small(tmp_path / "cross", 1, fit=FitConfig(batch_size=4, cross_episodes=True, progress=False), **short))
    assert inside["achieved"]["train_ratio"] == pytest.approx(5 * 4 * 11 / 60)
    assert cross["achieved"]["train_ratio"] == pytest.approx(5 * 4 * 20 / 60)


def test_expected_terminations_reach_the_dream_and_the_loop_runs(tmp_path, monkeypatch):
    """terminations="expected": the dream never ends an imagined agent and MAPPO's GAE gets its continuations."""
    import agents.model_based as loop

    made = []
    monkeypatch.setattr(loop, "DreamVecEnv", lambda *a, **kw: made.append(kw) or DreamVecEnv(*a, **kw))
    out = run(_small(tmp_path, 1, terminations="expected"))
    assert made[0]["terminations"] == "expected" and np.isfinite(out["eval_returns"][-1][1])
    with pytest.raises(ValueError, match=r"^ModelBasedConfig.terminations: expected 'sample', 'threshold' or 'expected'"):
        ModelBasedConfig(terminations="never")


def test_named_schedules_reproduce_the_paper_and_the_cli_reads_them():
    """mamba-flatland / mamba-smac are the paper's Appendix A as its code ran; --schedule picks them, flags override."""
    from agents.model_based import SCHEDULES, schedule_config

    assert set(SCHEDULES) == {"cpu", "mamba-flatland", "mamba-smac"} and schedule_config("cpu") == ModelBasedConfig()
    fl, sc = schedule_config("mamba-flatland"), schedule_config("mamba-smac")
    assert (fl.model, fl.fit.batch_size, fl.fit.seq_len, fl.fit_steps, fl.capacity) == ("flatland", 40, 50, 40, 500_000)
    assert fl.fit.compile == sc.fit.compile == "steps"  # the compiled fit, as the default schedule
    assert fl.fit.cross_episodes and sc.fit.cross_episodes and not ModelBasedConfig().fit.cross_episodes  # the code's ring
    assert fl.terminations == sc.terminations == "expected" and ModelBasedConfig().terminations == "sample"
    assert (sc.model, sc.fit.seq_len, sc.fit_steps, sc.capacity) == ("smac", 20, 60, 250_000)
    for c in (fl, sc):
        assert (c.real_episodes, c.num_envs, c.dream_updates, c.horizon, c.mappo.epochs) == (1, 1, 4, 15, 5)
        assert (c.mappo.lr, c.mappo.critic_lr, c.mappo.entropy_coef, c.mappo.entropy_decay) == (5e-4, 5e-4, 1e-3, 0.99998)
        assert (c.policy, c.mlp.layers, c.critic.recurrent) == ("mlp", 2, False)  # MAMBA's Actor, AugmentedCritic
    assert (fl.dream_worlds, sc.dream_worlds) == (40 * 49, 40 * 19) and fl.mlp.hidden == 400 and sc.mlp.hidden == 256
    assert schedule_config("mamba-flatland") is not schedule_config("mamba-flatland")
    with pytest.raises(ValueError, match=r"^schedule: "):
        schedule_config("mamba-atari")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        cli = __import__("04_model_based").cli
    finally:
        sys.path.pop(0)
    cfg = cli(["--schedule", "mamba-flatland", "--iterations", "3", "--fit-steps", "7"])
    assert (cfg.schedule, cfg.model, cfg.iterations, cfg.fit_steps, cfg.fit.seq_len) == (
        "mamba-flatland",
        "flatland",
        3,
        7,
        50,
    )
    assert cli([]) == ModelBasedConfig()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"train_ratio": 0.0}, r"^ModelBasedConfig.train_ratio: expected a positive finite number, got 0.0"),
        ({"dream_ratio": float("inf")}, r"^ModelBasedConfig.dream_ratio: "),
        ({"train_ratio": True}, r"^ModelBasedConfig.train_ratio: "),
        ({"fit_steps": -1}, r"^ModelBasedConfig.fit_steps: expected an integer >= 0, got -1"),
        ({"real_episodes": 1.5}, r"^ModelBasedConfig.real_episodes: "),
        ({"capacity": 10}, r"^ModelBasedConfig.fit.seq_len: windows of 20 rows cannot fit a replay of capacity 10"),
    ],
)
def test_impossible_schedules_are_refused_before_any_work(kw, message):
    """Ratios <= 0 or infinite, negative counts and windows longer than the replay are ValueErrors naming the field."""
    with pytest.raises(ValueError, match=message):
        ModelBasedConfig(**kw)


def test_too_few_real_steps_for_one_episode_is_refused(tmp_path):
    """A run whose copies cannot finish one episode fails before collecting anything."""
    with pytest.raises(ValueError, match=r"^ModelBasedConfig.real_steps: 1 iterations x 40 steps over 2 copies give each"):
        run(_small(tmp_path, 1, real_steps=40))
    assert not (tmp_path / "checkpoints").exists()


def test_mag_rollouts_fit_the_predictor_checkpoint_it_and_resume(tmp_path, monkeypatch):
    """rollout="mag": the error predictor is fitted after each model fit, saved with its optimizer in every checkpoint,
    and a resumed run continues from it; a checkpoint without one is refused by a MAG run, and so is a model kind
    without per-step errors."""
    from wmenv.dream.mag import ErrorPredictorConfig, MAGConfig

    mag = MAGConfig(candidates=2, lookahead=2, predictor=ErrorPredictorConfig(hidden=16, layers=1, minibatches=3,
                                                                            batch_size=4, seq_len=5))  # fmt: skip
    first = run(_small(tmp_path / "mag", 1, rollout="mag", mag=mag))
    ckpt = latest_checkpoint(tmp_path / "mag")
    stored = load_file(str(ckpt / "mag_predictor.safetensors"))
    assert {"weight.net.0.weight", "weight.net.2.bias"} <= set(stored) and any(k.startswith("optim.") for k in stored)
    assert "mag_param_groups" in json.loads((ckpt / "loop.json").read_text())
    tags = EventAccumulator(str(tmp_path / "mag")).Reload().Tags()["scalars"]
    assert "mag/predictor_loss" in tags
    second = run(_small(tmp_path / "mag", 2, rollout="mag", mag=mag, resume=True))
    assert second["eval_returns"][:2] == first["eval_returns"] and second["real_steps"] == 120
    later = load_file(str(latest_checkpoint(tmp_path / "mag") / "mag_predictor.safetensors"))
    assert not torch.equal(later["weight.net.0.weight"], stored["weight.net.0.weight"])  # fitted again after resuming
    run(_small(tmp_path / "plain", 1))
    with pytest.raises(ValueError, match=r"holds no readable .* MAG predictor"):
        run(_small(tmp_path / "plain", 2, rollout="mag", mag=mag, resume=True))
    from wmenv.models.mabl import MABLWorldModel

    monkeypatch.setattr(MABLWorldModel, "has_step_errors", False)
    with pytest.raises(ValueError, match=r"^ModelBasedConfig.rollout: 'mag' needs a world model with per-step errors, "
                                         r"'mabl' has none$"):  # fmt: skip
        ModelBasedConfig(rollout="mag", model_kind="mabl")


@pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics not installed")
@pytest.mark.parametrize("kind", ["mamba", "mabl"])
def test_the_loop_runs_on_continuous_actions_and_resumes(tmp_path, kind):
    """Issue 14: MaMuJoCo's HalfCheetah 2x3 through the whole loop (float actions in the replay, the world model, the
    dream and the Gaussian actor, latent actors' filters on the real env); a resumed run continues."""
    env = {"env_id": "mamujoco:HalfCheetah:2x3", "env_kwargs": {"max_episode_steps": 30}, "model_kind": kind}
    first = run(_small(tmp_path, 1, **env))
    assert first["real_steps"] == 60 and all(np.isfinite(r) for _, r in first["eval_returns"])
    replay = EpisodeReplay.load_segments(latest_checkpoint(tmp_path) / "replay.json", tmp_path / "replay")
    actions = replay.sample(2, 5)["action"]
    assert actions.dtype == torch.float32 and actions.shape[-1] == 3 and actions.abs().max() <= 1
    assert run(_small(tmp_path, 2, resume=True, **env))["real_steps"] == 120
    with pytest.raises(ValueError, match="MAG's planner samples discrete candidate actions"):
        run(_small(tmp_path / "mag", 1, rollout="mag", **env))


def test_dfs_sampler_counts_fit_and_dream_starts_and_resumes_exactly(tmp_path):
    """sampler="dfs": fit windows are counted in c (5 fit steps x 4 windows per iteration), dream starts in v; the
    counts travel with the checkpoint, so 1 iteration + resume equals 2 straight."""
    from agents.resume import load_run_state

    first = run(_small(tmp_path / "a", 1, sampler="dfs"))
    dfs = load_run_state(latest_checkpoint(tmp_path / "a"))["dfs"]
    assert dfs["counts"][0].sum() == 5 * 4 and dfs["counts"][1].sum() > 0
    second = run(_small(tmp_path / "a", 2, sampler="dfs", resume=True))
    straight = run(_small(tmp_path / "b", 2, sampler="dfs"))
    assert second["eval_returns"] == straight["eval_returns"] and second["eval_returns"][:2] == first["eval_returns"]
    uniform = run(_small(tmp_path / "c", 2))
    assert uniform["eval_returns"][1:] != straight["eval_returns"][1:], "DFS draws other windows than uniform"
    with pytest.raises(ValueError, match="ModelBasedConfig.sampler"):
        _small(tmp_path / "d", 1, sampler="prioritized")


def test_dream_recent_draws_dream_starts_from_the_newest_episodes_only(tmp_path):
    """dream_recent: a window wider than the replay draws the uniform starts exactly (the same curve as the default);
    one of 25 rows (one MPE episode) changes the dream's starts and so the actor after the second update; refused
    below 0 and beside DFS."""
    default = run(_small(tmp_path / "a", 3))
    wide = run(_small(tmp_path / "b", 3, dream_recent=10_000))
    narrow = run(_small(tmp_path / "c", 3, dream_recent=25))
    assert wide["eval_returns"] == default["eval_returns"]
    assert narrow["eval_returns"][2:] != default["eval_returns"][2:]
    with pytest.raises(ValueError, match="ModelBasedConfig.dream_recent"):
        _small(tmp_path / "d", 1, dream_recent=-1)
    with pytest.raises(ValueError, match="ModelBasedConfig.dream_recent: DFS draws its own"):
        _small(tmp_path / "d", 1, dream_recent=100, sampler="dfs")


def test_streamed_collection_fits_before_any_episode_ends(tmp_path):
    """MPE episodes last 25 steps; 2 iterations of 12 steps per copy end none, so only a streamed replay has rows."""
    cfg = _small(tmp_path / "whole", 2, real_steps=24)
    cfg.fit.seq_len = 8
    with pytest.raises(ValueError, match="fewer than one mpe:simple_spread_v3 episode"):
        run(cfg)
    cfg = _small(tmp_path / "stream", 2, real_steps=24, stream=True)
    cfg.fit.seq_len = 8
    out = run(cfg)
    assert out["real_steps"] == 48 and out["achieved"]["train_ratio"] > 0  # the model was fitted on the pieces
    with pytest.raises(ValueError, match="ModelBasedConfig.stream: collecting until episodes end"):
        _small(tmp_path, 1, stream=True, real_episodes=1)
    cfg = _small(tmp_path / "short", 1, real_steps=8, stream=True)
    with pytest.raises(ValueError, match=r"pieces of 4 rows per copy, shorter than the fit's windows \(20 rows\)"):
        run(cfg)


def test_streamed_pieces_do_not_shorten_the_windows(tmp_path):
    """Two streaming copies, 12 steps each per call: the third call stores each copy's last 2 rows of its first
    25-step episode as a piece of their own (the other copy's rows came between). The fit keeps its 8-row windows
    (it took 2-row windows there before): 3 x 5 steps x 4 windows x 8 rows / 72 real steps."""
    cfg = _small(tmp_path, 3, real_steps=24, stream=True)
    cfg.fit.seq_len = 8
    assert run(cfg)["achieved"]["train_ratio"] == pytest.approx(3 * 5 * 4 * 8 / 72)


def test_prefill_spans_iterations_and_resumes_exactly(tmp_path):
    """prefill=90 at 60 real steps per iteration: random actions through the first iteration and half the second; a
    run stopped after one iteration (mid-prefill) and resumed to three equals the uninterrupted run, and the prefill
    changes what is collected."""
    straight = run(_small(tmp_path / "a", 3, prefill=90))
    run(_small(tmp_path / "b", 1, prefill=90))
    resumed = run(_small(tmp_path / "b", 3, prefill=90, resume=True))
    assert resumed["eval_returns"] == straight["eval_returns"] and resumed["real_returns"] == straight["real_returns"]
    assert straight["prefill"] == 90
    plain = run(_small(tmp_path / "c", 3))
    assert plain["prefill"] == 0 and plain["real_returns"] != straight["real_returns"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "kw",
    [
        {"actor_input": "latent", "fit": FitConfig(batch_size=4, progress=False, compile="steps")},
        {"actor_input": "decoded", "rollout": "mag"},
        {"model_kind": "mabl"},
        {"model_kind": "mamba", "model": "small-mamba2", "policy": "sp-mamba"},
    ],
    ids=["latent-compiled", "decoded-mag", "mabl", "mamba2-sp-mamba"],
)
def test_the_loop_runs_on_cuda_and_resumes(tmp_path, kw):
    """device="cuda": world model, agent and dream on the GPU (the envs and the replay on the CPU); collect, fit, dream,
    evaluate, checkpoint and resume run, and the saved weights load back."""
    first = run(_small(tmp_path, 1, device="cuda", **kw))
    second = run(_small(tmp_path, 2, device="cuda", resume=True, **kw))
    assert second["eval_returns"][:2] == first["eval_returns"] and second["real_steps"] == 120
    assert all(np.isfinite(r) for _, r in second["eval_returns"])
    policy, train_cfg = policy_from_checkpoint(latest_checkpoint(tmp_path))
    assert train_cfg["device"] == "cuda" and all(p.device.type == "cpu" for p in policy.parameters())
