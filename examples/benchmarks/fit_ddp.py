"""World-model fitting, data-parallel: windows per second with 1 and K `torch.distributed` (gloo) processes on this
machine, each rank fitting its own batch of B windows (issue 19, item 5).

The baseline is the single process, measured in the same run; the K-process throughput is the K ranks' windows over
the wall-clock of the slowest, and the communication cost per step is the time of one all-reduce of the model's
gradients (a flat float32 tensor of its parameter count) between the K ranks. Prints one JSON line.

Usage:
    python examples/benchmarks/fit_ddp.py --out benchmarks/fit_ddp/cpu2.json
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import tyro
from report import emit, machine

from wmenv.data import EpisodeReplay
from wmenv.data.collect import random_replay
from wmenv.envs.vector import VecEnv
from wmenv.fit import FitConfig, end_rank, fit
from wmenv.models.registry import build_model


@dataclass
class Args:
    env_id: str = "mpe:simple_spread_v3"
    """The env whose random episodes are fitted."""
    model: str = "small"
    """MAMBA preset."""
    processes: int = 2
    """K, the data-parallel processes (one torch thread each)."""
    steps: int = 30
    """Timed fit steps (after 3 warm-up steps)."""
    batch_size: int = 16
    """B, windows per rank and step."""
    seq_len: int = 20
    """T."""
    out: Path | None = None
    """Also write the JSON line here."""


def _setup(args: Args) -> tuple[EpisodeReplay, torch.nn.Module]:
    replay, spec = random_replay(args.env_id, 2000, num_envs=2)
    torch.manual_seed(0)
    return replay, build_model("mamba", spec, args.model)


def _timed_fit(args: Args) -> float:
    """Seconds for ``args.steps`` fit steps after a warm-up (in this process, in its group if any)."""
    replay, model = _setup(args)
    cfg = FitConfig(steps=3, batch_size=args.batch_size, seq_len=args.seq_len, progress=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    fit(model, replay, cfg, optimizer=optimizer)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    fit(model, replay, FitConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, progress=False),
        optimizer=optimizer)  # fmt: skip
    if dist.is_initialized():
        dist.barrier()
    return time.perf_counter() - start


def _rank(rank: int, args: Args, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=args.processes)
    try:
        seconds = _timed_fit(args)
        n = sum(p.numel() for p in build_model("mamba", VecEnv(args.env_id).spec, args.model).parameters())
        grads = torch.zeros(n)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(grads)
        allreduce = (time.perf_counter() - start) / 20
        if rank == 0:
            Path(folder, "result.json").write_text(json.dumps({"seconds": seconds, "allreduce_s": allreduce, "params": n}))
    finally:
        dist.destroy_process_group()
    end_rank()  # not a normal return: gloo's threads can abort a process at interpreter exit


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    single = _timed_fit(args)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank, args=(args, folder), nprocs=args.processes, join=True)
        ddp = json.loads(Path(folder, "result.json").read_text())
    one = args.steps * args.batch_size / single
    many = args.processes * args.steps * args.batch_size / ddp["seconds"]
    return emit({
        "benchmark": "fit_ddp", "machine": machine(), "env_id": args.env_id, "model": args.model,
        "params": ddp["params"], "batch_per_rank": args.batch_size, "seq_len": args.seq_len, "processes": args.processes,
        "windows_per_s_1": round(one, 2), f"windows_per_s_{args.processes}": round(many, 2),
        "speedup": round(many / one, 3), "allreduce_ms_per_step": round(ddp["allreduce_s"] * 1000, 3),
        "step_ms_1": round(single / args.steps * 1000, 1),
        f"step_ms_{args.processes}": round(ddp["seconds"] / args.steps * 1000, 1),
    }, args.out)  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
