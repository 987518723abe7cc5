"""The model-based loop runs end to end on a real env and logs the real return against real steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.model_based import ModelBasedConfig, run
from agents.train import latest_checkpoint, policy_from_checkpoint
from wmenv.fit import FitConfig

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs_collect_fit_dream_and_evaluates(tmp_path):
    cmd = [sys.executable, "examples/04_model_based.py", "--no-progress", "--iterations", "2", "--real-steps", "100",
           "--num-envs", "2", "--fit.steps", "10", "--fit.batch-size", "4", "--dream-worlds", "16", "--dream-updates", "1",
           "--eval-episodes", "2", "--policy", "sp-mamba", "--sp-mamba.d-model", "16", "--run-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert [s for s, _ in result["eval_returns"]] == [0, 100, 200] and result["real_steps"] == 200
    assert (tmp_path / "world_model" / "model.safetensors").is_file()
    tags = EventAccumulator(str(tmp_path)).Reload().Tags()["scalars"]
    assert {"eval/episode_return", "world_model/kl", "dream/policy_loss"} <= set(tags), tags


def _small(run_dir, iterations, **kw):
    return ModelBasedConfig(
        iterations=iterations, real_steps=60, num_envs=2, fit=FitConfig(steps=5, batch_size=4, progress=False),
        dream_worlds=8, dream_updates=1, eval_episodes=1, run_dir=str(run_dir), progress=False, **kw,
    )  # fmt: skip


def test_resume_continues_the_curve_replay_and_weights(tmp_path):
    """A run stopped after 1 iteration and resumed to 2 keeps its curve and replay; its checkpoint exports."""
    first = run(_small(tmp_path, 1))
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_000000000060"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "world_model", "replay.safetensors", "loop.json"}
    second = run(_small(tmp_path, 2, resume=True))
    assert second["eval_returns"][:2] == first["eval_returns"] and [s for s, _ in second["eval_returns"]] == [0, 60, 120]
    assert second["real_steps"] == 120
    evals = EventAccumulator(str(tmp_path)).Reload().Scalars("eval/episode_return")
    assert sorted({e.step for e in evals}) == [0, 60, 120], "the resumed run keeps the scalars logged up to its checkpoint"
    from wmenv.data.replay import EpisodeReplay

    replay = EpisodeReplay.load(latest_checkpoint(tmp_path) / "replay.safetensors")
    assert int(replay.episode_lengths.sum()) > int(EpisodeReplay.load(ckpt / "replay.safetensors").episode_lengths.sum())
    # the actor in the checkpoint is the one the model-free tools read (ONNX export, policy_from_checkpoint)
    policy, train_cfg = policy_from_checkpoint(latest_checkpoint(tmp_path))
    logits, _ = policy.step(torch.zeros(2, 18), policy.initial_state(2), torch.zeros(2, dtype=torch.bool))
    assert train_cfg["env_id"] == "mpe:simple_spread_v3" and logits.shape == (2, 5)


def test_same_seed_same_run(tmp_path):
    a, b = run(_small(tmp_path / "a", 1)), run(_small(tmp_path / "b", 1))
    assert a["eval_returns"] == b["eval_returns"] and a["real_returns"] == b["real_returns"]
    wa, wb = (load_file(str(latest_checkpoint(tmp_path / r) / "model.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    run(_small(tmp_path / "c", 1, seed=1))
    wc = load_file(str(latest_checkpoint(tmp_path / "c") / "model.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if k.startswith("agent.policy."))


def test_resume_refuses_other_world_model_and_corrupt_checkpoints(tmp_path):
    run(_small(tmp_path, 1))
    with pytest.raises(ValueError, match="another architecture"):  # the critic reads the world model's features
        run(_small(tmp_path, 2, resume=True, model="smac"))
    (latest_checkpoint(tmp_path) / "loop.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        run(_small(tmp_path, 2, resume=True))


def test_config_checks():
    with pytest.raises(ValueError, match="ModelBasedConfig.model: expected 'smac', 'flatland' or 'small', got 'tiny'"):
        ModelBasedConfig(model="tiny")
    with pytest.raises(ValueError, match="ModelBasedConfig.horizon: expected an integer >= 1, got 0"):
        ModelBasedConfig(horizon=0)
