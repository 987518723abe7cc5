"""Imagination throughput: `DreamVecEnv` agent-steps per second vs the real env, and achieved GFLOP/s vs a matmul.

In one run: the real env's raw rate (random available actions, one process), then for each batch
size B the dream's imagined agent-steps per second (B worlds × N agents per step, random available
actions, auto-resets included) with the model's FLOPs per step counted by
``torch.utils.flop_counter``, and the GFLOP/s of a square float32 matmul as the machine's reference.
Prints one JSON line. Goal (issue 5): at B = 1024, >= 100x the real Flatland env and >= 30 % of the
matmul rate.

Usage:
    python examples/benchmarks/dream_throughput.py --env-id flatland:5 --env-kwargs dense_reward True --model flatland
    python examples/benchmarks/dream_throughput.py --batches 64 1024 4096 --seconds 5 --out benchmarks/dream/throughput.json
    python examples/benchmarks/dream_throughput.py --env-id mpe:simple_spread_v3 --model small --mag-candidates 4
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from report import emit, machine, matmul_gflops, wall_clock
from torch.utils.flop_counter import FlopCounterMode

from wmenv.data.collect import random_available
from wmenv.dream import DreamVecEnv
from wmenv.dream.mag import ErrorPredictor, MAGConfig, MAGPlanner, UniformPolicy
from wmenv.envs.vector import VecEnv
from wmenv.models.registry import build_model
from wmenv.models.world_model import WorldModel


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "flatland:5"
    """The real env (and the spec of the world model)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (e.g. ``dense_reward True``)."""
    model_kind: str = "mamba"
    """World model (`wmenv.models.registry`): "mamba" or "mabl"."""
    model: str = "flatland"
    """World-model preset of that kind ("flatland": the paper's size; "small")."""
    batches: list[int] = field(default_factory=lambda: [64, 1024, 4096])
    """B, imagined worlds per step."""
    seconds: float = 5.0
    """Measuring time per rate."""
    threads: int = 0
    """torch threads (0: torch's default, all cores)."""
    matmul_size: int = 1024
    """Side of the square matmul whose GFLOP/s is the reference."""
    device: str = "cpu"
    """Torch device of the world model and the dream ("cuda": rates in wall time after synchronizing)."""
    mag_candidates: int = 0
    """If > 0: also each batch with MAG's planner (`wmenv.dream.mag`, this many candidates; the error predictor at its
    default size, a uniform random actor in the lookahead), reported beside the plain dream as ``mag``."""
    mag_lookahead: int = 6
    """MAG's H (states scored per candidate)."""
    out: Path | None = None
    """Also write the JSON to this file."""


def real_rate(env_id: str, env_kwargs: dict, seconds: float) -> float:
    """Agent-steps per second of the real env, one copy, random available actions, resets included."""
    rng = np.random.default_rng(0)
    with VecEnv(env_id, num_envs=1, seed=0, **env_kwargs) as vec:
        s, steps, start = vec.reset(), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            steps += int(s.alive.sum())
            s = vec.step(random_available(s.action_mask, rng))
        return steps / (time.perf_counter() - start)


def dream_rate(model: WorldModel, batch: int, seconds: float, planner: MAGPlanner | None = None) -> dict[str, float]:
    """Imagined agent-steps per second and GFLOP/s of the model (and planner) at B = ``batch``."""
    vec = DreamVecEnv(model, batch, seed=0, planner=planner)
    s = vec.reset()
    gen = torch.Generator(device=vec.device).manual_seed(0)
    pick = lambda mask: (torch.rand(mask.shape, generator=gen, device=vec.device) * mask).argmax(-1)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        s = vec.step(pick(s.action_mask))
    flops_per_step = counter.get_total_flops()
    now = wall_clock(vec.device)  # the dream's rate in wall time
    steps, start, begin = 0, time.perf_counter(), now()
    while time.perf_counter() - start < seconds or steps == 0:
        s = vec.step(pick(s.action_mask))
        steps += 1
    wall = now() - begin
    agent_steps = steps * batch * model.spec.n_agents
    return {
        "agent_steps_per_s": agent_steps / wall,
        "gflops": flops_per_step * steps / wall / 1e9,
        "ms_per_step": wall / steps * 1e3,
    }


def main(args: Args) -> dict:
    """Measure and print the JSON summary."""
    if args.threads:
        torch.set_num_threads(args.threads)
    real = real_rate(args.env_id, args.env_kwargs, args.seconds)
    ref = matmul_gflops(args.matmul_size, args.seconds, args.device)
    with VecEnv(args.env_id, num_envs=1, seed=0, **args.env_kwargs) as vec:
        spec = vec.spec
    torch.manual_seed(0)
    model = build_model(args.model_kind, spec, args.model).to(args.device).eval()
    planner = None
    if args.mag_candidates:
        torch.manual_seed(0)
        planner = MAGPlanner(ErrorPredictor(model), UniformPolicy(spec.n_actions),
                             MAGConfig(candidates=args.mag_candidates, lookahead=args.mag_lookahead))  # fmt: skip
    results = {}
    for batch in args.batches:
        r = dream_rate(model, batch, args.seconds)
        results[str(batch)] = {
            "agent_steps_per_s": round(r["agent_steps_per_s"], 1),
            "vs_real_env": round(r["agent_steps_per_s"] / real, 2),
            "gflops": float(f"{r['gflops']:.4g}"),  # significant digits: a slow, busy machine must not print 0.0
            "vs_matmul": round(r["gflops"] / ref, 3),
            "ms_per_step": round(r["ms_per_step"], 2),
        }
        if planner is not None:
            m = dream_rate(model, batch, args.seconds, planner)
            results[str(batch)]["mag"] = {
                "agent_steps_per_s": round(m["agent_steps_per_s"], 1),
                "vs_plain": round(m["agent_steps_per_s"] / r["agent_steps_per_s"], 4),
                "vs_matmul": round(m["gflops"] / ref, 3),
            }
    summary = {
        "benchmark": "dream_throughput",
        "env_id": args.env_id,
        "model_kind": args.model_kind,
        "model": args.model,
        "mag": {"candidates": args.mag_candidates, "lookahead": args.mag_lookahead} if args.mag_candidates else None,
        "params": sum(p.numel() for p in model.parameters()),
        "real_agent_steps_per_s": round(real, 1),
        "matmul_gflops": round(ref, 2),
        "results": results,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": machine(),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
