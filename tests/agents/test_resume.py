"""`agents.resume`: the run state a checkpoint carries; a corrupt one is a clear error, and where the envs cannot be
saved the run resumes statistically and says so."""

import pytest
import torch

from agents.mappo import MAPPOConfig
from agents.resume import RUN_STATE, load_run_state, save_run_state, set_global_rng_state
from agents.train import TrainConfig, latest_checkpoint, train
from wmenv.envs.snapshot import SnapshotError
from wmenv.envs.vector import VecEnv
from wmenv.tensor_ops import to_device


def _small(run_dir, steps, **kw):
    return TrainConfig(total_steps=steps, num_envs=2, eval_every=0, progress=False, checkpoint_every=40,
                       mappo=MAPPOConfig(rollout_length=20, epochs=1), run_dir=str(run_dir), resume=True, **kw)  # fmt: skip


def test_run_state_round_trips_and_a_damaged_one_is_refused(tmp_path):
    vec = VecEnv("mpe:simple_spread_v3", num_envs=2, seed=0)
    vec.reset()
    carry = {"h": torch.arange(6.0).reshape(2, 3), "first": False}
    save_run_state(tmp_path, vec, carry=carry)
    state = load_run_state(tmp_path)
    assert torch.equal(state["carry"]["h"], carry["h"]) and state["why_not"] is None and len(state["envs"]) == 2
    assert load_run_state(tmp_path / "elsewhere") is None  # a checkpoint from before run states
    data = bytearray((tmp_path / RUN_STATE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / RUN_STATE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"run_state.pkl is not a readable run state .*CRC-32"):
        load_run_state(tmp_path)
    (tmp_path / RUN_STATE).write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match="100 bytes"):
        load_run_state(tmp_path)
    vec.close()


def test_envs_that_cannot_be_saved_resume_statistically_and_say_so(tmp_path, monkeypatch, capsys):
    def refuse(self):
        raise SnapshotError("obj: the state of a StarCraft II process cannot be saved")

    monkeypatch.setattr(VecEnv, "get_state", refuse)
    train(_small(tmp_path, 80))
    state = load_run_state(latest_checkpoint(tmp_path))
    assert state["envs"] is None and "StarCraft II" in state["why_not"] and state["carry"] is not None
    assert train(_small(tmp_path, 120)).env_steps == 120
    assert "resume is statistical, not exact: the real envs restart from fresh episodes (obj: the state of a StarCraft" in (
        capsys.readouterr().out
    )


def test_to_device_moves_every_tensor_in_nested_containers():
    from agents.storage import Carry

    t = torch.zeros(2)
    carry = Carry(t, t, t.bool(), t.bool(), t.bool(), {"h": t}, {"h": (t, [t])})
    moved = to_device({"carry": carry, "n": 3}, "meta")
    assert moved["n"] == 3 and moved["carry"].obs.device.type == "meta"
    assert moved["carry"].critic_state["h"][1][0].device.type == "meta"


def test_cuda_random_streams_are_saved_where_cuda_is_initialised_and_restored_only_onto_as_many_devices(monkeypatch):
    """No GPU here: torch.cuda's state functions are replaced by recorders, so what is pinned is which streams a run
    state carries and when they are put back, not CUDA itself (the `cuda`-marked loop tests run it on a GPU)."""
    from agents import resume

    streams = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert resume.global_rng_state()["cuda"] is None  # a CPU run does not start CUDA to save it
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in streams])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(states))
    state = resume.global_rng_state()
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], streams, strict=True)] == [True, True]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    resume.set_global_rng_state(state)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], streams, strict=True))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match=r"2 CUDA random stream\(s\) but this machine has 1 CUDA device"):
        resume.set_global_rng_state(state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="has 0 CUDA device"):
        resume.set_global_rng_state(state)
    assert len(restored) == 1
    resume.set_global_rng_state({k: v for k, v in state.items() if k != "cuda"})  # a run state from before this entry
    assert len(restored) == 1


def test_the_global_streams_continue_through_a_saved_run_state(tmp_path):
    vec = VecEnv("mpe:simple_spread_v3", num_envs=1, seed=0)
    vec.reset()
    torch.manual_seed(3)
    save_run_state(tmp_path, vec)
    expected = torch.rand(4)
    torch.manual_seed(99)
    set_global_rng_state(load_run_state(tmp_path)["rng"])
    assert torch.equal(torch.rand(4), expected)
    vec.close()
