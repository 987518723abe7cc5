"""DRAMA's world model on this machine: fit and imagination cost per update, and the projected wall-clock of a
100k-step run (issue 16, item 6).

For each preset, on random frames of a real Atari game: the time of one fit step (loss, backward, Adam) on B windows
of T rows, and of one imagination batch as DRAMA's code runs it (C context frames filtered, then H imagined steps of
W worlds, random actions: the actor-critic's own cost is not included). FLOPs are counted by
``torch.utils.flop_counter`` (convolutions and matmuls) and compared with a square float32 matmul measured in the
same process. DRAMA's schedule updates the model and the behaviour once per env step, so a 100k-step run costs about
100k × (fit step + imagination batch) plus the env's own time: that product is printed as a projection, with the
real env's step rate measured here. Prints one JSON line.

Usage:
    python examples/benchmarks/drama_world_model.py --out benchmarks/drama/cpu2.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from report import clock, emit, flops, machine, matmul_gflops

from wmenv.data.collect import random_replay
from wmenv.models.registry import build_model
from wmenv.models.ssm import HAS_MAMBA_SSM


@dataclass
class Args:
    """Benchmark settings (defaults: DRAMA's schedule except T, 64 instead of 128 to keep a CPU run short)."""

    env_id: str = "atari:Pong"
    """The Atari game whose random frames are fitted."""
    presets: list[str] = field(default_factory=lambda: ["cpu-small", "xs"])
    """DRAMA presets to measure."""
    real_steps: int = 2000
    """Random env steps collected first (their rate is the env's, for the projection)."""
    batch_size: int = 16
    """B, windows per fit step (DRAMA: 16)."""
    seq_len: int = 64
    """T, rows per window (DRAMA: 128)."""
    worlds: int = 1024
    """W, imagined worlds per batch (DRAMA: 1024)."""
    context: int = 8
    """C, real frames filtered before imagining (DRAMA: 8)."""
    horizon: int = 16
    """H, imagined steps (DRAMA: 16)."""
    repeats: int = 3
    """Timed repetitions of each measurement (after one warm-up)."""
    total_steps: int = 100_000
    """Env steps of the projected run (Atari100k)."""
    matmul_size: int = 1024
    """Side of the square matmul whose GFLOP/s is the reference."""
    device: str = "cpu"
    """Torch device of the model ("cuda": times in wall time after synchronizing, mamba-ssm's kernels where
    installed)."""
    out: Path | None = None
    """Also write the JSON line here."""


def _timed(fn, repeats: int, device: str) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after one warm-up, by `report.clock` (CPU time on the CPU)."""
    fn()
    now = clock(device)
    start = now()
    for _ in range(repeats):
        fn()
    return (now() - start) / repeats


def measure(args: Args, preset: str, replay, spec) -> dict:
    """Fit-step and imagination-batch cost of one preset."""
    torch.manual_seed(0)
    model = build_model("drama", spec, preset).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    batch = replay.sample(args.batch_size, args.seq_len, generator=0, device=args.device)
    starts = replay.sample(args.worlds, args.context, generator=1, device=args.device)
    g = torch.Generator().manual_seed(2)
    actions = torch.randint(0, spec.n_actions, (args.horizon, args.worlds, 1), generator=g).to(args.device)

    def fit_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch)[0].backward()
        optimizer.step()

    @torch.no_grad()
    def imagine() -> None:
        model.eval()
        state = model.observe(starts["obs"], starts["action"], starts["reset"])
        for a in actions:
            state, _ = model.imagine(state, a)

    fit_s, imagine_s = _timed(fit_step, args.repeats, args.device), _timed(imagine, args.repeats, args.device)
    fit_flops, imagine_flops = flops(fit_step), flops(imagine)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "fit_step_s": round(fit_s, 4),
        "fit_gflops": round(fit_flops / fit_s / 1e9, 2),
        "imagine_batch_s": round(imagine_s, 4),
        "imagine_gflops": round(imagine_flops / imagine_s / 1e9, 2),
    }


def main(args: Args) -> dict:
    """Measure every preset and print the JSON summary."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    replay, spec = random_replay(args.env_id, args.real_steps, num_envs=1, seed=0)
    env_steps_per_s = replay.num_steps / (time.perf_counter() - start)
    ref_before = matmul_gflops(args.matmul_size, 1.0, args.device)
    presets = {preset: measure(args, preset, replay, spec) for preset in args.presets}
    ref = (ref_before + matmul_gflops(args.matmul_size, 1.0, args.device)) / 2  # half before, half after
    for r in presets.values():
        r["fit_vs_matmul"] = round(r["fit_gflops"] / ref, 3)
        r["imagine_vs_matmul"] = round(r["imagine_gflops"] / ref, 3)
        update = r["fit_step_s"] + r["imagine_batch_s"]
        r["projected_hours"] = round(args.total_steps * (update + 1 / env_steps_per_s) / 3600, 2)
    summary = {
        "benchmark": "drama_world_model",
        "env_id": args.env_id,
        "schedule": {k: getattr(args, k) for k in ("batch_size", "seq_len", "worlds", "context", "horizon", "total_steps")},
        "env_steps_per_s": round(env_steps_per_s, 1),
        "matmul_gflops": round(ref, 2),
        "presets": presets,
        "projection": "not measured: total_steps x (fit step + imagination batch + one env step), one thread, "
        "the actor-critic update not included",
        "device": args.device,
        "kernels": HAS_MAMBA_SSM and torch.device(args.device).type == "cuda",
        "torch": torch.__version__,
        "machine": machine(),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
