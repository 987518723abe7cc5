"""The model-based loop runs end to end on a real env and logs the real return against real steps."""

import json
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.model_based import ModelBasedConfig

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


def test_config_checks():
    import pytest

    with pytest.raises(ValueError, match="ModelBasedConfig.model: expected 'smac', 'flatland' or 'small', got 'tiny'"):
        ModelBasedConfig(model="tiny")
    with pytest.raises(ValueError, match="ModelBasedConfig.horizon: expected an integer >= 1, got 0"):
        ModelBasedConfig(horizon=0)
