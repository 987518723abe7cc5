"""VecEnv throughput: the in-process ("sync") backend vs worker processes ("subproc"), in one run.

Steps E copies with uniformly random available actions for a fixed time per backend and reports
agent-steps per second and the subproc / sync ratio, so the README's advice (subprocesses for slow
envs such as Flatland, in-process for fast ones such as MPE) rests on a measurement. Prints one JSON line.

Usage:
    python examples/benchmarks/vec_env.py --env-ids mpe:simple_spread_v3 flatland:5 --num-envs 8 --seconds 20
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import tyro

from wmenv.envs.vector import VecEnv


@dataclass
class Args:
    """Benchmark settings."""

    env_ids: list[str] = field(default_factory=lambda: ["mpe:simple_spread_v3", "flatland:5"])
    """`wmenv.envs.make` ids to measure."""
    num_envs: int = 8
    """E, env copies."""
    num_workers: int = 2
    """Worker processes of the subproc backend."""
    seconds: float = 20.0
    """Measuring time per (env, backend), after one warm-up step."""


def rate(env_id: str, backend: str, num_envs: int, num_workers: int, seconds: float) -> float:
    """Agent-steps per second of random available actions, resets included."""
    rng = np.random.default_rng(0)
    with VecEnv(env_id, num_envs=num_envs, seed=0, backend=backend, num_workers=num_workers) as vec:
        s = vec.reset()
        s = vec.step((rng.random(s.action_mask.shape) * s.action_mask).argmax(-1))
        agent_steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent_steps += int(s.alive.sum())
            s = vec.step((rng.random(s.action_mask.shape) * s.action_mask).argmax(-1))
        return agent_steps / (time.perf_counter() - start)


def main(args: Args) -> dict:
    """Measure every env with both backends; print and return the JSON summary."""
    results = {}
    for env_id in args.env_ids:
        sync = rate(env_id, "sync", args.num_envs, args.num_workers, args.seconds)
        sub = rate(env_id, "subproc", args.num_envs, args.num_workers, args.seconds)
        results[env_id] = {
            "sync_agent_steps_per_s": round(sync, 1),
            "subproc_agent_steps_per_s": round(sub, 1),
            "subproc_over_sync": round(sub / sync, 3),
        }
    summary = {
        "benchmark": "vec_env",
        "num_envs": args.num_envs,
        "num_workers": args.num_workers,
        "results": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
