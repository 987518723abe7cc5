"""`fit` data-parallel under `torch.distributed` (issue 19, item 2): two gloo ranks on CPU take one step that equals
the single-process step on the mean of the two ranks' batch gradients (each rank's own windows and latent samples),
both ranks end with the same weights, only rank 0 writes events and the checkpoint, and no `DistributedDataParallel`
wrapper outlives `fit` (one left to the cyclic collector aborted 1 process in 5 at exit with gloo)."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wmenv.data.collect import random_replay
from wmenv.fit import FitConfig, end_rank, fit
from wmenv.models.registry import build_model

B, T = 4, 10


def _replay_and_model():
    replay, spec = random_replay("mpe:simple_spread_v3", 100, num_envs=2)
    torch.manual_seed(0)
    return replay, build_model("mamba", spec, "small")


def _rank(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        replay, model = _replay_and_model()
        gc.disable()  # only fit itself may free the wrapper, not a collection that happens to run
        fit(model, replay, FitConfig(steps=1, batch_size=B, seq_len=T, seed=3, progress=False, run_dir=f"{folder}/run"))
        torch.save(model.state_dict(), f"{folder}/rank{rank}.pt")
        alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        Path(folder, f"alive{rank}").write_text(str(alive))  # gc.get_objects() collects nothing: cycles still count
        gc.enable()
    finally:
        dist.destroy_process_group()
    end_rank()


def test_one_ddp_step_equals_the_single_process_step_on_the_ranks_mean_gradient(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    replay, model = _replay_and_model()
    before = copy.deepcopy(model.state_dict())
    model.train()
    grads = []
    for r in range(2):  # what rank r computed: its own windows (seed + r) and latent samples
        gen = torch.Generator().manual_seed(3 + r)
        torch.manual_seed(3 + r)
        loss, _ = model.loss(replay.sample(B, T, generator=gen))
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
    for p, g0, g1 in zip(model.parameters(), *grads):
        p.grad = (g0 + g1) / 2
    torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.grad_clip)
    torch.optim.Adam(model.parameters(), lr=model.config.lr).step()
    moved = 0
    for k, v in model.state_dict().items():
        assert torch.equal(ranks[0][k], ranks[1][k]), f"{k}: the ranks disagree"
        torch.testing.assert_close(ranks[0][k], v, rtol=0, atol=1e-6, msg=f"{k}: DDP step != mean-gradient step")
        moved += not torch.equal(v, before[k])
    assert moved > 10, "not vacuous: the step changed the weights"
    run = tmp_path / "run"
    assert [(tmp_path / f"alive{r}").read_text() for r in range(2)] == ["0", "0"], "a DDP wrapper outlived fit"
    assert (run / "model" / "model.safetensors").is_file() and len(list(run.glob("events.out.tfevents.*"))) == 1


def test_end_rank_destroys_the_group_flushes_and_exits_with_its_code_without_teardown(tmp_path):
    code = f"""
import atexit, torch.distributed as dist
from wmenv.fit import end_rank
dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
atexit.register(lambda: print("teardown ran"))
print("written before the end", end="")
end_rank(3)
print("after end_rank")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "written before the end", "stdout flushed, atexit handlers skipped, nothing runs after"


def test_end_rank_refuses_a_code_that_is_not_an_int():
    with pytest.raises(TypeError, match="code: expected an int"):
        end_rank("0")
    with pytest.raises(TypeError, match="code: expected an int"):
        end_rank(True)
