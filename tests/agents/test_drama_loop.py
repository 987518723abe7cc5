"""DRAMA's loop on real Breakout (16×16 frames, tiny schedule): it trains after the warm-up, checkpoints, resumes, and
the same seed gives the same run; DRAMA's own schedule (an update after every env step) runs, with evaluations,
checkpoints and scalars every so many env steps."""

import json
import shutil

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
    with pytest.raises(ValueError, match="DRAMALoopConfig.eval_every"):
        DRAMALoopConfig(eval_every=-1)
    with pytest.raises(ValueError, match="DRAMALoopConfig.device: expected a torch device string, got 'gpu0'"):
        DRAMALoopConfig(device="gpu0")
    with pytest.raises(ValueError, match="DRAMALoopConfig.sampler"):
        DRAMALoopConfig(sampler="prioritized")


def test_drama_schedule_updates_after_every_step_and_evaluates_checkpoints_and_logs_every_so_many(tmp_path):
    """``real_steps = fit_steps = ac_updates = 1``: windows of 16 rows are drawn from one-step collections (the replay
    appends them to the running episode), and a resumed run is the uninterrupted one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_step = dict(real_steps=1, fit_steps=1, ac_updates=1, eval_every=8, checkpoint_every=16, log_every=8)
    whole = run(_cfg(tmp_path / "whole", 48, **per_step))
    # trained from 32 env steps on (warm-up), once per step; evaluated at each multiple of 8 reached
    assert whole["counters"] == {"iteration": 48, "env_steps": 48, "fit_steps": 17, "ac_updates": 17}
    assert [s for s, _ in whole["eval_returns"]] == [32, 40, 48]
    names = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("step_*"))
    assert names == ["step_000000000032", "step_000000000048"]  # 16, 32, 48 written; the newest 2 kept
    events = EventAccumulator(str(tmp_path / "whole"))
    events.Reload()
    assert [e.step for e in events.Scalars("world_model/loss")] == [32, 40, 48]
    assert [e.step for e in events.Scalars("actor_critic/entropy")] == [32, 40, 48]
    run(_cfg(tmp_path / "split", 36, **per_step))  # its last iteration checkpoints (36), between two multiples of 16
    split = run(_cfg(tmp_path / "split", 48, resume=True, **per_step))
    # a run killed at 44 resumes from its checkpoint at 32 and repeats 33-44 as they were
    run(_cfg(tmp_path / "killed", 44, **per_step))
    folder = tmp_path / "killed" / "checkpoints"
    shutil.rmtree(folder / "step_000000000044")
    (folder / "latest").write_text("step_000000000032")
    killed = run(_cfg(tmp_path / "killed", 48, resume=True, **per_step))
    for other in (split, killed):
        assert other["eval_returns"] == whole["eval_returns"] and other["counters"] == whole["counters"]
    weights = [
        load_file(str(latest_checkpoint(tmp_path / d) / "world_model" / "model.safetensors"))
        for d in ("whole", "split", "killed")
    ]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_loop_runs_on_cuda_and_resumes(tmp_path):
    """device="cuda": world model, actor-critic, dream and the actor's samples on the GPU (env, replay and checkpoints on
    the CPU), on DRAMA's per-step schedule; a resumed run continues (GPU kernels need not be bitwise repeatable)."""
    per_step = dict(real_steps=1, fit_steps=1, ac_updates=1, eval_every=8, checkpoint_every=16, device="cuda")
    first = run(_cfg(tmp_path, 36, **per_step))
    second = run(_cfg(tmp_path, 40, resume=True, **per_step))
    assert [s for s, _ in second["eval_returns"]] == [32, 40] and second["eval_returns"][:1] == first["eval_returns"]
    assert second["counters"] == {"iteration": 40, "env_steps": 40, "fit_steps": 9, "ac_updates": 9}
    weights = load_file(str(latest_checkpoint(tmp_path) / "world_model" / "model.safetensors"))
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in weights.values())
