"""DRAMA's loop on real Breakout (16×16 frames, tiny schedule): it trains after the warm-up, checkpoints, resumes, and
the same seed gives the same run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from agents.drama_loop import DRAMALoopConfig, run
from agents.dreamer_ac import DreamerACConfig
from agents.train import latest_checkpoint

pytest.importorskip("ale_py")


def _cfg(run_dir, iterations, **kw) -> DRAMALoopConfig:
    base = dict(env_id="atari:Breakout", env_kwargs={"screen_size": 16}, iterations=iterations, real_steps=32,
                warmup_steps=32, fit_steps=2, batch_size=2, seq_len=16, ac_updates=2, worlds=8, context=4,
                ac=DreamerACConfig(horizon=4, layers=1, actor_hidden=16, critic_hidden=16), eval_max_steps=20,
                run_dir=str(run_dir), progress=False)  # fmt: skip
    return DRAMALoopConfig(**{**base, **kw})


def test_trains_after_warmup_checkpoints_and_resumes(tmp_path):
    first = run(_cfg(tmp_path, 2))
    counters = first["counters"]
    # the first 32 steps act at random (warm-up); training starts once they are stored, after every collection
    assert counters == {"iteration": 2, "env_steps": 64, "fit_steps": 4, "ac_updates": 4}
    assert [s for s, _ in first["eval_returns"]] == [32, 64]
    assert latest_checkpoint(tmp_path).name == "step_000000000064"
    again = run(_cfg(tmp_path, 3, resume=True))
    assert again["counters"] == {"iteration": 3, "env_steps": 96, "fit_steps": 6, "ac_updates": 6}
    assert again["eval_returns"][:2] == first["eval_returns"] and len(again["eval_returns"]) == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000000000064", "step_000000000096"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["counters"] == again["counters"]
    assert set(saved["cpu_seconds"]) == {"collect", "fit", "actor_critic", "evaluate", "checkpoint"}
    assert all(v > 0 for v in saved["cpu_seconds"].values())
    # CPU seconds are the run's, not the last process's: the resumed run starts from the first one's totals
    for phase in ("collect", "fit", "actor_critic", "evaluate"):  # all spent before the first run's last checkpoint
        assert again["cpu_seconds"][phase] > first["cpu_seconds"][phase]


def test_same_seed_same_run_and_a_resumed_run_is_the_uninterrupted_one(tmp_path):
    whole = run(_cfg(tmp_path / "whole", 3))
    run(_cfg(tmp_path / "split", 2))
    split = run(_cfg(tmp_path / "split", 3, resume=True))  # the env continues mid-episode, the filter with it
    assert whole["eval_returns"] == split["eval_returns"] and whole["counters"] == split["counters"]
    weights = [
        load_file(str(latest_checkpoint(tmp_path / d) / "world_model" / "model.safetensors")) for d in ("whole", "split")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="DRAMALoopConfig.model: expected 'xs', 's' or 'cpu-small', got 'small'"):
        DRAMALoopConfig(model="small")
    with pytest.raises(ValueError, match="shorter than the fit's windows"):
        DRAMALoopConfig(real_steps=8, seq_len=64)
    with pytest.raises(ValueError, match="DRAMALoopConfig.sampler"):
        DRAMALoopConfig(sampler="prioritized")
